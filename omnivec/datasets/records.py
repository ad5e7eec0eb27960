"""What a dataset is, once read: a `TaskData` holding rows (manifests, folder trees) or a `Stream`
of shards (WebDataset tars, slices of a Hugging Face dataset), and the columns a row may have.

A row is a dict: the sample (`path`, a file or a `files.Blob`, or a modality's inline column such
as `text`), `where` (what errors name), optionally `split` and `modality`, and at most one target
column. Which columns are targets comes from the registered heads (`target_kinds`), which are
inline samples from the registered modalities (`inline_columns`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import HEADS, MODALITIES
from ..targets import Target

SPLITS = ("train", "val", "test")


def target_kinds() -> dict[str, Target]:
    """{column: its `Target`} of every registered head's target."""
    kinds: dict[str, Target] = {}
    for name in HEADS.names():
        target = HEADS.get(name).target
        if kinds.setdefault(target.column, target) is not target and type(kinds[target.column]) is not type(target):
            raise ValueError(f"head {name!r}: its target column {target.column!r} is another head's, of another kind")
    return kinds


def target_kind(column: str | None) -> Target | None:
    """The `Target` learned from `column` (None for None)."""
    return None if column is None else target_kinds()[column]


def inline_columns() -> dict[str, str]:
    """{column: modality} of the registered modalities whose samples a row may hold inline (text)."""
    return {cls.inline_column: name for name in MODALITIES.names() if (cls := MODALITIES.get(name)).inline_column}


@dataclass(frozen=True)
class Shard:
    """One unit of sequential reading: `read()` yields `(key, row)` in a fixed order."""

    name: str  # a URL, a file, or "DATASET[split][start:stop]"
    split: str | None
    samples: int | None  # known from an index, else None
    read: Callable[[], Iterator[tuple[str, dict[str, Any]]]]

    def shortfall(self, read: int, error: str | None = None) -> str | None:
        """What went wrong reading this shard: `error` (it broke off) and how the `read` samples
        differ from the count its index gives; None when nothing did."""
        if self.samples is None or read == self.samples:
            return error
        if error:
            return f"{error}; {read} of the {self.samples} samples its index lists were read"
        return f"{self.name}: holds {read} samples, its index says {self.samples}"


@dataclass(frozen=True)
class Stream:
    """The shards of one dataset source, and the label renaming its rows get when read."""

    shards: tuple[Shard, ...]
    label_map: Mapping[str, str] = field(default_factory=dict)

    def split(self, name: str | None) -> list[Shard]:
        return [s for s in self.shards if name is None or s.split == name]

    def count(self, name: str | None) -> int | None:
        """Samples in split `name`, or None when a shard's count is unknown."""
        counts = [s.samples for s in self.split(name)]
        return None if None in counts else sum(c for c in counts if c is not None)

    def relabel(self, label_map: Mapping[str, str]) -> Stream:
        return dataclasses.replace(self, label_map={**self.label_map, **label_map})


@dataclass
class TaskData:
    """One dataset: its rows (or stream), modality, target column and classes."""

    name: str
    source: Path  # the manifest file, the root folder, or the shard / hf spec
    modality: str
    rows: list[dict[str, Any]]  # see the module docstring
    target: str | None = None  # the target column ("label", "labels", "summary", ...) or None
    classes: list[str] = field(default_factory=list)
    stream: Stream | None = None  # streamed datasets (shards, hf:): their shards; `rows` is empty

    @property
    def target_kind(self) -> Target | None:
        return target_kind(self.target)

    def has_split(self, name: str) -> bool:
        """Whether split `name` holds samples (shards, for a stream)."""
        return bool(self.stream.split(name) if self.stream is not None else self.split(name))

    def split(self, name: str | None) -> list[dict[str, Any]]:
        """The rows of split `name` (all rows when `name` is None)."""
        return self.rows if name is None else [r for r in self.rows if r.get("split") == name]

    def counts(self) -> dict[str, tuple[int, Counter]]:
        """{split: (samples, Counter(class -> samples))} (split "-" for rows without one)."""
        out: dict[str, tuple[int, Counter]] = {}
        for row in self.rows:
            count_row(out, row, self.target_kind)
        return out


def count_row(counts: dict[str, tuple[int, Counter]], row: Mapping[str, Any], kind: Target | None) -> None:
    """Add `row` to `counts` ({split: (samples, Counter(class -> samples))})."""
    n, counter = counts.get(row.get("split") or "-", (0, Counter()))
    if kind is not None and kind.column in row:
        counter.update(kind.classes(row[kind.column]))
    counts[row.get("split") or "-"] = (n + 1, counter)


def relabel_row(row: dict[str, Any], label_map: Mapping[str, str]) -> dict[str, Any]:
    """`row` with the classes of its target renamed by `label_map`."""
    kinds = target_kinds()
    return {k: kinds[k].relabel(v, label_map) if k in kinds else v for k, v in row.items()}
