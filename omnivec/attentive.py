"""V-JEPA 2's frozen evaluation: an attentive probe (one learned query cross-attending to the frozen
backbone's tokens, then a classifier) trained on tokens cached once per task. omnivec/protocols.py
runs it beside k-NN and the linear probe (`omnivec evaluate --protocol attentive`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .datasets import TaskData
from .datasets.loaders import task_loader
from .evaluation import eval_batches, evaluating
from .metrics import classification_metrics
from .model import OmniVecModel
from .optim import param_groups
from .pooling import AttentiveProbe, Layers, layers_name
from .probes import Features, FrozenPass, train_probe


@dataclass
class TokenFeatures(Features):
    """Frozen backbone tokens of one task, cached once for the attentive probe: train [N, L, D] and
    test [M, L', D] (prefix tokens left out; zero-padded to the split's longest sample), their
    targets, the class count and their padding masks [N, L] / [M, L'] (True = real token; None when
    no sample is padded)."""

    train_mask: torch.Tensor | None = None
    test_mask: torch.Tensor | None = None


def token_split(
    model: OmniVecModel,
    datasets: list[TaskData],
    split: str,
    device: torch.device,
    layers: Layers = "last",
    batch_size: int = 64,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The backbone tokens of `layers` for every sample of `split` -> (tokens [N, L, D] float32 on
    the CPU, padding mask [N, L] or None, targets [N] or [N, C])."""

    modality, n = datasets[0].modality, model.backbone.num_prefix_tokens
    parts, masks, labels = [], [], []
    with evaluating(model):
        for x, batch in eval_batches(task_loader(model, datasets, split, batch_size), device, desc=desc):
            tokens, mask = model.layer_tokens(modality, x, layers)  # [B, n + L, D]
            parts.append(tokens[:, n:].float().cpu())  # [B, L, D]
            masks.append(torch.ones(parts[-1].shape[:2], dtype=torch.bool) if mask is None else mask.cpu())
            labels.append(batch["target"])
    length = max(p.shape[1] for p in parts)
    tokens = torch.cat([F.pad(p, (0, 0, 0, length - p.shape[1])) for p in parts])  # [N, L, D]
    mask = torch.cat([F.pad(m, (0, length - m.shape[1]), value=False) for m in masks])  # [N, L]
    return tokens, None if mask.all() else mask, torch.cat(labels)


def task_tokens(model: OmniVecModel, datasets: list[TaskData], run: FrozenPass = FrozenPass()) -> TokenFeatures:
    """The frozen model's tokens (of `run.layers`) for the train and test splits of a classification task."""
    (train, train_mask, train_y), (test, test_mask, test_y) = run.over_splits(
        model,
        datasets,
        "tokens",
        lambda split, device, desc: token_split(model, datasets, split, device, run.layers, run.batch_size, desc),
    )
    return TokenFeatures(train, train_y, test, test_y, len(datasets[0].classes), train_mask, test_mask)


def attentive_probe(
    features: TokenFeatures,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    num_heads: int = 0,
    layers: Layers = "last",
) -> AttentiveProbe:
    """V-JEPA 2's attentive probe on cached tokens: an `AttentiveProbe` (one learned query,
    `num_heads`-head cross-attention (0: width // 64, as its ViT-L probe's 16 at 1024), an MLP, a
    linear classifier) trained with AdamW at `lr`, cosine to 0, `weight_decay` on matrices (its first
    probe head's settings), for `epochs`; cross-entropy, or binary cross-entropy for multi-label
    targets. `layers` is recorded with the pooler. Deterministic for a `seed`; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dim = features.train.shape[-1]
        probe = AttentiveProbe(dim, features.num_classes, num_heads or max(1, dim // 64), layers=layers_name(layers))
        optimizer = torch.optim.AdamW(param_groups(probe, weight_decay, lr), lr=lr)
        mask = features.train_mask

        def logits(idx: torch.Tensor) -> torch.Tensor:
            return probe(features.train[idx], None if mask is None else mask[idx])  # [b, C]

        train_probe(probe, optimizer, logits, features, epochs, batch_size, seed, "attentive probe")
    return probe.eval()


def attentive_evaluate(features: TokenFeatures, batch_size: int = 256, **settings: Any) -> dict[str, Any]:
    """`attentive_probe` (with `batch_size` and `settings`, its other keyword arguments) fitted on the
    train tokens, scored on the test split; the trained probe comes back under "_probe" (private keys
    stay out of reports)."""
    probe = attentive_probe(features, batch_size=batch_size, **settings)
    mask = features.test_mask
    with torch.no_grad():
        scores = torch.cat(
            [
                probe(features.test[i : i + batch_size], None if mask is None else mask[i : i + batch_size])
                for i in range(0, len(features.test), batch_size)
            ]
        )  # [M, C]
    return {**classification_metrics(scores, features), "_probe": probe}
