"""The shared OmniVec trunk: a pre-LN transformer (timm `Block`, fused SDPA) over any modality's tokens."""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .config import BackboneConfig


def attention_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] bool (True = real token) -> [B, 1, 1, L] bool mask for SDPA (True = attend)."""
    return None if padding_mask is None else padding_mask[:, None, None, :]


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                       drop_path: float = 0.0) -> nn.ModuleList:
    """`depth` pre-LN blocks with a linearly increasing stochastic depth rate, as in timm's ViT."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=r) for r in rates
    )


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    mask = attention_mask(padding_mask)
    for block in blocks:
        x = block(x, attn_mask=mask)
    return x


class SharedBackbone(nn.Module):
    """Pre-LN transformer shared by every modality, with a learned embedding per modality."""

    def __init__(self, cfg: BackboneConfig, modalities: list[str]):
        super().__init__()
        self.dim = cfg.dim
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, cfg.dim)) for m in modalities})
        self.blocks = transformer_blocks(cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.dim)
        for p in self.modality_embed.values():
            trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, modality: str, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D] tokens of one modality; padding_mask: [B, L] bool, True = real token."""
        x = x + self.modality_embed[modality]  # [B, L, D]
        return self.norm(run_blocks(self.blocks, x, padding_mask))  # [B, L, D]
