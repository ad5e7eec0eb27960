"""One DataLoader per modality from a `{modality: [dataset paths]}` mapping."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from .dataset import Collate, TaskDataset
from .manifest import find_tasks
from .sampler import EpochSampler


def build_loaders(data: Mapping[str, list[str]], model: Any, split: str, cfg: Any, train: bool,
                  rank: int = 0, world_size: int = 1) -> dict[str, DataLoader]:
    """`split` of every dataset, through the model's (train or eval) transforms, batched by
    `cfg.batch_size` with `cfg.num_workers` workers; shuffled and sharded per process when `train`."""
    transforms = model.transforms(train=train)
    loaders = {}
    for modality, paths in data.items():
        tasks = [t for p in paths for t in find_tasks(p)]
        for t in tasks:
            if t.modality != modality:
                raise DataError(f"{t.source}: listed under data.{modality} but holds {t.modality} samples")
        dataset = TaskDataset(tasks, split, transforms[modality], skip_bad=cfg.skip_bad, seed=cfg.seed)
        sampler = EpochSampler(len(dataset), shuffle=train, seed=cfg.seed, rank=rank if train else 0,
                               world_size=world_size if train else 1)
        pad_id = 0
        if modality == "text":
            from ..modalities.text import load_tokenizer

            pad_id = load_tokenizer(model.config.modalities["text"].tokenizer).pad_token_id or 0
        loaders[modality] = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
            collate_fn=Collate(modality, pad_id), drop_last=train and len(sampler) >= cfg.batch_size,
            persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )
    return loaders
