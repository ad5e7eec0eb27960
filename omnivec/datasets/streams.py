"""Streamed datasets: samples read in order from shards (WebDataset tar files, slices of a Hugging
Face dataset) instead of one file at a time.

Every epoch the shards of a split are put in an order fixed by (seed, epoch); process `rank` takes
every `world_size`-th of them and DataLoader worker `w` every `num_workers`-th of those, so no
shard is read twice in an epoch. Each worker shuffles its samples through a buffer seeded by
(seed, epoch, rank, worker) and counts the samples it hands out: that count (per worker) is the
stream's position, kept in checkpoints, from which a resumed run continues at the same sample.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle

from ..errors import DataError
from .dataset import encode_target, seeded_load
from .readers import load_sample
from .records import relabel_row

SHUFFLE_INITIAL = 100  # samples buffered before the first one leaves (webdataset's default)


class StreamDataset(IterableDataset):
    """The samples of split `split` of stream datasets (`TaskData` with a `stream`), model-ready as
    `TaskDataset`'s are: `{"index", "input", "target", "position"}` where `position` is
    (worker, samples this worker has handed out this epoch). `index` is the sample's number in the
    split when shard sizes are known (an index file), else a hash of its shard and key.

    `epoch`, `start` ({worker: samples to pass over}) and `rotation` (which worker plays worker 0)
    are set before each pass (`MultiModalLoader`); workers are not persistent, so they see them."""

    def __init__(
        self,
        tasks: Sequence[Any],
        split: str | None,
        transform: Callable[..., Any] | None,
        skip_bad: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.task, self.transform, self.skip_bad, self.seed = tasks[0], transform, skip_bad, seed
        self.shuffle, self.buffer, self.rank, self.world_size = shuffle, buffer, rank, world_size
        self.shards = [(t.stream, s) for t in tasks for s in t.stream.split(split)]
        sources = ", ".join(dict.fromkeys(str(t.source) for t in tasks))
        if not self.shards:
            raise DataError(f"{sources}: no shards of split {split!r}")
        if len(self.shards) < world_size:
            raise DataError(
                f"{sources}: {len(self.shards)} shards of split {split!r} cannot feed {world_size} "
                "processes without reading one twice; write smaller shards (omnivec data shard "
                "--shard-size)"
            )
        offsets: list[int | None] = []
        total: int | None = 0
        for _, shard in self.shards:
            offsets.append(total)
            total = None if total is None or shard.samples is None else total + shard.samples
        self.offsets, self.total = offsets, total
        self.class_index = {c: i for i, c in enumerate(self.task.classes)}
        same = all(t.target == self.task.target and t.classes == self.task.classes for t in tasks)
        self.target_kind = self.task.target_kind if same else None
        self.epoch, self.rotation = 0, 0
        self.start: dict[int, int] = {}  # worker -> samples to pass over (set_position)

    def __len__(self) -> int:
        """Samples in the split over every process (when the index gives shard sizes)."""
        if self.total is None:
            raise TypeError("the shards' sizes are unknown (no index.json)")
        return self.total

    def set_position(self, epoch: int, start: Mapping[int, int], rotation: int = 0) -> None:
        self.epoch, self.start, self.rotation = epoch, dict(start), rotation

    def worker(self) -> tuple[int, int]:
        """(this worker's number after `rotation`, workers)."""
        info = get_worker_info()
        workers = info.num_workers if info else 1
        return ((info.id if info else 0) + self.rotation) % workers, workers

    def my_shards(self, worker: int, workers: int) -> list[int]:
        """Indices of the shards this (rank, worker) reads this epoch."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(self.seed * 7919 + self.epoch).shuffle(order)
        return order[self.rank :: self.world_size][worker::workers]

    def raw(self, shard_ids: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, row) of every sample of the shards, in order; a shard that cannot be read, or holds
        other than the samples its index counts, raises `DataError` naming it (with `skip_bad`: an
        error row saying how many samples were read of how many, after those read)."""
        for k in shard_ids:
            stream, shard = self.shards[k]
            offset, n, error = self.offsets[k], 0, None
            try:
                for key, row in shard.read():
                    if stream.label_map:
                        row = relabel_row(row, stream.label_map)
                    index = offset + n if offset is not None else zlib.crc32(f"{shard.name}:{key}".encode())
                    n += 1
                    if row.get("split") and shard.split and row["split"] != shard.split:
                        continue  # e.g. a val sample in shards read without an index: never trained on
                    yield index, row
            except DataError as e:
                if not self.skip_bad:
                    raise
                error = str(e)
            problem = shard.shortfall(n, error)
            if problem and not self.skip_bad:
                raise DataError(f"{problem}; write the shards again (omnivec data shard)")
            if problem:
                yield -1, {"error": problem}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = self.worker()
        samples = self.raw(self.my_shards(worker, workers))
        if self.shuffle and self.buffer > 1:
            rng = random.Random(((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank) * 1009 + worker)
            samples = shuffle(self.buffer, min(SHUFFLE_INITIAL, self.buffer), rng=rng)(samples)
        skip = self.start.get(worker, 0)
        for position, (index, row) in enumerate(samples, 1):
            if position > skip:  # samples before a resume's position are passed over undecoded
                yield {**self.load(index, row), "position": (worker, position)}

    def load(self, index: int, row: dict[str, Any]) -> dict[str, Any]:
        if "error" in row:  # a shard's sample that cannot be used, or (skip_bad) what a shard lacked
            if not self.skip_bad:
                raise DataError(row["error"])
            return {"index": index, "error": row["error"]}
        try:
            x = seeded_load(lambda: load_sample(row, self.task.modality, self.transform), self.seed, self.epoch, index)
            try:
                target = encode_target(row, self.target_kind, self.class_index)
            except (KeyError, TypeError) as e:
                raise DataError(
                    f"{row.get('where')}: no usable {self.target_kind.column} ({e!r}; classes: "
                    f"{sorted(self.class_index)[:10]})"
                ) from e
        except DataError as e:
            if not self.skip_bad:
                raise
            return {"index": index, "error": str(e)}
        return {"index": index, "input": x, "target": target}
