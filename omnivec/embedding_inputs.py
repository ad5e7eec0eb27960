"""What `omnivec embed` reads, without holding it: files, folders, manifests, shards and `hf:`
datasets as a list of `Unit`s (runs of consecutive items read in order, each with its count), so
that any row can be reached by its global number and the rows of a part read from there.

An item is `{"path": str, "modality"}` (a file), `{"path": Blob, "where", "modality"}` (a shard
member or dataset cell), or `{"text", "where", "modality": "text"}` (an inline text), plus
`label` / `labels` when the source gives them.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from .datasets.manifest import MANIFEST_NAMES, _row, inside, iter_rows, streamed_tasks
from .datasets.readers import Blob, known_suffixes, modality_of
from .errors import DataError


@dataclass(frozen=True)
class Unit:
    """Items read in order: a shard, a slice of an HF dataset, a manifest, a folder's files or one file."""

    name: str
    count: int
    read: Callable[[], Iterator[dict[str, Any]]]
    modality: str | None = None  # when all its items have one


def item_of(row: dict[str, Any], modality: str | None = None) -> dict[str, Any]:
    """A manifest row, shard sample or dataset row -> an item."""
    modality = row.get("modality") or modality or ("text" if "text" in row else modality_of(row["path"]))
    if "text" in row:
        item = {"text": row["text"], "where": row["where"]}
    elif isinstance(row["path"], Blob):
        item = {"path": row["path"], "where": row["where"]}
    else:
        item = {"path": str(row["path"])}
    item["modality"] = modality
    item.update({k: row[k] for k in ("label", "labels") if k in row})
    return item


def shard_items(shard: Any, modality: str) -> Iterator[dict[str, Any]]:
    for _, row in shard.read():
        yield item_of(row, modality)


def manifest_items(path: Path) -> Iterator[dict[str, Any]]:
    for where, raw in iter_rows(path):
        yield item_of(_row(where, raw, path.parent, allow_outside_root=False))


def folder_files(root: Path, folder: Path | None = None) -> Iterator[Path]:
    """The files of known types under `root`, in the order of their sorted paths (`sorted(rglob)`:
    name by name), one directory listing in memory at a time; links leading out of `root` are
    refused, linked folders are not entered."""
    suffixes = known_suffixes()
    folder = folder or root
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from folder_files(root, path)
        elif path.suffix.lower() in suffixes and path.is_file():
            inside(path, root, allow_outside_root=False)
            yield path


def folder_items(root: Path) -> Iterator[dict[str, Any]]:
    for path in folder_files(root):
        yield {"path": str(path), "modality": modality_of(path)}


def file_items(path: Path) -> Iterator[dict[str, Any]]:
    yield {"path": str(path), "modality": modality_of(path)}


def counted(name: str, read: Callable[[], Iterator[Any]], modality: str | None = None) -> Unit:
    """A unit whose items are counted by reading them once (names, rows: not the samples' bytes)."""
    return Unit(name, sum(1 for _ in read()), read, modality)


def input_units(spec: str | os.PathLike) -> list[Unit]:
    """One input (a file, folder, manifest, shard spec or `hf:` dataset) -> its units, in order.
    A folder holding manifests gives their rows; any other folder its files of known types."""
    streamed = streamed_tasks(spec)
    if streamed is not None:
        return [
            Unit(shard.name, shard.samples, partial(shard_items, shard, task.modality), task.modality)
            if shard.samples is not None
            else counted(shard.name, partial(shard_items, shard, task.modality), task.modality)
            for task in streamed
            for shard in task.stream.shards
        ]
    source = Path(spec)
    if not source.exists():
        raise DataError(f"{source}: not found")
    if source.is_file() and (source.name in MANIFEST_NAMES or source.suffix in (".jsonl", ".csv")):
        return [counted(str(source), partial(manifest_items, source))]
    if source.is_dir():
        manifests = [source / n for n in MANIFEST_NAMES if (source / n).is_file()][:1] or sorted(
            p for n in MANIFEST_NAMES for p in source.rglob(n)
        )
        if manifests:
            return [counted(str(m), partial(manifest_items, m)) for m in manifests]
        return [counted(str(source), partial(folder_items, source))]
    return [Unit(str(source), 1, partial(file_items, source), modality_of(source))]


def plan_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, list[Unit]]]:
    """(input, its units) for every input, in order; `DataError` naming an input that is missing,
    or a manifest row or file that cannot be used, before any sample is decoded."""
    return [(str(spec), input_units(spec)) for spec in inputs]


def unit_items(unit: Unit, skip_bad: bool) -> Iterator[dict[str, Any]]:
    """The unit's `count` items. A source that breaks off (a truncated shard) or holds fewer items
    than counted raises `DataError`, or with `skip_bad` gives `{"error", "where", "modality"}` items
    for the rest; one that holds more is an error either way (its rows would shift)."""
    n, error = 0, None
    try:
        for item in unit.read():
            if n == unit.count:
                raise DataError(
                    f"{unit.name}: holds more than the {unit.count} samples it held when counted "
                    "(it changed while embedding)"
                )
            yield item
            n += 1
    except DataError as e:
        if not skip_bad or n == unit.count:
            raise
        error = str(e)
    if n < unit.count:
        error = error or (
            f"{unit.name}: ends after {n} samples, {unit.count} expected (truncated, or changed since it was counted)"
        )
        if not skip_bad:
            raise DataError(error)
        for k in range(n, unit.count):
            yield {"error": error, "where": f"{unit.name}[{k}]", "modality": unit.modality or "unknown"}


def items_from(units: Sequence[Unit], start: int, skip_bad: bool) -> Iterator[dict[str, Any]]:
    """Every item from global row `start` on; the rows before it in its unit are read, not decoded."""
    offsets = [0]
    for unit in units:
        offsets.append(offsets[-1] + unit.count)
    first = bisect.bisect_right(offsets, start) - 1
    for u in range(first, len(units)):
        yield from islice(unit_items(units[u], skip_bad), start - offsets[u] if u == first else 0, None)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every item of `inputs`, in input order, in one list (for a few files; `omnivec embed` streams)."""
    return [item for _, units in plan_inputs(inputs) for unit in units for item in unit_items(unit, False)]
