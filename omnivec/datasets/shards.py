"""WebDataset tar shards read back: a shard spec (a folder with `index.json`, a brace pattern, URLs,
`pipe:` commands) as streamed datasets. `omnivec data shard` writes them (datasets/shard_writer.py).
An existing path is taken as it is, braces and all; `pipe:` commands are refused unless the
command line allowed them (omnivec/pipes.py); index entries stay in the index's folder unless
`allow_outside_root`.

A sample is a group of tar members sharing a key: its original encoded file (`KEY.png`,
`KEY.wav`, ... or `KEY.txt` for inline text) and `KEY.json` with its target (`label` / `labels` /
`summary`, ...), `modality`, `split` and `source` (where it came from). Shards are named
`{split}-{modality}-{NNNNNN}.tar` (one split and modality per shard), and `index.json` lists them
with their sample counts, plus each modality's target and label set.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import DataError
from ..files import Blob
from ..pipes import refuse_pipes
from ..registry import MODALITIES
from ..targets import is_missing
from .manifest import confined
from .patterns import expand_pattern
from .readers import extensions, known_suffixes, modality_of
from .records import SPLITS, Shard, Stream, TaskData, target_kinds
from .shard_index import INDEX, read_index
from .shard_tar import max_member_size, open_url, oversized, tar_samples


def exists(path: Path) -> bool:
    """`path` exists (False, not an error, for a pattern too long to be a path)."""
    try:
        return path.exists()
    except OSError:
        return False


def is_shard_spec(spec: str | os.PathLike) -> bool:
    """A folder holding `index.json`, a `.tar` file, or (not an existing path) a brace pattern, a URL
    or a `pipe:` command."""
    text = str(spec)
    if exists(Path(text)):  # a folder named `set{1,2}` is that folder
        return text.endswith((".tar", ".tar.gz", ".tgz")) or has_index(Path(text))
    return (
        text.startswith("pipe:")
        or "://" in text
        or bool(re.search(r"\{[^}]*(\.\.|,)[^}]*\}", text))
        or text.endswith((".tar", ".tar.gz", ".tgz"))
        or "::" in text
        or has_index(Path(text))
    )


def has_index(folder: Path) -> bool:
    """`folder/index.json` exists (False, not an error, for a pattern too long to be a path)."""
    try:
        return (folder / INDEX).is_file()
    except OSError:
        return False


def read_tar(url: str, split: str | None, indexed: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) of every sample of the tar shard at `url`, in order. A sample that cannot be used
    (its JSON, its target, a member over `max_member_size()`) is a row `{"where", "split", "error"}`;
    `DataError` naming the shard when it cannot be opened or ends early, and (`indexed`: `split` is
    the index's) when a sample's split is not the index's."""
    count, limit = 0, max_member_size()  # read first: a bad setting is named before the shard is opened
    try:
        stream = open_url(url)
    except (OSError, ValueError) as e:
        raise DataError(f"{url}: cannot open this shard ({e})") from e
    try:
        for sample in tar_samples(stream, url, limit):
            row = sample_row(url, sample, split)
            if indexed and "error" not in row and row["split"] != split:
                raise DataError(
                    f"{row['where']}: split {row['split']!r} in its JSON, but {INDEX} lists {Path(url).name} "
                    f"under split {split!r} (they disagree: write the shards again with omnivec data shard)"
                )
            yield sample["__key__"], row
            count += 1
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(
            f"{url}: truncated or corrupt shard after {count} samples ({e.args[0] if e.args else e})"
        ) from e
    finally:
        stream.close()


def sample_row(url: str, sample: dict[str, Any], split: str | None) -> dict[str, Any]:
    """A tar sample (`{"__key__", "json", "png", ...}`) -> a manifest-like row holding a `Blob`, or
    `{"where", "split", "error"}` naming the sample's member or key at fault."""
    where = f"{url}:{sample['__key__']}"
    try:
        return usable_row(where, sample, split)
    except DataError as e:
        return {"where": where, "split": split, "error": str(e)}


