"""`TaskDataset`: rows of a `TaskData` -> model-ready samples; `Collate`: samples -> a batch."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModalityConfig
from ..errors import DataError
from ..files import nbytes
from ..registry import MODALITIES
from ..targets import Target
from .readers import load_sample, materialize, sample_where, transform_sample
from .records import TaskData


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator, numpy and `random` seeded with `seed` inside (augmentations draw from all
    three: torchvision and torchaudio from torch, timm's RandAugment from numpy and `random`); their
    states as before after. Only the CPU generator: `torch.manual_seed` also queues a reseed of every
    CUDA device (with a stack trace), ~0.1 ms a sample on a CPU-only machine, and left a GPU's
    generator reseeded by each sample a `num_workers=0` loader read."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TaskDataset(Dataset):
    """Reads each row's file (or text), applies the modality transform and encodes the target.

    A sample that cannot be read or transformed raises `DataError` naming its file; with
    `skip_bad=True` it comes back as `{"index": i, "error": message}` and `Collate` drops it and
    lists it in the batch's `skipped`, so a training loop can count and report it.

    `cache_bytes` > 0: decoded samples (the modality's `read`, then `materialize`) are kept in memory
    while they fit in that many bytes, and later epochs only transform them. Each process that loads
    (a DataLoader worker, persistent across epochs, or the main one) keeps its own cache.
    """

    def __init__(
        self,
        task: TaskData | list[TaskData],
        split: str | None = None,
        transform: Callable[..., Any] | None = None,
        skip_bad: bool = False,
        seed: int = 0,
        cache_bytes: int = 0,
    ):
        tasks = task if isinstance(task, list) else [task]
        self.task, self.transform, self.skip_bad, self.seed = tasks[0], transform, skip_bad, seed
        self.cache: dict[int, Any] = {}
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        if len({t.modality for t in tasks}) > 1:
            raise DataError(f"{[str(t.source) for t in tasks]}: one modality per dataset expected")
        self.rows = [row for t in tasks for row in t.split(split)]
        if not self.rows:
            raise DataError(f"{', '.join(str(t.source) for t in tasks)}: no samples in split {split!r}")
        if not skip_bad:
            check_files_exist(self.rows, split, ", ".join(str(t.source) for t in tasks))
        self.class_index = {c: i for i, c in enumerate(self.task.classes)}
        same = all(t.target == self.task.target and t.classes == self.task.classes for t in tasks)
        self.target_kind = self.task.target_kind if same else None  # datasets joined for pretraining: no targets

    def __len__(self) -> int:
        return len(self.rows)

    def sizes(self) -> list[int]:
        """Each row's size, read without decoding it: the characters of an inline value (a text), else
        the bytes of its file (0 when it is missing: loading it names the file). Lengths to group by."""
        column = MODALITIES.get(self.task.modality).inline_column
        return [len(str(r[column])) if column and column in r else file_size(r["path"]) for r in self.rows]

    def load(self, i: int) -> Any:
        """Row `i` -> model-ready input (raises `DataError` naming the file), from the cache when it holds it."""
        row, modality = self.rows[i], self.task.modality
        if not self.cache_bytes:
            return load_sample(row, modality, self.transform)
        where = sample_where(row)
        if i in self.cache:
            return transform_sample(self.cache[i], where, modality, self.transform)
        raw = load_sample(row, modality)
        keep = self.cached_bytes + MODALITIES.get(modality).decoded_bytes(raw) <= self.cache_bytes
        raw = materialize(raw, where, modality) if keep else raw  # one too big stays as `read` gave it
        x = transform_sample(raw, where, modality, self.transform)
        if keep:  # only a sample that transformed
            self.cache[i], self.cached_bytes = raw, self.cached_bytes + nbytes(raw)
        return x

    def target(self, i: int) -> Any:
        return encode_target(self.rows[i], self.target_kind, self.class_index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """`i`, or `(epoch, i)` (from `EpochSampler`): then the sample's random augmentation is
        seeded by (seed, epoch, i), the same whichever worker loads it and after a resume."""
        epoch, i = key if isinstance(key, tuple) else (None, key)
        try:
            x = self.load(i) if epoch is None else seeded_load(lambda: self.load(i), self.seed, epoch, i)
        except DataError as e:
            if not self.skip_bad:
                raise
            return {"index": i, "error": str(e)}
        return {"index": i, "input": x, "target": self.target(i)}


def check_files_exist(rows: list[dict[str, Any]], split: str | None, source: str, skippable: bool = True) -> None:
    """`DataError` (naming `source`) listing the rows whose `path` file is not there, so a run stops
    before it trains rather than when a batch reaches the row (a shard's or a Hugging Face dataset's
    in-memory sample is always there). `skippable`: the error suggests skip_bad."""
    missing = [r for r in rows if isinstance(r.get("path"), Path) and not os.path.exists(r["path"])]
    if missing:
        shown = "; ".join(f"{r.get('where', r['path'])}: {r['path']}" for r in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        where = f" in split {split!r}" if split else ""
        skip = ", or set skip_bad to skip them" if skippable else ""
        raise DataError(
            f"{source}: {len(missing)} of the {len(rows)} samples{where} name a file that is not there: "
            f"{shown}{more}. Fix the manifest{skip} (`omnivec data check` lists all)"
        )


def file_size(path: Any) -> int:
    """Bytes of the file at `path` (0 when it is not there)."""
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError):
        return 0


def encode_target(row: dict[str, Any], kind: Target | None, class_index: Mapping[str, int]) -> Any:
    """A row's target as the model learns it (its kind's `encode`: a class id, a multi-hot vector
    [C], a text, ...), or None without a target kind."""
    return None if kind is None else kind.encode(row[kind.column], class_index)


def seeded_load(load: Callable[[], Any], seed: int, epoch: int, i: int) -> Any:
    """`load()` with the random augmentation seeded by (seed, epoch, sample i): the same whichever
    worker loads it and after a resume."""
    with seeded(((seed * 1_000_003 + epoch) * 1_000_033 + i) % 2**63):
        return load()


class Collate:
    """Batches a list of `TaskDataset` samples: inputs by their modality's `collate` (which pads
    variable-length samples), targets by their kind's (`target`); unreadable samples are dropped and
    listed. Streamed samples (one worker's per batch) give the batch the last one's `position`."""

    def __init__(self, modality: str, cfg: ModalityConfig | None = None, target: Target | None = None):
        self.collate_inputs = MODALITIES.get(modality).collate
        self.cfg, self.target = cfg, target

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "error" not in s]
        batch: dict[str, Any] = {
            "skipped": [s["error"] for s in samples if "error" in s],
            "skipped_index": [s["index"] for s in samples if "error" in s],
        }
        batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
        if "position" in samples[-1]:
            batch["position"] = samples[-1]["position"]
        if not good:
            batch["input"] = batch["target"] = None
            return batch
        batch["input"] = self.collate_inputs([s["input"] for s in good], self.cfg)
        targets = [s["target"] for s in good]
        batch["target"] = targets if self.target is None else self.target.collate(targets)  # (no target: Nones)
        return batch


def to_device(x: Any, device: torch.device) -> Any:
    """A collated batch (a tensor, or a dict of them as text gives) on `device`; other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    return x
