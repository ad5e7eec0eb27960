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

from ..errors import DataError
from ..registry import MODALITIES
from .records import TaskData, inline_columns, target_kind, target_kinds
from .shard_index import FORMAT, INDEX, read_index
from .shard_tar import parse_size
from .shards import is_shard_spec
from .sources import find_all_tasks

TEMPORARY = re.compile(r"\.tmp-(index\.json|\w+-\w+-\d{6}\.tar)")  # what a run writes before its swap


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

    Every input file is checked before anything is written, and the shards are written beside an
    earlier set in `output` (as `.tmp-` files) and swapped in at the end: a run that fails leaves
    the earlier set as it was. `.tmp-` files an earlier killed run left are removed. Returns the index."""

    limit, out = parse_size(shard_size), Path(output)
    streamed = [str(s) for s in inputs if str(s).startswith("hf:") or is_shard_spec(s)]
    if streamed:  # refused before reading them (a pipe: spec would run)
        raise DataError(f"{', '.join(streamed)}: already sharded")
    old = old_shards(out)
    tasks = find_all_tasks(inputs, allow_outside_root)
    check_not_inside(out, inputs)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task in tasks:
        for row in task.split(split):
            groups.setdefault((row.get("split") or "", task.modality), []).append(row)
    if not groups:
        raise DataError(f"{', '.join(map(str, inputs))}: no samples" + (f" in split {split!r}" if split else ""))
    for rows in groups.values():
        for row in rows:
            check_source(row, out)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporary(out)
    try:
        entries = write_groups(groups, out, limit)
        index = {
            "format": FORMAT,
            "shards": entries,
            "modalities": modality_info(tasks, split),
            "splits": {
                s or "-": sum(e["samples"] for e in entries if e["split"] == (s or None))
                for s in sorted({e["split"] or "" for e in entries})
            },
        }
        (out / f".tmp-{INDEX}").write_text(json.dumps(index, indent=1) + "\n")
    except DataError as e:  # e.g. a file that became unreadable since it was checked
        remove_temporary(out)
        raise DataError(f"{e}; nothing was written to {out}") from e
    except BaseException:
        remove_temporary(out)
        raise
    swap(out, entries, old)
    return index


def check_not_inside(out: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """`DataError` when `out` is an input, or lies inside an input folder (a folder tree would read
    the shards as samples on the next run)."""
    for spec in inputs:
        source = Path(spec).resolve()
        if out.resolve() == source or (source.is_dir() and out.resolve().is_relative_to(source)):
            raise DataError(f"--output {out}: is or lies inside the input {spec}; choose a folder outside it")


def write_groups(groups: dict[tuple[str, str], list[dict[str, Any]]], out: Path, limit: int) -> list[dict[str, Any]]:
    """Write each (split, modality) group's rows as shards of at most `limit` bytes, each as
    `out/.tmp-FILE`; returns their index entries."""
    entries: list[dict[str, Any]] = []
    bar = tqdm(total=sum(map(len, groups.values())), desc="shard", unit="sample")
    for (split_name, modality), rows in sorted(groups.items()):
        writer, size, number = None, 0, 0
        for n, row in enumerate(rows):
            members = sample_members(row, modality, split_name)
            sample_bytes = sum(512 + -(-len(v) // 512) * 512 for k, v in members.items() if k != "__key__")
            if writer is None or (size + sample_bytes > limit and entries[-1]["samples"]):
                if writer is not None:
                    writer.close()
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
        writer.close()
    bar.close()
    return entries


def check_source(row: dict[str, Any], out: Path) -> None:
    """`DataError` naming a row's file when it is missing, a folder or unreadable (inline rows pass)."""
    path = row.get("path")
    if path is None or any(c in row for c in inline_columns()):
        return
    if path.is_dir():
        problem = "a folder of frames cannot be sharded; encode the video as a file first"
    elif not path.is_file():
        problem = "file not found"
    elif not os.access(path, os.R_OK):
        problem = "cannot read (permission denied)"
    else:
        return
    raise DataError(f"{path}: {problem} ({row.get('where', path)}); nothing was written to {out}")


def sample_members(row: dict[str, Any], modality: str, split: str) -> dict[str, bytes]:
    """A row's tar members: its file's original bytes (or its inline sample as a file, text as .txt)
    and its JSON."""
    inline = next((c for c in inline_columns() if c in row), None)
    if inline is not None:
        suffix, data = MODALITIES.get(inline_columns()[inline]).inline_member(row[inline])
    else:
        path = row["path"]  # a file (`check_source`)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
        suffix = path.suffix.lower()
    meta = {k: row[k] for k in target_kinds() if k in row}
    meta.update(modality=modality, split=split or None, source=str(row.get("where", row.get("path"))))
    return {suffix.lstrip("."): data, "json": json.dumps(meta, sort_keys=True).encode()}


def old_shards(out: Path) -> set[str]:
    """The shard files an earlier `index.json` in `out` lists (a rerun replaces them)."""
    if not (out / INDEX).is_file():
        return set()
    try:
        return {e["file"] for e in read_index(out)["shards"]}
    except DataError as e:
        raise DataError(f"{e}; not replaced: choose another --output, or remove it") from e


def remove_temporary(out: Path) -> None:
    """Remove the `.tmp-` shards and index a failed or killed run of this tool left in `out`."""
    for path in out.iterdir():
        if TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def swap(out: Path, entries: list[dict[str, Any]], old: set[str]) -> None:
    """Put the written `.tmp-` shards and index in place of the `old` set."""
    (out / INDEX).unlink(missing_ok=True)  # first: an index never lists shards that are not its own
    for entry in entries:
        os.replace(out / f".tmp-{entry['file']}", out / entry["file"])
    for name in old - {e["file"] for e in entries}:
        (out / name).unlink(missing_ok=True)
    os.replace(out / f".tmp-{INDEX}", out / INDEX)


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
