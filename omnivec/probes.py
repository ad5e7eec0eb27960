"""Frozen probes on a task's embeddings: DINO's weighted k-NN and MAE's linear probe, each fitted on
the train split and scored on the test split (omnivec/protocols.py runs them per task)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .datasets import TaskData
from .errors import ConfigError
from .evaluation import embed_split
from .metrics import classification_metrics
from .model import OmniVecModel
from .pooling import Layers

T = TypeVar("T")


@dataclass(frozen=True)
class FrozenPass:
    """How a frozen model runs over a classification task's data: its `device` (None: cuda when there
    is one), the split it is fitted on and the one it is scored on, the batch size, and the blocks
    (`layers`) whose tokens it uses."""

    device: str | torch.device | None = None
    train_split: str = "train"
    test_split: str = "test"
    batch_size: int = 64
    layers: Layers = "last"

    def over_splits(
        self, model: OmniVecModel, datasets: list[TaskData], verb: str, one_split: Callable[[str, torch.device, str], T]
    ) -> tuple[T, T]:
        """Move `model` to the device, then `one_split(split, device, progress bar label)` on the train
        split and on the test split -> (train result, test result)."""
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(device)
        label = f"{verb} {datasets[0].name}"
        return (
            one_split(self.train_split, device, f"{label} {self.train_split}"),
            one_split(self.test_split, device, f"{label} {self.test_split}"),
        )


@dataclass
class Features:
    """Frozen embeddings of one task: train [N, D] and test [M, D] (L2-normalised, from
    `model.embed`), their targets (class ids [N], or multi-hot [N, C]) and the class count."""

    train: torch.Tensor
    train_y: torch.Tensor
    test: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def multi_label(self) -> bool:
        return self.train_y.ndim == 2


def train_probe(
    probe: nn.Module,
    optimizer: torch.optim.Optimizer,
    logits: Callable[[torch.Tensor], torch.Tensor],
    features: Features | Any,
    epochs: int,
    batch_size: int,
    seed: int,
    desc: str,
    min_batch: int = 1,
) -> None:
    """Train `probe` for `epochs` over the train samples of `features` in batches of `batch_size` (a
    new order each epoch, from `seed`; batches under `min_batch` samples passed over): `logits(idx)`
    -> [b, C] for the samples `idx`; `optimizer`'s learning rate follows a cosine to 0; cross-entropy,
    or binary cross-entropy for multi-label targets; `desc` names the progress bar."""
    order = torch.Generator().manual_seed(seed)
    n = len(features.train)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * -(-n // batch_size))
    loss_fn = F.binary_cross_entropy_with_logits if features.multi_label else F.cross_entropy
    probe.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        for idx in torch.randperm(n, generator=order).split(batch_size):
            if len(idx) < min_batch:
                continue
            loss = loss_fn(logits(idx), features.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def task_features(
    model: OmniVecModel, datasets: list[TaskData], run: FrozenPass = FrozenPass(), pool: str = "mean"
) -> Features:
    """Embed the train and test splits of a classification task (`datasets`) with the frozen model
    (`model.embed`'s `pool` and `run.layers`)."""
    (train, train_y), (test, test_y) = run.over_splits(
        model,
        datasets,
        "embed",
        lambda split, device, desc: embed_split(model, datasets, split, device, run.batch_size, desc, pool, run.layers),
    )
    return Features(train, train_y, test, test_y, len(datasets[0].classes))


def knn_scores(features: Features, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: each test sample's k most similar train samples (cosine) vote for their
    class with weight exp(similarity / temperature) -> class scores [M, C]. The weights are divided
    by the test sample's largest one (its nearest neighbour weighs 1): the same ranking, without
    overflowing float32 at a small temperature (exp(1 / T) does below T = 0.0113)."""
    k = min(k, len(features.train))
    scores = []
    for queries in features.test.split(chunk):
        sims, idx = (queries @ features.train.T).topk(k, dim=1)  # [m, k], the most similar first
        weights = ((sims - sims[:, :1]).double() / temperature).exp().float()  # float64: no 0 / 0 at a tiny T
        votes = torch.zeros(len(queries), features.num_classes)
        scores.append(votes.scatter_add_(1, features.train_y[idx], weights))  # [m, C]
    return torch.cat(scores)


def knn_evaluate(features: Features, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Weighted k-NN top-1 / top-5 on the test split (single-label tasks only)."""
    if features.multi_label:
        raise ConfigError(
            "knn: a multi-label task has no k-NN protocol here (use --protocol linear, which reports mAP)"
        )
    return classification_metrics(knn_scores(features, k, temperature), features)


def linear_probe(
    features: Features,
    epochs: int = 90,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """MAE's linear probe on cached features: BatchNorm without affine parameters, then a linear
    layer (weights N(0, 0.01)), trained with SGD (momentum 0.9; MAE's LARS only matters at its 16k
    batch) at `lr` with a cosine schedule, no weight decay, for `epochs`; cross-entropy, or binary
    cross-entropy for multi-label targets. Deterministic for a `seed`; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(features.train.shape[1], features.num_classes)
        probe = nn.Sequential(nn.BatchNorm1d(features.train.shape[1], affine=False, eps=1e-6), linear)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        logits = lambda idx: probe(features.train[idx])  # noqa: E731  [b, C]
        train_probe(probe, optimizer, logits, features, epochs, batch_size, seed, "linear probe", min_batch=2)
    return probe.eval()


def linear_evaluate(features: Features, **settings: Any) -> dict[str, float]:
    """`linear_probe` (with `settings`, its keyword arguments) fitted on the train features, scored
    on the test split."""
    probe = linear_probe(features, **settings)
    with torch.no_grad():
        return classification_metrics(probe(features.test), features)
