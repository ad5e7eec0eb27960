"""Datasets described on disk: a manifest (JSONL or CSV) or a class-per-folder tree, read into a
`TaskData` of rows.

Manifest columns: `path` (relative to the manifest's folder) or an inline sample column (`text`);
optional one target column (`label`, `labels` as a JSON list or `a;b` in CSV, `summary`, or any
other registered head's), `split` (train / val / test) and `modality` (overrides the one inferred
from the extension). Without a manifest, `root/<class>/<file>` (torchvision ImageFolder style) or
`root/<split>/<class>/<file>` is read, the class and split taken from the folder names.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..registry import MODALITIES
from ..targets import LABEL, is_missing
from .readers import known_suffixes, modality_of
from .records import SPLITS, TaskData, inline_columns, target_kinds

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    return list(iter_rows(path))


def iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, raw row) of a manifest, read line by line (a manifest of any length in little memory)."""
    try:
        yield from _parse_rows(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def _parse_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e})") from e
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{i}", row
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from ((f"{path}:{i}", dict(row)) for i, row in enumerate(csv.DictReader(f), 2))
    else:
        raise DataError(f"{path}: expected a .jsonl or .csv manifest")


def parse_row(where: str, raw: dict, root: Path, allow_outside_root: bool) -> dict[str, Any]:
    """A manifest row (`where`: file:line) -> the row omnivec holds: the sample (path under `root`, or
    an inline column), split, modality and target, each checked; `DataError` naming `where`."""
    inline = inline_columns()
    null = next((c for c in ("path", *inline) if c in raw and raw[c] is None), None)
    if null is not None:
        raise DataError(f"{where}: {null} is null: expected a value")
    given = [c for c in ("path", *inline) if c in raw]
    if len(given) != 1:
        expected = " or ".join(repr(c) for c in ("path", *inline))
        raise DataError(f"{where}: expected exactly one of the columns {expected}, got {sorted(raw)}")
    row: dict[str, Any] = {"where": where}
    if "path" in raw:
        row["path"] = confined(where, "path", raw["path"], root, allow_outside_root)
    else:
        column = given[0]
        row[column] = MODALITIES.get(inline[column]).parse_inline(raw[column], where)
    if raw.get("split"):
        if raw["split"] not in SPLITS:
            raise DataError(f"{where}: split {raw['split']!r}: expected one of {list(SPLITS)}")
        row["split"] = raw["split"]
    for column, kind in target_kinds().items():
        if not is_missing(raw.get(column)):
            row[column] = kind.parse(raw[column], where)
    if raw.get("modality"):
        row["modality"] = raw["modality"]
    return row


def confined(where: str, key: str, value: Any, root: Path, allow_outside_root: bool) -> Path:
    """`root / value` resolved (symbolic links followed): a manifest's `path`, an index's shard
    file, an `hf:` dataset's path cell. `DataError` naming `where`, `key` and the value when it
    leaves `root` (an absolute path, `..`, a link), unless `allow_outside_root`."""
    try:
        path = (root / str(value)).resolve()
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: {key} {value!r} is not a usable path ({e})") from e
    if not allow_outside_root and not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: {key} {value!r} leaves the dataset folder {root}")
    return path


def _task_from_rows(name: str, source: Path, rows: list[dict[str, Any]]) -> TaskData:
    if not rows:
        raise DataError(f"{source}: no samples")
    inline = inline_columns()

    def modality(row: dict[str, Any]) -> str:
        found = next((m for column, m in inline.items() if column in row), None)
        return row.get("modality") or found or modality_of(row["path"])

    modalities = Counter(modality(r) for r in rows)
    if len(modalities) > 1:
        raise DataError(f"{source}: one modality per dataset expected, found {dict(modalities)}")
    kinds = {column: kind for column, kind in target_kinds().items() if any(column in r for r in rows)}
    if len(kinds) > 1:
        raise DataError(f"{source}: one target column per dataset expected, found {sorted(kinds)}")
    target, kind = next(iter(kinds.items()), (None, None))
    if kind is not None:
        missing = next((r for r in rows if target not in r), None)
        if missing is not None:
            raise DataError(f"{missing['where']}: missing the {target!r} column that other rows have")
    classes = sorted({c for r in rows for c in kind.classes(r[target])}) if kind is not None else []
    return TaskData(
        name=name, source=source, modality=next(iter(modalities)), rows=rows, target=target, classes=classes
    )


def inside(path: Path, root: Path, allow_outside_root: bool) -> Path:
    """`path` resolved (symbolic links followed); `DataError` if it leaves `root` (unless allowed)."""
    resolved = path.resolve()
    if not allow_outside_root and not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{path}: leads outside the dataset folder {root} (to {resolved}): copy the file in")
    return resolved


def _folder_rows(root: Path, allow_outside_root: bool = False) -> list[dict[str, Any]]:
    """root/<class>/<file> or root/<split>/<class>/<file>."""
    known = known_suffixes()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_layout = bool(subdirs) and all(p.name in SPLITS for p in subdirs)
    rows = []
    for split_dir in subdirs if split_layout else [root]:
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in known:
                    row = {
                        "path": inside(path, root, allow_outside_root),
                        LABEL.column: class_dir.name,
                        "where": str(path),
                    }
                    if split_layout:
                        row["split"] = split_dir.name
                    rows.append(row)
    return rows


def load_manifest(path: Path, allow_outside_root: bool = False) -> TaskData:
    """The dataset of a manifest file (JSONL or CSV); paths in it may not leave its folder unless allowed."""
    rows = [parse_row(where, raw, path.parent, allow_outside_root) for where, raw in _read_rows(path)]
    return _task_from_rows(path.parent.name, path, rows)


def load_folder(path: Path, allow_outside_root: bool = False) -> TaskData:
    """The dataset of a folder: its `manifest.jsonl` / `.csv`, else its class-per-folder tree."""
    manifest = next((path / n for n in MANIFEST_NAMES if (path / n).is_file()), None)
    if manifest is not None:
        return load_manifest(manifest, allow_outside_root)
    return _task_from_rows(path.name, path, _folder_rows(path, allow_outside_root))
