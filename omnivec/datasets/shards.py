"""WebDataset tar shards: `omnivec data shard` writes them from manifests and folder trees, and a
shard spec (a folder with `index.json`, a brace pattern, URLs, `pipe:` commands) reads them back.

A sample is a group of tar members sharing a key: its original encoded file (`KEY.png`,
`KEY.wav`, ... or `KEY.txt` for inline text) and `KEY.json` with `label` / `labels` / `summary`,
`modality`, `split` and `source` (where it came from). Shards are named
`{split}-{modality}-{NNNNNN}.tar` (one split and modality per shard), and `index.json` lists them
with their sample counts, plus each modality's target and label set.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .manifest import TARGETS, TaskData, find_tasks
from .readers import Blob, extensions, known_suffixes, modality_of
from .streams import Shard, Stream

INDEX = "index.json"
FORMAT = "omnivec-shards/1"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str | int) -> int:
    """ "500MB", "2GB", "1e6" or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?b?)\s*", str(text).lower())
    try:
        size = int(float(m[1]) * UNITS[m[2]]) if m else 0
    except ValueError:
        size = 0
    if size <= 0:
        raise ConfigError(f"shard size: expected a positive size such as 500MB or 2GB, got {text!r}")
    return size


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
    from webdataset.gopen import gopen, gopen_schemes

    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in gopen_schemes:
        return gopen(url)
    import fsspec

    return fsspec.open(url, "rb").open()


def read_tar(url: str, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) of every sample of the tar shard at `url`, in order; `DataError` naming the shard
    when it cannot be opened or ends early."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

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
    suffixes = set(extensions().get(meta.get("modality"), ())) or known_suffixes()
    members = [k for k in sorted(sample) if f".{k}" in suffixes]
    member = next((k for k in members if k != "txt"), members[0] if members else None)
    if member is None:
        raise DataError(f"{where}: no member of a known file type (has {sorted(k for k in sample if k[0] != '_')})")
    if "cls" in sample and "label" not in meta:  # webdataset's usual class member
        meta["label"] = sample["cls"].decode().strip()
    row = {"path": Blob(f"{where}.{member}", sample[member]), "where": where, "split": meta.get("split", split)}
    if meta.get("modality"):
        row["modality"] = meta["modality"]
    row.update({k: meta[k] for k in TARGETS if meta.get(k) not in (None, "")})
    return row


def load_shard_tasks(spec: str | os.PathLike) -> list[TaskData]:
    """The datasets (one per modality) of a shard spec. A folder or a pattern next to an
    `index.json` takes splits, sizes, targets and label sets from it; other shards are training
    data of the modality of their first sample, without targets."""
    folder = Path(str(spec))
    if has_index(folder):
        return tasks_from_index(folder, None)
    from webdataset.shardlists import expand_urls

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
    from webdataset.writer import TarWriter

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
    """A row's tar members: its file's original bytes (or its text as .txt) and its JSON."""
    if "text" in row:
        data, suffix = row["text"].encode("utf-8"), ".txt"
    else:
        path = row["path"]
        if path.is_dir():
            raise DataError(f"{path}: a folder of frames cannot be sharded; encode the video as a file first")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
        suffix = path.suffix.lower()
    meta = {k: row[k] for k in TARGETS if k in row}
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
        m: {**e, "classes": sorted(e["classes"]) if e["target"] in ("label", "labels") else []}
        for m, e in sorted(info.items())
    }
