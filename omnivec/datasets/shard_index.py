"""`index.json`, what `omnivec data shard` writes beside its shards: read back with every field
checked, so that a hand-edited, damaged or foreign index is named with the field at fault."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..registry import MODALITIES
from .records import SPLITS, target_kinds

INDEX = "index.json"
FORMAT = "omnivec-shards/1"


def read_index(folder: Path) -> dict[str, Any]:
    """`folder/index.json`: `shards` a list of `{file, split, modality, samples}`, `modalities`
    `{modality: {target, classes}}` naming each shard's modality; `DataError` naming the file and
    the field that is not as written by `omnivec data shard`."""
    path = folder / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a shard index written by omnivec data shard ({e})") from e

    def bad(field: str, expected: str, value: Any) -> DataError:
        return DataError(f"{path}: {field}: expected {expected}, got {value!r}")

    if not isinstance(index, dict):
        raise bad("the file", "a JSON object", type(index).__name__)
    for key in ("shards", "modalities"):
        if key not in index:
            raise DataError(f"{path}: no {key!r}; not a shard index written by omnivec data shard")
    modalities = index["modalities"]
    if not isinstance(modalities, dict):
        raise bad("modalities", "an object {modality: {target, classes}}", modalities)
    for name, info in modalities.items():
        if name not in MODALITIES.names():
            raise bad("modalities", f"modalities of {MODALITIES.names()}", name)
        if not isinstance(info, dict):
            raise bad(f"modalities.{name}", "an object {target, classes}", info)
        if info.get("target") is not None and info["target"] not in target_kinds():
            raise bad(f"modalities.{name}.target", f"one of {sorted(target_kinds())} or null", info["target"])
        classes = info.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise bad(f"modalities.{name}.classes", "a list of class names", classes)
    checks = {
        "file": (lambda v: isinstance(v, str) and v.strip(), "the path of a shard file (beside it)"),
        "split": (lambda v: v is None or v in SPLITS, f"one of {list(SPLITS)} or null"),
        "modality": (lambda v: isinstance(v, str) and v in modalities, f"one of the modalities {list(modalities)}"),
        "samples": (lambda v: type(v) is int and v >= 0, "a number of samples"),
    }
    if not isinstance(index["shards"], list):
        raise bad("shards", "a list of {file, split, modality, samples}", index["shards"])
    for i, entry in enumerate(index["shards"]):
        if not isinstance(entry, dict):
            raise bad(f"shards[{i}]", "an object {file, split, modality, samples}", entry)
        for key, (ok, expected) in checks.items():
            if key not in entry:
                raise DataError(f"{path}: shards[{i}] ({entry.get('file')}): no {key!r}")
            if not ok(entry[key]):
                raise bad(f"shards[{i}].{key}", expected, entry[key])
    return index
