"""What a fine-tuning step computes: `FinetuneModule` (each task's head loss, timm Mixup on the tasks
that mix, the cross-modal alignment loss, a weight EMA) and the learning-rate scales it asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

from .backbone import masked_mean
from .finetune_config import FinetuneConfig, StageSpec
from .model import OmniVecModel
from .optim import layer_decay_scales


class FinetuneModule(nn.Module):
    """The model plus the list of tasks being trained: `forward` gives each task's head loss.

    `mixers`: {task: timm `Mixup`} mixes those tasks' batches and labels (soft targets);
    `ema_decay` > 0 keeps `ema`, a timm `ModelEmaV3` of the model, updated after every step."""

    def __init__(
        self,
        model: OmniVecModel,
        backbone_lr_scale: float = 1.0,
        stage: StageSpec | None = None,
        layer_decay: float = 1.0,
        mixers: Mapping[str, Mixup] | None = None,
        ema_decay: float = 0.0,
    ):
        super().__init__()
        self.model, self.backbone_lr_scale, self.layer_decay = model, backbone_lr_scale, layer_decay
        self.align = list(stage.align) if stage else []
        self.align_weight = stage.align_weight if stage else 1.0
        self.align_temperature = stage.align_temperature if stage else 0.1
        self.mixers = dict(mixers or {})
        # A submodule, so checkpoints carry it and a resumed run continues its average.
        self.ema = ModelEmaV3(model, decay=ema_decay, use_warmup=True).requires_grad_(False) if ema_decay else None

    def after_step(self, step: int) -> None:
        """After each optimizer step: update the weight EMA."""
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def mix(self, task: str, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm `Mixup` on the batch (it pairs sample i with B-1-i, so an odd batch's last sample
        is left out) -> mixed inputs, soft targets [B, num_classes]."""
        even = len(x) - len(x) % 2
        return self.mixers[task](x[:even], target[:even]) if even else (x, target)

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name: `backbone_lr_scale` on the encoders and the
        backbone, times `layer_decay ** (layers above)` (BEiT / MAE fine-tuning); heads get 1."""
        return {
            f"model.{name}": self.backbone_lr_scale * scale
            for name, scale in layer_decay_scales(self.model, self.layer_decay).items()
        }

    def forward(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, torch.Tensor]:
        losses, embeddings = {}, {}
        for task, b in batch.items():
            x, target = self.mix(task, b["input"], b["target"]) if task in self.mixers else (b["input"], b["target"])
            hidden, mask = self.model.forward_features(self.model.config.heads[task].modality, x)
            losses[task] = self.model.heads[task].loss(hidden, mask, target)
            if task in self.align:
                embeddings[task] = (F.normalize(masked_mean(hidden, mask), dim=-1), b["target"])  # model.embed's
        if len(embeddings) >= 2 and self.align_weight > 0:
            losses["align"] = self.align_weight * cross_modal_alignment(embeddings, self.align_temperature)
        return losses


def cross_modal_alignment(
    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]], temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss across tasks: {task: ([B, D] unit embeddings, [B] class ids of
    one shared label space)} -> for every anchor of one task and every other task, -log of the
    softmax mass (over that task's batch) on the samples of the anchor's class; averaged over the
    anchors that have such a sample."""
    terms = []
    for a, (emb_a, y_a) in embeddings.items():
        for b, (emb_b, y_b) in embeddings.items():
            if a == b:
                continue
            log_prob = (emb_a @ emb_b.T / temperature).float().log_softmax(dim=1)  # [Ba, Bb]
            positive = y_a[:, None] == y_b[None, :]  # [Ba, Bb]
            has = positive.any(1)
            mass = torch.logsumexp(log_prob.masked_fill(~positive, -float("inf")), dim=1)  # [Ba]
            terms.append(-(mass[has]).sum() / has.sum().clamp(min=1))
    return torch.stack(terms).mean()


def mixers(cfg: FinetuneConfig, model: OmniVecModel, tasks: list[str]) -> dict[str, Mixup]:
    """A timm `Mixup` for each of `tasks` whose modality's `augment` mixes batches (image mixup,
    cutmix) and whose head takes soft targets (one label per sample), with the head's smoothing."""
    out = {}
    for task in tasks:
        head = model.config.heads[task]
        mix = cfg.augment[head.modality].batch_mix() if head.modality in cfg.augment else {}
        if mix and model.heads[task].soft_targets:
            out[task] = Mixup(**mix, label_smoothing=head.label_smoothing, num_classes=head.num_classes)
    return out
