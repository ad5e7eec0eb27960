"""Latent targets from an EMA teacher: the second masked-pretraining objective (data2vec 2.0, V-JEPA).

The teacher is an exponential moving average of the student's encoders and shared backbone. It sees
the whole input (padding excluded); the student sees the visible tokens only, as in MAE, and the
modality's light decoder predicts, at the hidden tokens, the average of the teacher's top K block
outputs, each instance-normalised over the sample's tokens (then layer-normalised per token). Several
masks per sample (`num_masks`) share one teacher pass. The spread of the targets is watched: a teacher
that gives every token the same features (collapse) stops the run.

`MaskedPretrainer` (omnivec/pretraining.py) asks `LatentTargets` for the targets and the loss of the
modalities whose objective is `latent`; the `Trainer` calls `after_step` (the EMA update) and `monitor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn

from .errors import ConfigError
from .model import OmniVecModel
from .parsing import join_key, require

OBJECTIVES = ("mae", "latent")  # what the decoder of a modality predicts: its own targets, or the teacher's features
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}  # data2vec 2.0 (loss_beta 0), V-JEPA (loss_exp 1)


@dataclass
class LatentConfig:
    """`latent:` in a pretraining config: the teacher, its targets and the collapse guard. Defaults suit
    a tiny model trained for a few hundred to a few thousand steps: data2vec's decays (0.9998 -> 0.99999,
    a 5,000-step horizon and more) would leave the teacher at its random start in such a run; 0.99 ->
    0.999 follows the student within ~100 steps at first and ~1,000 at the end."""

    top_k: int | None = None  # average the top K backbone blocks' outputs (None: every block, data2vec 2.0 images)
    layer_norm_targets: bool = True  # layer-normalise the average per token (data2vec 2.0 images; V-JEPA)
    num_masks: int = 4  # masks per sample sharing one teacher pass (data2vec's clone_batch: 8-16 there)
    ema_decay: float = 0.99  # teacher decay after the first step ...
    ema_end_decay: float = 0.999  # ... rising linearly to this at ema_anneal_steps, then constant (1: frozen)
    ema_anneal_steps: int = 1000
    loss: str = "mse"  # mse (data2vec 2.0) | l1 (V-JEPA), mean over the hidden tokens and channels
    min_target_std: float = 0.1  # stop when the targets' std over the hidden tokens falls below this (0: never)

    def validate(self, prefix: str) -> None:
        require(
            self.top_k is None or self.top_k > 0,
            join_key(prefix, "top_k"),
            "a positive number of blocks, or none (every block)",
            self.top_k,
        )
        require(self.num_masks > 0, join_key(prefix, "num_masks"), "a positive number", self.num_masks)
        for name in ("ema_decay", "ema_end_decay"):
            value = getattr(self, name)
            require(0 <= value <= 1, join_key(prefix, name), "a decay in [0, 1] (1: the teacher stays as it is)", value)
        require(
            self.ema_anneal_steps >= 0, join_key(prefix, "ema_anneal_steps"), "a number >= 0", self.ema_anneal_steps
        )
        require(self.loss in LOSSES, join_key(prefix, "loss"), f"one of {sorted(LOSSES)}", self.loss)
        require(
            self.min_target_std >= 0,
            join_key(prefix, "min_target_std"),
            "a number >= 0 (0: no check)",
            self.min_target_std,
        )


def teacher_decay(cfg: LatentConfig, step: int) -> float:
    """The EMA decay of the update after optimizer step `step` (1, 2, ...): `ema_decay` rising linearly
    to `ema_end_decay` at `ema_anneal_steps`, constant after (data2vec's `get_annealed_rate`)."""
    if step >= cfg.ema_anneal_steps:
        return cfg.ema_end_decay
    return cfg.ema_decay + (cfg.ema_end_decay - cfg.ema_decay) * step / cfg.ema_anneal_steps


def instance_norm(x: torch.Tensor, padding_mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """x: [B, L, D] -> each sample's channels standardised over its real tokens (padding_mask [B, L],
    True = real): `F.instance_norm` over the token axis (biased variance, no affine), padding left out
    of the statistics (data2vec 2.0's `instance_norm_target_layer`)."""
    if padding_mask is None:
        mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, correction=0)  # [B, 1, D]
    else:
        w = padding_mask[..., None].to(x.dtype)  # [B, L, 1]
        n = w.sum(1, keepdim=True).clamp(min=1)  # [B, 1, 1]
        mean = (x * w).sum(1, keepdim=True) / n  # [B, 1, D]
        var = ((x - mean).square() * w).sum(1, keepdim=True) / n  # [B, 1, D]
    return (x - mean) * torch.rsqrt(var + eps)  # [B, L, D]


def average_layers(
    layers: list[torch.Tensor], padding_mask: torch.Tensor | None = None, layer_norm: bool = True
) -> torch.Tensor:
    """K block outputs [B, L, D] -> the target [B, L, D] (float32): each instance-normalised, the K
    averaged, then (`layer_norm`) layer-normalised per token over D (data2vec 2.0's `make_targets`)."""
    y = torch.stack([instance_norm(h.float(), padding_mask) for h in layers]).mean(0)  # [B, L, D]
    return F.layer_norm(y, y.shape[-1:]) if layer_norm else y


def repeat_batch(x: Any, n: int) -> Any:
    """Each sample of a batch (a tensor, a mapping of tensors, or None) `n` times in a row: [B, ...] -> [B * n, ...]."""
    if x is None or n == 1:
        return x
    if isinstance(x, Mapping):
        return {k: repeat_batch(v, n) for k, v in x.items()}
    return x.repeat_interleave(n, dim=0)


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> the mean over the D channels of their std over the N tokens (data2vec 2.0's
    `compute_var`, biased): 0 when every token is the same."""
    return torch.sqrt(x.float().var(0, correction=0) + 1e-6).mean()


class LatentTargets(nn.Module):
    """The latent objective of a `MaskedPretrainer`: the EMA teacher (a timm `ModelEmaV3` of the
    student's encoders of `modalities` and its backbone; a submodule, so checkpoints carry it and a
    resumed run continues it), its targets, the loss, and the record of the targets' spread."""

    def __init__(self, model: OmniVecModel, modalities: list[str], cfg: LatentConfig):
        super().__init__()
        depth = len(model.backbone.blocks)
        if cfg.top_k is not None and cfg.top_k > depth:
            raise ConfigError(f"latent.top_k: expected at most the backbone's {depth} blocks, got {cfg.top_k}")
        self.cfg, self.modalities = cfg, list(modalities)
        self.teacher = ModelEmaV3(self.student(model), decay=cfg.ema_decay).requires_grad_(False)
        self.history: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []  # (step, modality, target std, pred std)

    def student(self, model: OmniVecModel) -> nn.ModuleDict:
        """The part of `model` the teacher copies: its encoders of the latent modalities and the backbone."""
        return nn.ModuleDict(
            {"encoders": nn.ModuleDict({m: model.encoders[m] for m in self.modalities}), "backbone": model.backbone}
        )

    def train(self, mode: bool = True) -> LatentTargets:
        """The teacher stays in eval mode (no stochastic depth), whatever the student's mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def update(self, model: OmniVecModel, step: int) -> None:
        """After optimizer step `step`: teacher <- decay * teacher + (1 - decay) * student."""
        self.teacher.apply_update_(self.student(model), teacher_decay(self.cfg, step))

    @torch.no_grad()
    def targets(self, modality: str, x: Any) -> torch.Tensor:
        """A batch of `modality` -> [B, L, D] the teacher's target for every token, from one pass over
        the whole input (float32, no gradient)."""
        teacher = self.teacher.module
        out = teacher.encoders[modality](x)  # tokens [B, L, D]
        n = teacher.backbone.num_prefix_tokens
        layers = [x[:, n:] for x in teacher.backbone.block_outputs(out.tokens, modality, out.padding_mask)]  # [B, L, D]
        return average_layers(
            layers[-(self.cfg.top_k or len(layers)) :], out.padding_mask, self.cfg.layer_norm_targets
        )  # [B, L, D]

    def repeat(self, x: Any) -> Any:
        """The student's batch: each sample `num_masks` times in a row (each copy gets its own mask)."""
        return repeat_batch(x, self.cfg.num_masks)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, D] at the N hidden tokens -> the regression loss."""
        return LOSSES[self.cfg.loss](pred.float(), target.float())

    def record(self, step: int, modality: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Keep the std of a training step's targets and predictions [N, D] (on the device: no sync)."""
        self.history.append((step, modality, feature_std(target), feature_std(pred.detach())))

    def monitor(
        self, reduce: Callable[[torch.Tensor], torch.Tensor], clear: bool = True
    ) -> tuple[dict[str, float], str | None]:
        """The mean target and prediction std per modality over the steps recorded since the last
        call (`clear`: forget them), each step's averaged over the processes by `reduce` (one host
        sync), and the teacher's decay -> (metrics, a message naming the first step and modality
        whose target std fell below `min_target_std`, or None)."""
        if not self.history:
            return {}, None
        values = reduce(torch.stack([torch.stack([t, p]) for _, _, t, p in self.history])).tolist()  # [n, 2]
        steps = [(step, m) for step, m, _, _ in self.history]
        if clear:
            self.history = []
        metrics: dict[str, float] = {}
        for m in dict.fromkeys(m for _, m in steps):
            mine = [v for (_, name), v in zip(steps, values) if name == m]
            metrics[f"target_std/{m}"] = sum(v[0] for v in mine) / len(mine)
            metrics[f"pred_std/{m}"] = sum(v[1] for v in mine) / len(mine)
        metrics["teacher_decay"] = teacher_decay(self.cfg, max(step for step, _ in steps))
        low = [(step, m, v[0]) for (step, m), v in zip(steps, values) if v[0] < self.cfg.min_target_std]
        if not low:
            return metrics, None
        step, m, std = min(low, key=lambda x: x[0])
        return metrics, (
            f"step {step}: the {m!r} latent targets collapsed (their std over the hidden tokens is "
            f"{std:.3g} < latent.min_target_std {self.cfg.min_target_std}: the EMA teacher gives every "
            "token the same features); raise latent.ema_decay or lower lr"
        )
