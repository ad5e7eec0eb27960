"""Classification head: mean-pool the backbone tokens, then LayerNorm and a linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import HeadConfig, require, require_positive
from .base import masked_mean, register_head


@dataclass
class ClassificationHeadConfig(HeadConfig):
    type: str = "classification"
    num_classes: int = 2
    dropout: float = 0.0

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "num_classes")
        require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "a float in [0, 1)", self.dropout)


@register_head("classification")
class ClassificationHead(nn.Module):
    """[B, L, D] tokens (+ padding mask) -> [B, num_classes] logits."""

    config_class = ClassificationHeadConfig

    def __init__(self, cfg: ClassificationHeadConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(dim, cfg.num_classes)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.drop(self.norm(masked_mean(x, padding_mask))))  # [B, num_classes]
