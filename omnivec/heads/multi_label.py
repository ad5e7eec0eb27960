"""Multi-label classification head (AudioSet style): independent sigmoid per class; mAP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..metrics import mean_average_precision
from ..targets import LABELS
from .base import register_head
from .classification import ClassificationHead, ClassificationHeadConfig


@dataclass
class MultiLabelHeadConfig(ClassificationHeadConfig):
    type: str = "multi_label"


@register_head("multi_label")
class MultiLabelHead(ClassificationHead):
    """[B, L, D] -> [B, num_classes] logits, trained with binary cross-entropy on multi-hot targets."""

    config_class = MultiLabelHeadConfig
    target = LABELS
    soft_targets = False
    main_metric = "mAP"

    def loss(self, x: torch.Tensor, padding_mask: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """target: [B, num_classes] multi-hot, smoothed by `label_smoothing` as timm smooths one-hot
        targets (1 -> 1 - eps + eps / C, 0 -> eps / C) -> binary cross-entropy."""
        eps = self.cfg.label_smoothing
        target = target.float() * (1 - eps) + eps / self.cfg.num_classes  # [B, C]
        return F.binary_cross_entropy_with_logits(self(x, padding_mask).float(), target)

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"mAP": mean_average_precision(predictions.sigmoid(), targets)}

    def details(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict:
        return {}

    @classmethod
    def baseline(cls, rows: list[dict], classes: list[str]) -> dict:
        return {}  # chance mAP depends on the label frequencies: none reported
