"""The shared OmniVec backbone: a pre-LN transformer (timm `Block`, fused SDPA) over any modality's tokens."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.utils.checkpoint
from timm.layers import DropPath, QuickGELU, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .config import BackboneConfig


def attention_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] bool (True = real token) -> [B, 1, 1, L] bool mask for SDPA (True = attend)."""
    return None if padding_mask is None else padding_mask[:, None, None, :]


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def transformer_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path: float = 0.0,
    init_values: float | None = None,
    norm_eps: float = 1e-5,
    act: str = "gelu",
) -> nn.ModuleList:
    """`depth` pre-LN blocks (timm's ViT `Block`) with a linearly increasing stochastic depth rate;
    `init_values` adds LayerScale (DINOv2)."""
    return nn.ModuleList(
        Block(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            init_values=init_values,
            drop_path=r,
            norm_layer=partial(nn.LayerNorm, eps=norm_eps),  # type: ignore[arg-type]  # timm types it type[Module]; calls it
            act_layer=ACTIVATIONS[act],
        )
        for r in drop_path_rates(drop_path, depth)
    )


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic depth per block: 0 at the first, rising linearly to `drop_path` at the last (timm's ViT)."""
    return [drop_path * i / max(depth - 1, 1) for i in range(depth)]


def set_drop_path(blocks: nn.ModuleList, drop_path: float) -> None:
    """Give timm `Block`s (built with any rate) the stochastic depth of `drop_path_rates(drop_path)`."""
    for block, rate in zip(blocks, drop_path_rates(drop_path, len(blocks))):
        block.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        block.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


def run_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, checkpoint: bool = False) -> torch.Tensor:
    """One timm `Block` on x [B, L, D] with its SDPA mask; `checkpoint`: keep only its input and
    recompute its activations in the backward pass (torch.utils.checkpoint, non-reentrant; the RNG
    state is replayed, so dropout and stochastic depth draw the same)."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, attn_mask=mask, use_reentrant=False)
    return block(x, attn_mask=mask)


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, padding_mask: torch.Tensor | None, checkpoint: bool = False
) -> torch.Tensor:
    mask = attention_mask(padding_mask)
    for block in blocks:
        x = run_block(block, x, mask, checkpoint)
    return x


class SharedBackbone(nn.Module):
    """Pre-LN transformer shared by every modality, with a learned embedding per modality and
    optional prefix tokens (a pretrained ViT's CLS and registers) that attend with every sequence.
    `grad_checkpointing`: recompute each block's activations in the backward pass (`run_block`)."""

    def __init__(self, cfg: BackboneConfig, modalities: list[str]):
        super().__init__()
        self.dim = cfg.dim
        self.grad_checkpointing = False
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, cfg.dim)) for m in modalities})
        self.prefix = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens, cfg.dim)) if cfg.num_prefix_tokens else None
        self.norm_pre = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = transformer_blocks(
            cfg.dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_ratio,
            cfg.qkv_bias,
            cfg.drop_path,
            cfg.init_values,
            cfg.norm_eps,
            cfg.act,
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        if not cfg.pretrained:  # a pretrained backbone starts as the ViT it was: modality embeddings zero
            for p in self.modality_embed.values():
                trunc_normal_(p, std=0.02)
        if self.prefix is not None:
            trunc_normal_(self.prefix, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    def forward(
        self, x: torch.Tensor, modality: str, padding_mask: torch.Tensor | None = None, keep_prefix: bool = False
    ) -> torch.Tensor:
        """x: [B, L, D] tokens of one modality; padding_mask: [B, L] bool, True = real token -> [B, L, D]
        (`keep_prefix`: [B, n + L, D], the n prefix tokens' outputs first, as an MAE decoder takes them)."""
        x, padding_mask = self.prepare(x, modality, padding_mask)  # [B, n + L, D]
        x = self.norm(run_blocks(self.blocks, x, padding_mask, self.grad_checkpointing))  # [B, n + L, D]
        return x if keep_prefix else x[:, self.num_prefix_tokens :]

    def prepare(
        self, x: torch.Tensor, modality: str, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, D] -> the blocks' input [B, n + L, D] (modality embedding added, the n prefix
        tokens first: they attend in every block; `norm_pre`) and its padding mask [B, n + L]."""
        x = x + self.modality_embed[modality]  # [B, L, D]
        n = self.num_prefix_tokens
        if n:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # [B, n + L, D]
            padding_mask = None if padding_mask is None else nn.functional.pad(padding_mask, (n, 0), value=True)
        return self.norm_pre(x), padding_mask

    def block_outputs(
        self,
        x: torch.Tensor,
        modality: str,
        padding_mask: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """The outputs [B, n + L, D] (the n prefix tokens first, before the final norm) of blocks
        `indices` (0-based, negative counting from the last; None: every block), for latent targets
        (omnivec/latent.py) and for embeddings of earlier layers (omnivec/pooling.py). Blocks after
        the last one asked for do not run."""
        depth = len(self.blocks)
        wanted = list(range(depth)) if indices is None else [i % depth for i in indices]
        x, padding_mask = self.prepare(x, modality, padding_mask)  # [B, n + L, D]
        mask, out = attention_mask(padding_mask), {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = run_block(block, x, mask, self.grad_checkpointing)
            if i in wanted:
                out[i] = x  # [B, n + L, D]
        return [out[i] for i in wanted]


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x: [B, L, D], padding_mask: [B, L] bool (True = real token) -> [B, D] mean of the real tokens."""
    if padding_mask is None:
        return x.mean(1)
    weights = padding_mask.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


def compile_blocks(module: nn.Module) -> None:
    """Regional compilation: `torch.compile` each transformer block in place (backbone, encoders,
    decoders); identical blocks share the compiled code, and masking or padding outside the blocks
    stays eager, so varying token counts only add dynamic-shape guards."""
    for block in module.modules():
        if isinstance(block, Block):
            block.compile(dynamic=None)
