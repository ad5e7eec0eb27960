"""Mixing modalities for multimodal training: one iterator over several per-modality loaders."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch

SCHEDULES = ("round_robin", "weighted", "all")


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, index)` keys: a permutation fixed by (seed, epoch), this process's shard of
    it (`rank::world_size`), starting `skip` keys in (to resume mid-epoch). The epoch in the key
    lets `TaskDataset` seed each sample's augmentation, so a resumed run sees the same samples."""

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
                 if self.shuffle else torch.arange(self.length))
        shard = order[self.rank::self.world_size].tolist()[self.skip:]
        self.skip = 0  # only the first pass after a resume starts part-way
        return iter((self.epoch, i) for i in shard)


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
        self.consumed = {n: 0 for n in self.names}  # batches taken in the current epoch
        self._iters: dict[str, Iterator] = {}
        self._step = 0

    def _next(self, name: str) -> Any:
        while True:
            if name not in self._iters:
                loader = self.loaders[name]
                sampler = getattr(loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):  # a new shuffle each epoch
                    sampler.set_epoch(self.epochs[name])
                if isinstance(sampler, EpochSampler):  # resume mid-epoch without loading skipped samples
                    sampler.skip = self.consumed[name] * loader.batch_size
                self._iters[name] = iter(loader)
            try:
                batch = next(self._iters[name])
            except StopIteration:
                if self.consumed[name] == 0:
                    raise ValueError(f"{name}: the loader yields no batch (fewer samples than one batch?)")
                del self._iters[name]
                self.epochs[name] += 1
                self.consumed[name] = 0
                continue
            self.consumed[name] += 1
            return batch

    def state_dict(self) -> dict[str, Any]:
        """The position in every loader and schedule (JSON-friendly), for checkpoints."""
        return {"step": self._step, "epochs": dict(self.epochs), "consumed": dict(self.consumed),
                "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._step = state["step"]
        self.epochs.update(state["epochs"])
        self.consumed.update(state["consumed"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self._iters.clear()

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
