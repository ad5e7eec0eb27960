"""Single-label classification head: mean-pool the backbone tokens, LayerNorm, linear; softmax
cross-entropy (on class ids with label smoothing, or on soft targets from mixup / cutmix); top-1
and top-5 accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import masked_mean
from ..config import HeadConfig
from ..metrics import topk_accuracy
from ..parsing import require, require_positive
from .base import TaskHead, register_head


@dataclass
class ClassificationHeadConfig(HeadConfig):
    type: str = "classification"
    num_classes: int = 2
    labels: tuple[str, ...] = ()  # class names, in class-id order
    dropout: float = 0.0
    label_smoothing: float = 0.0

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "num_classes")
        require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "a float in [0, 1)", self.dropout)
        require(
            0.0 <= self.label_smoothing < 1.0, f"{prefix}.label_smoothing", "a float in [0, 1)", self.label_smoothing
        )
        require(
            not self.labels or len(self.labels) == self.num_classes,
            f"{prefix}.labels",
            f"{self.num_classes} names (num_classes)",
            self.labels,
        )


@register_head("classification")
class ClassificationHead(TaskHead):
    """[B, L, D] tokens (+ padding mask) -> [B, num_classes] logits."""

    config_class = ClassificationHeadConfig
    main_metric = "top1"
    soft_targets = True

    def __init__(self, cfg: ClassificationHeadConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(dim, cfg.num_classes)

    def pool(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return masked_mean(x, padding_mask)  # [B, D]

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.drop(self.norm(self.pool(x, padding_mask))))  # [B, num_classes]

    def loss(self, x: torch.Tensor, padding_mask: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """target: [B] class ids (smoothed by `label_smoothing`), or [B, num_classes] probabilities
        (timm `Mixup`'s, already smoothed): the soft-target cross-entropy."""
        logits = self(x, padding_mask).float()  # [B, num_classes]
        if target.is_floating_point():
            return F.cross_entropy(logits, target.float())
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)

    @classmethod
    def from_data(cls, classes: list[str], model_config, task: str) -> dict:
        return {"num_classes": len(classes), "labels": list(classes)}

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"top1": topk_accuracy(predictions, targets, 1), "top5": topk_accuracy(predictions, targets, 5)}

    def details(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict:
        """Predicted and true class ids, for confusion matrices."""
        return {"_pred": predictions.argmax(1).tolist(), "_true": targets.tolist()}

    @classmethod
    def baseline(cls, rows: list[dict], classes: list[str]) -> dict:
        """Chance accuracy: a uniform guess."""
        n = len(classes)
        return {"chance_top1": 1 / n, "chance_top5": min(5, n) / n} if n else {}
