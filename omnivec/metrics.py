"""Metric functions: top-k accuracy, mean average precision (multi-label), ROUGE-1/2/L, confusion matrices."""

from __future__ import annotations

from typing import Any

import torch


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """logits: [N, C], targets: [N] class ids -> fraction whose class is among the k highest scores."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == targets[:, None]).any(1)
    return hits.float().mean().item()


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """scores: [N], positives: [N] bool -> the mean, over the positives, of the precision among the
    samples scored at least as high (scikit-learn's `average_precision_score`, ties broken by order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].float()
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return (precision_at * hits).sum().item() / max(hits.sum().item(), 1.0)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """scores: [N, C], targets: [N, C] multi-hot -> mAP over the classes with at least one positive."""
    aps = [average_precision(scores[:, c], targets[:, c] > 0) for c in range(targets.shape[1]) if targets[:, c].any()]
    return sum(aps) / max(len(aps), 1)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {k: v / max(len(predictions), 1) for k, v in totals.items()}


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts: row = true class, column = predicted class."""
    return torch.bincount(targets * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def precision_at_k(
    sims: torch.Tensor, query_labels: torch.Tensor, key_labels: torch.Tensor, k: int = 5, same_set: bool = False
) -> dict[str, float]:
    """sims: [Nq, Nk] similarities, labels: [Nq] and [Nk] class ids -> {"precision@k": the share of
    each query's k most similar keys that have its class, "chance": that share for keys drawn at
    random}. `same_set`: the queries are the keys, and a query is never its own neighbour."""
    n = sims.shape[1] - int(same_set)
    if same_set:
        sims = sims.clone().fill_diagonal_(-float("inf"))
    top = sims.topk(min(k, n), dim=1).indices  # [Nq, k]
    precision = (key_labels[top] == query_labels[:, None]).float().mean().item()
    same_class = (query_labels[:, None] == key_labels[None, :]).sum(1) - int(same_set)  # [Nq]
    return {f"precision@{k}": precision, "chance": (same_class / max(n, 1)).float().mean().item()}


def classification_metrics(scores: torch.Tensor, features: Any) -> dict[str, float]:
    """scores [M, C] on the test split -> top-1 / top-5 (single-label) or mAP (multi-label)."""
    if features.multi_label:
        return {"mAP": mean_average_precision(scores, features.test_y)}
    return {"top1": topk_accuracy(scores, features.test_y, 1), "top5": topk_accuracy(scores, features.test_y, 5)}
