"""Mixing modalities for multimodal training: one iterator over several per-modality loaders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .streams import StreamDataset

SCHEDULES = ("round_robin", "weighted", "all")
GROUP_BATCHES = 50  # batches per length-sorted run (transformers' LengthGroupedSampler: megabatches of 50)


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, index)` keys: a permutation fixed by (seed, epoch), this process's shard of
    it (`rank::world_size`), starting `skip` keys in (to resume mid-epoch). The epoch in the key
    lets `TaskDataset` seed each sample's augmentation, so a resumed run sees the same samples.

    With `lengths` (one per sample), batches hold samples of similar length (`group_by_length`):
    a variable-length batch is padded to its longest sample, so one long text among short ones
    makes the whole batch long."""

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
    ):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (
            torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
            if self.shuffle
            else torch.arange(self.length)
        ).tolist()
        if self.lengths is not None:  # whole global batches, so each process's share of one is alike too
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1)
            order = group_by_length(order, self.lengths, self.batch_size * self.world_size, generator)
        shard = order[self.rank :: self.world_size][self.skip :]
        self.skip = 0  # only the first pass after a resume starts part-way
        return iter((self.epoch, i) for i in shard)


def group_by_length(order: list[int], lengths: Sequence[int], batch: int, generator: torch.Generator) -> list[int]:
    """`order` (sample indices) regrouped so that each run of `batch` holds samples of similar
    length: cut into runs of GROUP_BATCHES batches, each run sorted by length and cut into batches,
    which come in a random order (a short last batch stays last, where the loader drops it)."""
    grouped = []
    size = batch * GROUP_BATCHES
    for start in range(0, len(order), size):
        run = sorted(order[start : start + size], key=lambda i: lengths[i], reverse=True)
        batches = [run[j : j + batch] for j in range(0, len(run), batch)]
        full = [b for b in batches if len(b) == batch]
        for k in torch.randperm(len(full), generator=generator).tolist():
            grouped.extend(full[k])
        grouped.extend(i for b in batches if len(b) < batch for i in b)
    return grouped


class MultiModalLoader:
    """Yields `{modality: batch}` forever, restarting each loader when it runs out.

    - `round_robin`: one modality per step, in turn;
    - `weighted`: one modality per step, drawn with probability proportional to `weights`
      (seeded, so the sequence repeats);
    - `all`: every modality in every step (losses are summed by the caller).

    Its state (`state_dict`) is the position in each loader: epoch and batches taken, and for a
    streamed dataset the samples each of its workers has handed out and the worker of the last
    batch, from which a resumed stream continues at the same sample.
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable],
        schedule: str = "round_robin",
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ):
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
        self.positions: dict[str, dict[int, int]] = {}  # streams: {worker: samples handed out this epoch}
        self.last: dict[str, int] = {}  # streams: the worker of the last batch taken
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
                if isinstance(
                    getattr(loader, "dataset", None), StreamDataset
                ):  # the same, per worker; the next worker first
                    last = self.last.get(name)
                    loader.dataset.set_position(
                        self.epochs[name], self.positions.get(name, {}), 0 if last is None else last + 1
                    )
                self._iters[name] = iter(loader)
            try:
                batch = next(self._iters[name])
            except StopIteration:
                if self.consumed[name] == 0:
                    raise ValueError(f"{name}: the loader yields no batch (fewer samples than one batch?)") from None
                del self._iters[name]
                self.epochs[name] += 1
                self.consumed[name] = 0
                self.positions.pop(name, None)
                self.last.pop(name, None)
                continue
            self.consumed[name] += 1
            if isinstance(batch, Mapping) and "position" in batch:
                worker, handed_out = batch["position"]
                self.positions.setdefault(name, {})[worker] = handed_out
                self.last[name] = worker
            return batch

    def state_dict(self) -> dict[str, Any]:
        """The position in every loader and schedule (JSON-friendly), for checkpoints."""
        streams = {
            name: {
                "positions": {str(w): n for w, n in self.positions.get(name, {}).items()},
                "last": self.last.get(name),
                "layout": self.layout(name),
            }
            for name in self.names
            if isinstance(getattr(self.loaders[name], "dataset", None), StreamDataset)
        }
        return {
            "step": self._step,
            "epochs": dict(self.epochs),
            "consumed": dict(self.consumed),
            "generator": self.generator.get_state().tolist(),
            "streams": streams,
        }

    def layout(self, name: str) -> list[int]:
        """[processes, workers] a stream's positions belong to."""
        loader = self.loaders[name]
        return [loader.dataset.world_size, max(loader.num_workers, 1)]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._step = state["step"]
        self.epochs.update(state["epochs"])
        self.consumed.update(state["consumed"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        for name, stream in state.get("streams", {}).items():
            if stream["positions"] and stream["layout"] != self.layout(name):
                (p, w), (p_now, w_now) = stream["layout"], self.layout(name)
                raise ConfigError(
                    f"{name}: the checkpoint streamed its shards with {p} processes x {w} workers, "
                    f"this run has {p_now} x {w_now}; resume a sharded dataset with the same "
                    "processes and num_workers"
                )
            self.positions[name] = {int(w): n for w, n in stream["positions"].items()}
            if stream["last"] is not None:
                self.last[name] = stream["last"]
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
