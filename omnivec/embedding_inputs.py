"""What `omnivec embed` reads, without holding it: files, folders, manifests, shards and `hf:`
datasets as a list of `Unit`s (runs of consecutive items read in order, each with its count), so
that any row can be reached by its global number and the rows of a part read from there.

An item is `{"path": str, "modality"}` (a file), `{"path": Blob, "where", "modality"}` (a shard
member or dataset cell), or `{COLUMN, "where", "modality"}` (an inline sample such as text), plus
the classes (`label` / `labels`) when the source gives them.
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

import torch

from .datasets.manifest import MANIFEST_NAMES, inside, iter_rows, parse_row
from .datasets.readers import known_suffixes, modality_of
from .datasets.records import inline_columns, target_kinds
from .datasets.sources import streamed_tasks
from .errors import ConfigError, DataError
from .files import Blob
from .registry import MODALITIES


@dataclass(frozen=True)
class Unit:
    """Items read in order: a shard, a slice of an HF dataset, a manifest, a folder's files or one file."""

    name: str
    count: int
    read: Callable[[], Iterator[dict[str, Any]]]
    modality: str | None = None  # when all its items have one


def item_of(row: dict[str, Any], modality: str | None = None) -> dict[str, Any]:
    """A manifest row, shard sample or dataset row -> an item."""
    inline = inline_columns()
    found = next((m for column, m in inline.items() if column in row), None)
    modality = row.get("modality") or modality or found or modality_of(row["path"])
    column = MODALITIES.get(modality).inline_column
    if column and column in row:
        item = {column: row[column], "where": row["where"]}
    elif isinstance(row["path"], Blob):
        item = {"path": row["path"], "where": row["where"]}
    else:
        item = {"path": str(row["path"])}
    item["modality"] = modality
    item.update({k: row[k] for k, kind in target_kinds().items() if kind.has_classes and k in row})
    return item


def shard_items(shard: Any, modality: str) -> Iterator[dict[str, Any]]:
    for _, row in shard.read():
        yield {**row, "modality": modality} if "error" in row else item_of(row, modality)


def manifest_items(path: Path) -> Iterator[dict[str, Any]]:
    for where, raw in iter_rows(path):
        yield item_of(parse_row(where, raw, path.parent, allow_outside_root=False))


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
    or a manifest row or file that cannot be used, before any sample is decoded; two inputs that
    hold the same samples (`X X`, `X X/../X`, a folder and a file in it) are refused, as `data
    shard` refuses them: each sample would be embedded twice."""
    plan = [(str(spec), input_units(spec)) for spec in inputs]
    seen: dict[str, tuple[int, str]] = {}  # a unit's resolved name -> (its input's number, its name)
    holders: dict[str, str] = {}  # a folder above a seen unit -> that unit's resolved name
    for n, (spec, units) in enumerate(plan):
        for unit in units:
            key = resolved_name(unit.name)
            parents = [str(p) for p in Path(key).parents] if Path(key).is_absolute() else []
            clash = next((k for k in [key, *parents, holders.get(key)] if k in seen and seen[k][0] != n), None)
            if clash is not None:
                inner = seen[clash][1] if clash == holders.get(key) else unit.name
                raise DataError(
                    f"inputs: {plan[seen[clash][0]][0]!r} and {spec!r} both hold {inner}; give each input once "
                    "(its samples would be embedded twice)"
                )
            seen.setdefault(key, (n, unit.name))
            for p in parents:
                holders.setdefault(p, key)
    return plan


def resolved_name(name: str) -> str:
    """A unit's name with a local path made absolute and its links resolved (`X/../X` is `X`)."""
    try:
        return str(Path(name).resolve()) if Path(name).exists() else name
    except OSError:  # a name too long to be a path
        return name


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


def check_options(batch_size: int, num_workers: int, part_size: int, device: str | None) -> torch.device | None:
    """`ConfigError` naming the option, before any work; the device (None: auto)."""
    for flag, value, least in (
        ("--batch-size", batch_size, 1),
        ("--num-workers", num_workers, 0),
        ("--part-size", part_size, 1),
    ):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag}: expected a whole number >= {least}, got {value!r}")
    return parse_device(device)


def parse_device(device: str | None) -> torch.device | None:
    """ "auto" / None -> None; "cpu", "cuda", "cuda:1", "mps" -> a device this machine has."""
    if device in (None, "auto"):
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible here; use --device cpu (or auto)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return parsed


def local_source(spec: str) -> Path | None:
    """The file or folder an input names on this machine (an `hf:` folder too), if it exists."""
    if spec.startswith("hf:"):
        from .datasets.hf import parse_spec

        spec = parse_spec(spec)[0]
    try:
        return Path(spec).resolve() if Path(spec).exists() else None
    except OSError:  # a pattern or URL too long to be a path
        return None


def check_output(output: Path, inputs: Sequence[str]) -> None:
    """`ConfigError` before any work when OUT cannot hold a store: it would replace or be read as
    an input, it is a file, or it cannot be created or written to."""
    if output.suffix in (".npy", ".safetensors", ".parquet"):
        raise ConfigError(
            f"--output {output}: a folder now (it holds embeddings.json and parts); drop the "
            f"{output.suffix} and give --format {output.suffix[1:]}"
        )
    out = output.resolve()
    for spec in inputs:
        source = local_source(str(spec))
        if source is None:
            continue
        if out == source or source.is_relative_to(out):
            raise ConfigError(f"--output {output}: would replace the input {spec}")
        if source.is_dir() and out.is_relative_to(source):
            raise ConfigError(
                f"--output {output}: inside the input folder {spec}, where its files would be read "
                "as input; choose a folder outside it"
            )
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a folder")
    created = [d for d in (output, *output.parents) if not d.exists()]  # removed again after the test: a
    try:  # command refused later (a bad model, no samples) leaves no empty folder behind
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{output.parent}: cannot write the embeddings there ({e.strerror or e})") from e
    test = output / f".omnivec-write-test-{os.getpid()}"
    try:
        test.write_bytes(b"")
        test.unlink()
    except OSError as e:
        raise ConfigError(f"{output}: cannot write the embeddings there ({e.strerror or e})") from e
    finally:
        for d in created:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def input_spec(spec: str) -> str:
    """An input as a store records it: a local path made absolute (the same command from another
    folder resumes), anything else as given."""
    return str(Path(spec).resolve()) if not spec.startswith("hf:") and local_source(spec) else spec
