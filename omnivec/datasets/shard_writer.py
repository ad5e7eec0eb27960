"""`omnivec data shard`: write the samples of manifests and folder trees as WebDataset tar shards
with an `index.json` (the format datasets/shards.py reads): one split and modality per shard,
byte-identical for the same inputs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from webdataset.writer import TarWriter

from ..errors import ConfigError, DataError
from ..registry import MODALITIES
from .records import TaskData, inline_columns, target_kind, target_kinds
from .shards import FORMAT, INDEX
from .sources import find_tasks

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str | int) -> int:
    """ "500MB", "2GB", "1e6" or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?b?)\s*", str(text).lower())
    try:
        size = int(float(m[1]) * UNITS[m[2]]) if m else 0
    except (ValueError, OverflowError):  # "1e400" is infinite
        size = 0
    if size <= 0:
        raise ConfigError(f"shard size: expected a positive size such as 500MB or 2GB, got {text!r}")
    return size


def write_shards(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    shard_size: int | str = "500MB",
    split: str | None = None,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Write the samples of `inputs` (manifests, dataset folders, class-per-folder trees) as tar
    shards of at most `shard_size` bytes in `output`, one split and modality per shard, with
    `index.json`; only split `split` when given. The same inputs give byte-identical shards.
    Returns the index."""

    limit, out = parse_size(shard_size), Path(output)
    tasks = [t for source in inputs for t in find_tasks(source, allow_outside_root)]
    if any(t.stream is not None for t in tasks):
        raise DataError(f"{', '.join(str(t.source) for t in tasks if t.stream is not None)}: already sharded")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task in tasks:
        for row in task.split(split):
            groups.setdefault((row.get("split") or "", task.modality), []).append(row)
    if not groups:
        raise DataError(f"{', '.join(map(str, inputs))}: no samples" + (f" in split {split!r}" if split else ""))
    out.mkdir(parents=True, exist_ok=True)
    remove_old_shards(out)
    entries: list[dict[str, Any]] = []
    bar = tqdm(total=sum(map(len, groups.values())), desc="shard", unit="sample")
    for (split_name, modality), rows in sorted(groups.items()):
        writer, size, number = None, 0, 0
        for n, row in enumerate(rows):
            members = sample_members(row, modality, split_name)
            sample_bytes = sum(512 + -(-len(v) // 512) * 512 for k, v in members.items() if k != "__key__")
            if writer is None or (size + sample_bytes > limit and entries[-1]["samples"]):
                if writer is not None:
                    close_shard(writer, out, entries[-1])
                number = 0 if writer is None else number + 1
                entries.append(
                    {
                        "file": f"{split_name or 'data'}-{modality}-{number:06d}.tar",
                        "split": split_name or None,
                        "modality": modality,
                        "samples": 0,
                    }
                )
                writer, size = TarWriter(str(out / f".tmp-{entries[-1]['file']}"), encoder=False, mtime=0), 1024
            writer.write({"__key__": f"{n:08d}", **members})
            entries[-1]["samples"] += 1
            size += sample_bytes
            bar.update(1)
        close_shard(writer, out, entries[-1])
    bar.close()
    index = {
        "format": FORMAT,
        "shards": entries,
        "modalities": modality_info(tasks, split),
        "splits": {
            s or "-": sum(e["samples"] for e in entries if e["split"] == (s or None))
            for s in sorted({e["split"] or "" for e in entries})
        },
    }
    tmp = out / f".tmp-{INDEX}"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX)
    return index


def sample_members(row: dict[str, Any], modality: str, split: str) -> dict[str, bytes]:
    """A row's tar members: its file's original bytes (or its inline sample as a file, text as .txt)
    and its JSON."""
    inline = next((c for c in inline_columns() if c in row), None)
    if inline is not None:
        suffix, data = MODALITIES.get(inline_columns()[inline]).inline_member(row[inline])
    else:
        path = row["path"]
        if path.is_dir():
            raise DataError(f"{path}: a folder of frames cannot be sharded; encode the video as a file first")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
        suffix = path.suffix.lower()
    meta = {k: row[k] for k in target_kinds() if k in row}
    meta.update(modality=modality, split=split or None, source=str(row.get("where", row.get("path"))))
    return {suffix.lstrip("."): data, "json": json.dumps(meta, sort_keys=True).encode()}


def close_shard(writer: Any, out: Path, entry: dict[str, Any]) -> None:
    writer.close()
    os.replace(out / f".tmp-{entry['file']}", out / entry["file"])


def remove_old_shards(out: Path) -> None:
    """Remove the shards an earlier `index.json` in `out` lists (a rerun replaces them)."""
    if not (out / INDEX).is_file():
        return
    try:
        old = json.loads((out / INDEX).read_text())["shards"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{out / INDEX}: not a shard index written by omnivec data shard ({e}); choose another --output"
        ) from e
    (out / INDEX).unlink()  # first: an index never lists shards that are gone
    for entry in old:
        (out / Path(entry["file"]).name).unlink(missing_ok=True)


def modality_info(tasks: list[TaskData], split: str | None) -> dict[str, dict[str, Any]]:
    """Per modality: samples, the target its datasets share (None if they differ) and its classes."""
    info: dict[str, dict[str, Any]] = {}
    for task in tasks:
        n = len(task.split(split))
        if not n:
            continue
        entry = info.setdefault(task.modality, {"samples": 0, "target": task.target, "classes": set()})
        entry["samples"] += n
        if entry["target"] != task.target:
            entry["target"] = None
        entry["classes"] |= set(task.classes)
    return {
        m: {**e, "classes": sorted(e["classes"]) if e["target"] and target_kind(e["target"]).has_classes else []}
        for m, e in sorted(info.items())
    }
