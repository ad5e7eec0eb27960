"""Shared pieces of the task heads."""
from __future__ import annotations

from typing import Callable

import torch

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
