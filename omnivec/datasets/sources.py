"""Where datasets come from, and the one door in: `find_tasks` / `load_task` take a manifest, a
folder (with a manifest, or a class-per-folder tree), a folder of such datasets, a shard spec
(datasets/shards.py) or an `hf:` Hugging Face dataset (datasets/hf.py), and give `TaskData`. The
streamed kinds (shards, hf:) hold a `Stream` of shards instead of rows. `find_all_tasks` reads a
list of inputs, refusing one dataset given twice."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from ..errors import DataError
from .hf import load_hf_task
from .manifest import MANIFEST_NAMES, load_folder, load_manifest
from .records import TaskData
from .shards import is_shard_spec, load_shard_tasks


def streamed_tasks(spec: str | os.PathLike, allow_outside_root: bool = False) -> list[TaskData] | None:
    """The datasets of a `hf:` or shard spec (one per modality), or None for other paths; files
    they name may not leave their folder unless `allow_outside_root`."""
    if str(spec).startswith("hf:"):
        return [load_hf_task(str(spec), allow_outside_root)]
    return load_shard_tasks(spec, allow_outside_root) if is_shard_spec(spec) else None


def load_task(path: str | Path, allow_outside_root: bool = False) -> TaskData:
    """Read one dataset: a manifest file, a folder holding `manifest.jsonl`/`.csv`, a class-per-folder
    tree, or a streamed dataset of one modality (a shard spec, `hf:NAME[:split]`)."""
    streamed = streamed_tasks(path, allow_outside_root)
    if streamed is not None:
        if len(streamed) > 1:
            raise DataError(f"{path}: holds {', '.join(t.modality for t in streamed)} samples; one modality expected")
        return streamed[0]
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    return load_folder(path, allow_outside_root) if path.is_dir() else load_manifest(path, allow_outside_root)


def find_tasks(path: str | os.PathLike, allow_outside_root: bool = False) -> list[TaskData]:
    """All datasets under `path`: `path` itself if it is one, else every sub-folder with a manifest;
    a shard spec gives one dataset per modality it holds."""
    streamed = streamed_tasks(path, allow_outside_root)
    if streamed is not None:
        return streamed
    path = Path(path)
    if path.is_file() or any((path / n).is_file() for n in MANIFEST_NAMES):
        return [load_task(path, allow_outside_root)]
    manifests = sorted(p for n in MANIFEST_NAMES for p in path.rglob(n))
    if manifests:
        return [load_task(m, allow_outside_root) for m in manifests]
    return [load_task(path, allow_outside_root)]


def find_all_tasks(
    inputs: Sequence[str | os.PathLike], allow_outside_root: bool = False, key: str = "inputs"
) -> list[TaskData]:
    """The datasets of every input, in order (`find_tasks`); `DataError` naming `key` and two inputs
    that give the same dataset or shard however they are spelled (`X`, `X/`, `X/../X`,
    `X/manifest.jsonl`, or a folder and a dataset in it), whose samples would count twice."""
    seen: dict[str, str | os.PathLike] = {}
    tasks = []
    for spec in inputs:
        for task in find_tasks(spec, allow_outside_root):
            for name in sources_of(task):
                if name in seen:
                    raise DataError(
                        f"{key}: {str(seen[name])!r} and {str(spec)!r} both hold {name}; give each dataset once"
                    )
                seen[name] = spec
            tasks.append(task)
    return tasks


def sources_of(task: TaskData) -> list[str]:
    """What `task` reads, each named one way: its manifest or folder, or each of its shards (local
    ones resolved)."""
    if task.stream is None:
        return [str(task.source.resolve())]
    return [str(Path(s.name).resolve()) if urlparse(s.name).scheme == "" else s.name for s in task.stream.shards]
