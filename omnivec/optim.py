"""What the optimizer is given: parameter groups (weight decay on matrices only, learning-rate
scales by parameter name, layer-wise decay for fine-tuning) and the warmup + cosine schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .model import OmniVecModel


def param_groups(
    module: nn.Module, weight_decay: float, lr: float, lr_scales: Mapping[str, float] | None = None
) -> list[dict]:
    """Weight decay on matrices only (biases, norms, position embeddings and learned tokens go
    without); `lr_scales` maps a parameter-name prefix to a learning-rate multiplier."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "pos_embed" not in name and "token" not in name
        scale = next((s for prefix, s in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
        for (decay, scale), ps in groups.items()
    ]


def build_optimizer(
    module: nn.Module, cfg: Any, lr_scales: Mapping[str, float] | None, fused: bool
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and its `warmup_cosine` schedule, from a `TrainConfig`."""
    groups = param_groups(module, cfg.weight_decay, cfg.lr, lr_scales)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg))


def warmup_cosine(cfg: Any) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine down to min_lr / lr at max_steps."""
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


ENCODER_BLOCK = re.compile(r"^encoders\.[^.]+\.(?:library\.)?(?:blocks|layers|encoder\.layer)\.(\d+)\.")
ENCODER_TOP = re.compile(r"^encoders\.[^.]+\.(?:norm|proj)\.")  # after the modality's blocks
BACKBONE_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")


def layer_decay_scales(model: OmniVecModel, decay: float) -> dict[str, float]:
    """{parameter name: decay ** (layers above it)} for the encoders and the backbone: tokenizers and
    embeddings are layer 0, modality blocks 1..E, backbone blocks E+1..E+depth, the final norm (and the
    heads, not listed) the top. One layer count serves every modality, as the backbone is shared."""
    names = [n for n, _ in model.named_parameters() if n.startswith(("encoders.", "backbone."))]
    encoder_depth = max((int(m[1]) + 1 for n in names if (m := ENCODER_BLOCK.match(n))), default=0)
    top = encoder_depth + model.config.backbone.depth + 1

    def layer(name: str) -> int:
        if m := ENCODER_BLOCK.match(name):
            return int(m[1]) + 1
        if ENCODER_TOP.match(name):
            return encoder_depth
        if m := BACKBONE_BLOCK.match(name):
            return encoder_depth + 1 + int(m[1])
        return top if name.startswith("backbone.norm.") else 0

    return {name: decay ** (top - layer(name)) for name in names}
