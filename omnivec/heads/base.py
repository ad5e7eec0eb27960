"""The task-head contract and what the heads share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..config import HeadConfig, OmniVecConfig
from ..parsing import from_dict
from ..registry import HEADS
from ..targets import LABEL, Target


def register_head(name: str) -> Callable[[type], type]:
    """Register a `TaskHead` subclass (with a `config_class`) under `name`."""

    def add(cls: type) -> type:
        cls.name = name
        return HEADS.register(name)(cls)

    return add


class TaskHead(nn.Module):
    """What every head implements, on the backbone's tokens of its modality (hidden [B, L, D] and
    padding mask [B, L] or None). Generic code (fine-tuning, evaluation, reports) asks the head,
    never tests its type:

    - `config_class`, `config_from_data` (its config completed from the task's data: classes,
      labels) and `bind` (resolved against the model it joins: the text modality's tokenizer);
    - `target`: the kind of target it learns (omnivec/targets.py: the data column, how a value is
      checked, encoded and batched, the classes it names);
    - `soft_targets`: True when its loss also takes [B, classes] probabilities (mixup, cutmix) and
      its config has `label_smoothing`;
    - `output`: "logits" (`forward` gives scores [B, ...]) or "sequences" (`predict` generates);
    - `loss(hidden, padding_mask, target)`, `predict(hidden, padding_mask)`;
    - `gather` (batches of predictions or targets -> one), `metrics` (with `main_metric` the one
      tracked), `details` (what reports add: predicted classes, example outputs);
    - `baseline(rows, classes)`: the reference its metrics are read against (chance, lead-1).
    """

    name: str
    config_class: type[HeadConfig] = HeadConfig
    target: Target = LABEL
    soft_targets: bool = False
    output: str = "logits"
    main_metric: str = ""

    @classmethod
    def config_from_data(
        cls, task: str, head_args: Mapping[str, Any], modality: str, classes: list[str], model_config: OmniVecConfig
    ) -> HeadConfig:
        """The config of task `task`'s head: `head_args` (the user's settings) completed from the data
        (`modality`, `classes`) and the model; errors name `tasks.TASK.head_args.KEY`."""
        values = {"type": cls.name, "modality": modality, **cls.from_data(classes, model_config, task), **head_args}
        return from_dict(cls.config_class, values, f"tasks.{task}.head_args")

    @classmethod
    def from_data(cls, classes: list[str], model_config: OmniVecConfig, task: str) -> dict[str, Any]:
        """Head settings that follow from the data and the model (defaults the user may override)."""
        return {}

    @classmethod
    def bind(cls, cfg: HeadConfig, model_config: OmniVecConfig) -> HeadConfig:
        """The settings the head is built with: `cfg` resolved against the model (its config keeps
        what was written, e.g. "the text modality's tokenizer", so a moved model folder still loads)."""
        return cfg

    def loss(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None, target: Any) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> Any:
        return self(hidden, padding_mask)

    @staticmethod
    def gather(batches: list[Any]) -> Any:
        """Per-batch predictions (or targets) -> one: tensors concatenated on the CPU."""
        return torch.cat([b.float().cpu() if b.is_floating_point() else b.cpu() for b in batches])

    def metrics(self, predictions: Any, targets: Any) -> dict[str, float]:
        raise NotImplementedError

    def details(self, predictions: Any, targets: Any) -> dict[str, Any]:
        """Extra results for reports (keys starting with "_" stay out of eval.json)."""
        return {}

    @classmethod
    def baseline(cls, rows: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
        """A reference that needs no training, on the evaluation split's `rows`: {"chance_METRIC":
        value, ...} or {"NAME": {metric: value}} (e.g. "lead-1"), or {} when there is none."""
        return {}
