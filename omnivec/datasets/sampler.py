"""Mixing modalities for multimodal training: one iterator over several per-modality loaders."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch

SCHEDULES = ("round_robin", "weighted", "all")


class MultiModalLoader:
    """Yields `{modality: batch}` forever, restarting each loader when it runs out.

    - `round_robin`: one modality per step, in turn;
    - `weighted`: one modality per step, drawn with probability proportional to `weights`
      (seeded, so the sequence repeats);
    - `all`: every modality in every step (losses are summed by the caller).
    """

    def __init__(self, loaders: Mapping[str, Iterable], schedule: str = "round_robin",
                 weights: Mapping[str, float] | None = None, seed: int = 0):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {schedule!r}")
        if not loaders:
            raise ValueError("loaders: expected at least one modality")
        self.loaders, self.schedule = dict(loaders), schedule
        self.names = list(self.loaders)
        unknown = set(weights or {}) - set(self.names)
        if unknown:
            raise ValueError(f"weights: {sorted(unknown)} are not among the loaders' modalities {self.names}")
        w = torch.tensor([float((weights or {}).get(n, 1.0)) for n in self.names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights: expected non-negative values with a positive sum, got {weights}")
        self.probabilities = w / w.sum()
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs = {n: 0 for n in self.names}
        self._iters: dict[str, Iterator] = {}
        self._step = 0

    def _next(self, name: str) -> Any:
        while True:
            if name not in self._iters:
                loader = self.loaders[name]
                sampler = getattr(loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
                    sampler.set_epoch(self.epochs[name])
                self._iters[name] = iter(loader)
            try:
                return next(self._iters[name])
            except StopIteration:
                del self._iters[name]
                self.epochs[name] += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.schedule == "all":
            names = self.names
        elif self.schedule == "round_robin":
            names = [self.names[self._step % len(self.names)]]
        else:
            names = [self.names[int(torch.multinomial(self.probabilities, 1, generator=self.generator))]]
        self._step += 1
        return {name: self._next(name) for name in names}
