"""WebDataset tar shards read back: a shard spec (a folder with `index.json`, a brace pattern, URLs,
`pipe:` commands) as streamed datasets. `omnivec data shard` writes them (datasets/shard_writer.py).

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

from webdataset.gopen import gopen, gopen_schemes
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import DataError
from ..files import Blob
from ..targets import is_missing
from .readers import extensions, known_suffixes, modality_of
from .records import Shard, Stream, TaskData, target_kinds

INDEX = "index.json"
FORMAT = "omnivec-shards/1"


def is_shard_spec(spec: str | os.PathLike) -> bool:
    """A folder holding `index.json`, a `.tar` file, a brace pattern, a URL or a `pipe:` command."""
    text = str(spec)
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


def open_url(url: str):
    """A readable binary stream: webdataset's `gopen` (files, pipe:, http, gs, ...), or fsspec for
    the other schemes (s3://, az://, ...)."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in gopen_schemes:
        return gopen(url)
    import fsspec

    return fsspec.open(url, "rb").open()


def read_tar(url: str, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) of every sample of the tar shard at `url`, in order; `DataError` naming the shard
    when it cannot be opened or ends early."""
    count = 0
    try:
        stream = open_url(url)
    except (OSError, ValueError) as e:
        raise DataError(f"{url}: cannot open this shard ({e})") from e
    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
            yield sample["__key__"], sample_row(url, sample, split)
            count += 1
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(
            f"{url}: truncated or corrupt shard after {count} samples ({e.args[0] if e.args else e})"
        ) from e
    finally:
        stream.close()


def sample_row(url: str, sample: dict[str, Any], split: str | None) -> dict[str, Any]:
    """A tar sample (`{"__key__", "json", "png", ...}`) -> a manifest-like row holding a `Blob`."""
    where = f"{url}:{sample['__key__']}"
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError as e:
        raise DataError(f"{where}.json: not valid JSON ({e})") from e
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
                meta[column] = sample[alias].decode().strip()
    row = {"path": Blob(f"{where}.{member}", sample[member]), "where": where, "split": meta.get("split", split)}
    if meta.get("modality"):
        row["modality"] = meta["modality"]
    row.update({k: kind.parse(meta[k], where) for k, kind in kinds.items() if not is_missing(meta.get(k))})
    return row


def load_shard_tasks(spec: str | os.PathLike) -> list[TaskData]:
    """The datasets (one per modality) of a shard spec. A folder or a pattern next to an
    `index.json` takes splits, sizes, targets and label sets from it; other shards are training
    data of the modality of their first sample, without targets."""
    folder = Path(str(spec))
    if has_index(folder):
        return tasks_from_index(folder, None)
    urls = expand_urls(str(spec))
    local = Path(urls[0]).parent if urlparse(urls[0]).scheme in ("", "file") else None
    if local is not None and has_index(local):
        return tasks_from_index(local, {Path(u).name for u in urls}, str(spec))
    first = next(read_tar(urls[0], "train"), None)
    if first is None:
        raise DataError(f"{urls[0]}: holds no samples")
    row = first[1]
    modality = row.get("modality") or modality_of(row["path"])
    stream = Stream(tuple(Shard(u, "train", None, partial(read_tar, u, "train")) for u in urls))
    return [TaskData(name=str(spec), source=Path(str(spec)), modality=modality, rows=[], stream=stream)]


def tasks_from_index(folder: Path, names: set[str] | None, spec: str | None = None) -> list[TaskData]:
    """The datasets of `folder/index.json` (only the shards named in `names`, when given)."""
    index_file = folder / INDEX
    try:
        index = json.loads(index_file.read_text())
        entries, modalities = index["shards"], index["modalities"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{index_file}: not a shard index written by omnivec data shard ({e})") from e
    if names is not None:
        unknown = sorted(names - {e["file"] for e in entries})
        if unknown:
            raise DataError(f"{index_file}: does not list {unknown[0]} (of {spec})")
        entries = [e for e in entries if e["file"] in names]
    tasks = []
    for modality, info in modalities.items():
        shards = tuple(
            Shard(
                str(folder / e["file"]),
                e["split"],
                e["samples"],
                partial(read_tar, str(folder / e["file"]), e["split"]),
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
