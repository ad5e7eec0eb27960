"""The kinds of supervision a task head learns (its `TaskHead.target`).

A `Target` owns everything about one kind: the data column it reads (in manifests, shard JSON and
`hf:` datasets), how a cell is checked and normalised, the classes its values name, how a
sample's value becomes what the loss takes, and how those are batched. Data code asks the
registered heads which columns are targets (`datasets.records.target_kinds`) and goes through these
objects, so a head with a new kind of target is one file: the head and its `Target`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .errors import DataError


def is_missing(value: Any) -> bool:
    """An empty cell: None, "" or NaN (pandas and `datasets` write NaN for a missing number)."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def class_name(value: Any, where: str, column: str) -> str:
    """A class as rows hold it: a string, with one spelling per value (1, 1.0 and "1" are "1";
    true is "true"), so JSON, CSV and Hugging Face cells of one label agree."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    raise DataError(f"{where}: {column}: expected a class name (text or a number), got {value!r}")


class Target:
    """One kind of target. Subclasses set `column` and override what differs from a value that
    passes through unchanged (`parse`, `encode`, `collate`)."""

    column: str = ""
    has_classes = False  # its values name classes (probes, confusion matrices, stratified subsets)
    multi_label = False  # a sample may have several classes
    aliases: tuple[str, ...] = ()  # WebDataset member names that also hold it (webdataset's `cls`)

    def parse(self, value: Any, where: str) -> Any:
        """A cell (JSON, CSV, shard JSON, a dataset's column; not missing: `is_missing`) -> the
        row's value; `DataError` naming `where`."""
        return value

    def classes(self, value: Any) -> list[str]:
        """The classes a row's value names."""
        return []

    def relabel(self, value: Any, label_map: Mapping[str, str]) -> Any:
        """The value with its classes renamed by `label_map` (tasks.NAME.label_map)."""
        return value

    def encode(self, value: Any, class_index: Mapping[str, int]) -> Any:
        """A row's value -> what the head's loss takes for one sample."""
        return value

    def collate(self, values: list[Any]) -> Any:
        """The encoded values of a batch -> one batch target."""
        return values


class Label(Target):
    """One class per sample (`label`): encoded as its class id, batched as a long tensor [B]."""

    column = "label"
    has_classes = True
    aliases = ("cls",)

    def parse(self, value: Any, where: str) -> str:
        return class_name(value, where, self.column)

    def classes(self, value: str) -> list[str]:
        return [value]

    def relabel(self, value: str, label_map: Mapping[str, str]) -> str:
        return label_map.get(value, value)

    def encode(self, value: str, class_index: Mapping[str, int]) -> int:
        return class_index[value]

    def collate(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)  # [B]


class Labels(Target):
    """Any number of classes per sample (`labels`: a JSON list, or `a;b` in CSV): encoded as a
    multi-hot vector [C], batched as [B, C]."""

    column = "labels"
    has_classes = True
    multi_label = True

    def parse(self, value: Any, where: str) -> list[str]:
        items = [s for s in value.replace("|", ";").split(";") if s] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise DataError(f"{where}: {self.column}: expected a non-empty list, got {value!r}")
        return [class_name(v, where, self.column) for v in items]

    def classes(self, value: list[str]) -> list[str]:
        return list(value)

    def relabel(self, value: list[str], label_map: Mapping[str, str]) -> list[str]:
        return [label_map.get(c, c) for c in value]

    def encode(self, value: list[str], class_index: Mapping[str, int]) -> torch.Tensor:
        multi_hot = torch.zeros(len(class_index))
        multi_hot[[class_index[c] for c in value]] = 1.0
        return multi_hot  # [C]

    def collate(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values)  # [B, C]


class Text(Target):
    """A reference text per sample (`summary` by default): batched as a list of strings."""

    def __init__(self, column: str = "summary"):
        self.column = column

    def parse(self, value: Any, where: str) -> str:
        if isinstance(value, (dict, list, tuple)):
            raise DataError(f"{where}: {self.column}: expected a text, got {value!r}")
        return str(value)


def single_label(target: Target) -> bool:
    """One class per sample: what cross-modal alignment and per-class retrieval pair samples by."""
    return target.has_classes and not target.multi_label


LABEL, LABELS, SUMMARY = Label(), Labels(), Text("summary")
