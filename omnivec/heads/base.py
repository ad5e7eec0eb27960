"""Shared pieces of the task heads."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..registry import HEADS


def register_head(name: str) -> Callable[[type], type]:
    """Register a head class (with a `config_class`) under `name`."""
    return HEADS.register(name)


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x: [B, L, D], padding_mask: [B, L] bool (True = real token) -> [B, D] mean of the real tokens."""
    if padding_mask is None:
        return x.mean(1)
    weights = padding_mask.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


class TaskHead(nn.Module):
    """What every head implements, on the backbone's tokens of its modality (hidden [B, L, D] and
    padding mask [B, L] or None):

    - `forward(hidden, padding_mask)`: scores [B, ...] (classification heads);
    - `loss(hidden, padding_mask, target)`: the training loss;
    - `predict(hidden, padding_mask)`: what evaluation compares with the targets;
    - `metrics(predictions, targets)`: {name: value}, and `main_metric` names the one to track.
    """

    main_metric: str = ""

    def loss(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None, target: Any) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> Any:
        return self(hidden, padding_mask)

    def metrics(self, predictions: Any, targets: Any) -> dict[str, float]:
        raise NotImplementedError
