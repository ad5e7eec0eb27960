"""Action recognition head for video: attention pooling over the space-time tokens (a learned
query attends to every tubelet token), then a linear classifier; top-1 and top-5."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..errors import ConfigError
from ..parsing import require
from .base import register_head
from .classification import ClassificationHead, ClassificationHeadConfig


@dataclass
class ActionHeadConfig(ClassificationHeadConfig):
    type: str = "action"
    num_heads: int = 4  # of the attention pooling

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require(self.num_heads > 0, f"{prefix}.num_heads", "a positive int", self.num_heads)


@register_head("action")
class ActionHead(ClassificationHead):
    """[B, T'*H'*W', D] tubelet tokens -> [B, num_classes]: motion is read from how the tokens of
    different times relate, so the pooling attends instead of averaging."""

    config_class = ActionHeadConfig

    def __init__(self, cfg: ActionHeadConfig, dim: int):
        super().__init__(cfg, dim)
        if dim % cfg.num_heads:
            raise ConfigError(
                f"action head num_heads: expected a divisor of the backbone width {dim}, got {cfg.num_heads}"
            )
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, cfg.num_heads, batch_first=True)
        trunc_normal_(self.query, std=0.02)

    def pool(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        query = self.query.expand(x.shape[0], -1, -1)  # [B, 1, D]
        ignore = None if padding_mask is None else ~padding_mask
        return self.attn(query, x, x, key_padding_mask=ignore, need_weights=False)[0][:, 0]  # [B, D]