def usable_row(where: str, sample: dict[str, Any], split: str | None) -> dict[str, Any]:
    if sample.get("__oversized__"):
        raise DataError(oversized(where, sample["__oversized__"]))
    meta = sample_meta(where, sample)
    # the sample's member: of its modality's types when its JSON names one, else any but a transcript (txt)
    suffixes = set(extensions().get(str(meta.get("modality")), ())) or known_suffixes()
    members = [k for k in sorted(sample) if f".{k}" in suffixes]
    member = next((k for k in members if k != "txt"), members[0] if members else None)
    if member is None:
        raise DataError(f"{where}: no member of a known file type (has {sorted(k for k in sample if k[0] != '_')})")
    kinds = target_kinds()
    for column, kind in kinds.items():
        for alias in kind.aliases:  # e.g. webdataset's usual class member `cls`
            if alias in sample and column not in meta:
                try:
                    meta[column] = sample[alias].decode().strip()
                except UnicodeDecodeError as e:
                    raise DataError(f"{where}.{alias}: not UTF-8 text ({e})") from e
    row = {"path": Blob(f"{where}.{member}", sample[member]), "where": where, "split": meta.get("split", split)}
    if meta.get("modality"):
        row["modality"] = meta["modality"]
    row.update({k: kind.parse(meta[k], f"{where}.json") for k, kind in kinds.items() if not is_missing(meta.get(k))})
    return row


def sample_meta(where: str, sample: dict[str, Any]) -> dict[str, Any]:
    """A sample's `KEY.json` (`{}` without one), checked: an object whose `modality` and `split`
    are omnivec's."""
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError as e:
        raise DataError(f"{where}.json: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{where}.json: expected a JSON object, got a {type(meta).__name__}")
    if meta.get("modality") is not None and meta["modality"] not in MODALITIES.names():
        raise DataError(f"{where}.json: modality: expected one of {MODALITIES.names()}, got {meta['modality']!r}")
    if meta.get("split") is not None and meta["split"] not in SPLITS:
        raise DataError(f"{where}.json: split: expected one of {list(SPLITS)} or null, got {meta['split']!r}")
    return meta


def load_shard_tasks(spec: str | os.PathLike, allow_outside_root: bool = False) -> list[TaskData]:
    """The datasets (one per modality) of a shard spec. A folder or a pattern next to an
    `index.json` takes splits, sizes, targets and label sets from it (its shards confined to its
    folder unless `allow_outside_root`); other shards are training data of the modality of their
    first sample, without targets."""
    folder = Path(str(spec))
    if has_index(folder):
        return tasks_from_index(folder, None, allow_outside_root=allow_outside_root)
    if exists(folder):  # an existing file is read as a file, whatever its name looks like
        urls = [str(spec) if urlparse(str(spec)).scheme == "" else str(folder.absolute())]
    else:
        urls = expand_pattern(str(spec))
        refuse_pipes(urls, str(spec))
    local = Path(urls[0]).parent if urlparse(urls[0]).scheme in ("", "file") else None
    if local is not None and has_index(local):
        return tasks_from_index(local, {Path(u).name for u in urls}, str(spec), allow_outside_root)
    row = next((row for _, row in read_tar(urls[0], "train") if "error" not in row), None)
    if row is None:
        raise DataError(f"{urls[0]}: holds no usable samples (omnivec data check names what is wrong)")
    modality = row.get("modality") or modality_of(row["path"])
    stream = Stream(tuple(Shard(u, "train", None, partial(read_tar, u, "train")) for u in urls))
    return [TaskData(name=str(spec), source=Path(str(spec)), modality=modality, rows=[], stream=stream)]


def tasks_from_index(
    folder: Path, names: set[str] | None, spec: str | None = None, allow_outside_root: bool = False
) -> list[TaskData]:
    """The datasets of `folder/index.json` (only the shards named in `names`, when given); a shard
    file leading out of `folder` is a `DataError` unless `allow_outside_root`."""
    index = read_index(folder)
    entries, modalities = index["shards"], index["modalities"]
    files = [e["file"] for e in entries]
    paths = {f: confined(str(folder / INDEX), "shard file", f, folder, allow_outside_root) for f in files}
    if names is not None:
        unknown = sorted(names - set(files))
        if unknown:
            raise DataError(f"{folder / INDEX}: does not list {unknown[0]} (of {spec})")
        entries = [e for e in entries if e["file"] in names]
    tasks = []
    for modality, info in modalities.items():
        shards = tuple(
            Shard(
                str(folder / e["file"]),
                e["split"],
                e["samples"],
                partial(read_tar, str(paths[e["file"]]), e["split"], True),  # absolute: never read as a URL
            )
            for e in entries
            if e["modality"] == modality
        )
        if shards:
            tasks.append(
                TaskData(
                    name=folder.name,
                    source=folder,
                    modality=modality,
                    rows=[],
                    target=info.get("target"),
                    classes=list(info.get("classes", [])),
                    stream=Stream(shards),
                )
            )
    if not tasks:
        raise DataError(f"{spec or folder}: no shards")
    return tasks
