"""DataLoaders over `TaskData`: one per task (fine-tuning) or one per modality (pretraining)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from ..targets import Target
from .dataset import Collate, TaskDataset, check_files_exist
from .records import TaskData
from .sampler import EpochSampler
from .sources import find_all_tasks
from .streams import StreamDataset

logger = logging.getLogger(__name__)


def collate_for(model: Any, modality: str, target: Target | None = None) -> Collate:
    """The collate function of `modality` with the model's settings (e.g. its tokenizer's pad id),
    batching targets of the kind `target`."""
    return Collate(modality, model.config.modalities[modality], target)


def task_loader(
    model: Any,
    data: list[TaskData],
    split: str,
    batch_size: int,
    num_workers: int = 0,
    train: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    persistent: bool | None = None,
    shuffle_buffer: int = 1000,
    augment: Mapping[str, Any] | None = None,
    group_by_length: bool = False,
    cache_mb: int = 0,
) -> DataLoader:
    """`split` of `data` through the model's (train or eval) transforms, with the training
    augmentation `augment` ({modality: its augment config}) when `train`; shuffled per epoch and
    sharded per process when `train` (default: an evaluation loader, read in this process).
    Workers persist across epochs (default: when training).
    Streamed datasets (shards, `hf:`) are read by `StreamDataset`: shards split over processes and
    workers, shuffled through `shuffle_buffer` samples; their workers start afresh each epoch.
    `group_by_length`: a file dataset's training batches hold samples of similar size (a text's
    characters, a file's bytes), so that little of a padded batch is padding; a stream keeps its order.
    `cache_mb`: a file dataset's decoded samples kept in memory by each loading process (`TaskDataset`)."""
    modality = data[0].modality
    transform = model.transforms(train=train, augment=augment)[modality]
    if data[0].stream is not None:
        if any(t.stream is None for t in data):
            raise DataError(f"{', '.join(str(t.source) for t in data)}: streamed and file datasets cannot be joined")
        if group_by_length and train:
            logger.warning("%s: a stream is read in its shuffled order, not grouped by length", data[0].source)
        stream = StreamDataset(
            data,
            split,
            transform,
            skip_bad=skip_bad,
            seed=seed,
            shuffle=train,
            buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
        )
        return DataLoader(
            stream,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_for(model, modality, stream.target_kind),
            pin_memory=torch.cuda.is_available(),
        )
    persistent = train if persistent is None else persistent
    cache = cache_mb * 2**20 if persistent or num_workers == 0 else 0  # a worker that ends each epoch keeps nothing
    dataset = TaskDataset(data, split, transform, skip_bad=skip_bad, seed=seed, cache_bytes=cache)
    lengths = dataset.sizes() if group_by_length and train else None
    sampler = EpochSampler(len(dataset), train, seed, rank, world_size, lengths, batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_for(model, modality, dataset.target_kind),
        drop_last=train and len(sampler) >= batch_size,
        persistent_workers=persistent and num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def recipe_settings(cfg: Any) -> dict[str, Any]:
    """The `task_loader` settings a recipe config (a `TrainConfig`) holds under the same names:
    `num_workers`, `seed`, `skip_bad`, `shuffle_buffer`, `augment` and `cache_mb`."""
    names = ("num_workers", "seed", "skip_bad", "shuffle_buffer", "augment", "cache_mb")
    return {name: getattr(cfg, name) for name in names}


def modality_tasks(data: Mapping[str, list[str]], check_files: bool = False) -> dict[str, list[TaskData]]:
    """`{modality: [dataset paths]}` -> `{modality: [TaskData]}`, each dataset found and holding that
    modality (else a `DataError` naming it and the `data.MODALITY` key): a check before any work.
    `check_files`: the file of every train and val row is there too (`check_files_exist`)."""
    out = {}
    for modality, paths in data.items():
        found = find_all_tasks(paths, key=f"data.{modality}")
        tasks = [t for t in found if t.stream is None or t.modality == modality]  # shard folders hold several
        for t in tasks or found:
            if t.modality != modality:
                raise DataError(f"{t.source}: listed under data.{modality} but holds {t.modality} samples")
        if check_files:  # the splits pretraining reads
            rows = [r for t in tasks if t.stream is None for split in ("train", "val") for r in t.split(split)]
            check_files_exist(rows, None, f"data.{modality}")
        out[modality] = tasks
    return out


def build_loaders(
    data: Mapping[str, list[TaskData]],
    model: Any,
    split: str,
    cfg: Any,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, DataLoader]:
    """One loader per modality of `{modality: [TaskData]}` (`modality_tasks`), batched by
    `cfg.batch_size` with `cfg.num_workers` persistent workers (and `cfg.augment` when `train`)."""
    loaders = {}
    for modality, tasks in data.items():
        loaders[modality] = task_loader(
            model,
            tasks,
            split,
            cfg.batch_size,
            train=train,
            rank=rank if train else 0,
            world_size=world_size if train else 1,
            persistent=True,
            group_by_length=getattr(cfg, "group_by_length", False),
            **recipe_settings(cfg),
        )
    return loaders
