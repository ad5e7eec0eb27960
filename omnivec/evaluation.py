"""Evaluation: the eval-mode loop over a loader, every task's head metrics and baselines, cross-modal
retrieval, and `omnivec evaluate` on a saved model."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .datasets import TaskData
from .datasets.dataset import to_device
from .datasets.loaders import task_loader
from .errors import ConfigError, DataError
from .metrics import precision_at_k
from .model import OmniVecModel
from .registry import HEADS


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's previous mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def eval_batches(
    loader: Any, device: torch.device, max_batches: int = 0, desc: str | None = None
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(input on `device`, batch) for each batch of `loader` that has samples, at most `max_batches`
    (0: all), with a progress bar when `desc` is given."""
    for i, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=desc is None)):
        if max_batches and i >= max_batches:
            break
        if batch["input"] is not None:
            yield to_device(batch["input"], device), batch


def evaluate_tasks(
    model: OmniVecModel,
    data: Mapping[str, list[TaskData]],
    split: str,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    max_batches: int = 0,
) -> dict[str, dict[str, Any]]:
    """Each task's head metrics on `split`, plus the head's `details` (keys starting with "_" are
    for figures, e.g. classification's predicted and true classes) and the sample count."""
    results = {}
    with evaluating(model):
        for task, datasets in data.items():
            head, modality = model.heads[task], model.config.heads[task].modality
            loader = task_loader(model, datasets, split, batch_size, num_workers, train=False)
            predictions, targets = [], []
            for x, batch in eval_batches(loader, device, max_batches, desc=f"eval {task}"):
                predictions.append(head.predict(*model.forward_features(modality, x)))
                targets.append(batch["target"])
            predictions, targets = head.gather(predictions), head.gather(targets)
            results[task] = {
                **head.metrics(predictions, targets),
                **head.details(predictions, targets),
                "samples": len(targets),
            }
    return results


def baselines(data: Mapping[str, list[TaskData]], heads: Mapping[str, str], split: str) -> dict[str, dict]:
    """Each task's reference point on `split` from its head type (`heads`: task -> head name):
    chance for classification, the lead sentence's ROUGE for summarization."""
    out = {}
    for task, datasets in data.items():
        rows = [r for d in datasets for r in d.split(split)]
        baseline = HEADS.get(heads[task]).baseline(rows, datasets[0].classes)
        if baseline:
            out[task] = baseline
    return out


def public(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Results without the private keys (those starting with "_", kept for figures)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def embed_split(
    model: OmniVecModel,
    datasets: list[TaskData],
    split: str,
    device: torch.device,
    batch_size: int = 64,
    desc: str | None = None,
    pool: str = "mean",
    layers: str | Sequence[int] = "last",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.embed` (with `pool` and `layers`) of every sample of `split` -> (embeddings [N, D] on
    the CPU, targets [N] or [N, C]), with a progress bar when `desc` is given."""
    modality = datasets[0].modality
    parts, labels = [], []
    with evaluating(model):
        for x, batch in eval_batches(task_loader(model, datasets, split, batch_size), device, desc=desc):
            parts.append(model.embed({modality: x}, pool=pool, layers=layers)[modality].float().cpu())
            labels.append(batch["target"])
    return torch.cat(parts), torch.cat(labels)


def cross_modal_retrieval(
    model: OmniVecModel,
    data: Mapping[str, list[TaskData]],
    split: str,
    device: torch.device,
    k: int = 5,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """For each ordered pair of tasks (one label space): the share of a query's k nearest
    neighbours (cosine of `model.embed`) among the other task's samples that have its class,
    against chance."""
    embedded = {task: embed_split(model, datasets, split, device, batch_size) for task, datasets in data.items()}
    return {
        f"{a}->{b}": precision_at_k(emb_a @ emb_b.T, y_a, y_b, k)
        for a, (emb_a, y_a) in embedded.items()
        for b, (emb_b, y_b) in embedded.items()
        if a != b
    }


def align_classes(task: str, datasets: list[TaskData], head: Any) -> list[TaskData]:
    """Index a task's labels as the trained head does; a label the head never learned is an error
    naming the file and the label (instead of silently shifted class indices)."""
    labels = list(getattr(head, "labels", None) or [])
    if not labels or not datasets[0].classes:
        return datasets
    for d in datasets:
        unknown = sorted(set(d.classes) - set(labels))
        if unknown:
            row = next((r for r in d.rows if d.target in r and unknown[0] in d.target_kind.classes(r[d.target])), {})
            raise DataError(
                f"{row.get('where', d.source)}: label {unknown[0]!r} is not one of the {len(labels)} labels the "
                f"{task!r} head was trained on ({', '.join(map(str, labels[:12]))}"
                f"{', ...' if len(labels) > 12 else ''})"
            )
    return [dataclasses.replace(d, classes=labels) for d in datasets]


def evaluate_saved(model_dir: str | Path, cfg: Any, split: str, output: Path, device: str = "auto") -> dict[str, Any]:
    """`omnivec evaluate`: every task of the fine-tuning config `cfg` whose head the saved model has,
    on `split`; prints a table and writes `metrics.json` and a confusion-matrix PNG per task whose
    head predicts classes to `output`."""
    from .plots import plot_confusion
    from .reports import metrics_lines
    from .tasks import load_task_data

    model = OmniVecModel.from_pretrained(model_dir)
    missing = [t for t in cfg.tasks if t not in model.heads]
    tasks = [t for t in cfg.tasks if t in model.heads]
    if not tasks:
        raise ConfigError(f"{model_dir}: the model has none of the config's task heads {sorted(cfg.tasks)}")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    model.to(dev)
    data = {
        t: align_classes(t, d, model.config.heads[t]) for t, d in load_task_data(cfg, [split]).items() if t in tasks
    }
    results = evaluate_tasks(model, data, split, cfg.eval_batch_size, dev, max_batches=cfg.eval_max_batches)
    output.mkdir(parents=True, exist_ok=True)
    for task, metrics in results.items():
        if "_pred" in metrics:
            plot_confusion(
                metrics["_pred"],
                metrics["_true"],
                model.config.heads[task].labels,
                output / f"confusion_{task}.png",
                title=f"{task} ({split})",
            )
    report: dict[str, Any] = {
        "model": str(model_dir),
        "split": split,
        "metrics": {t: public(m) for t, m in results.items()},
        "baselines": baselines(data, {t: model.config.heads[t].type for t in data}, split),
        "not_in_model": missing,
    }
    (output / "metrics.json").write_text(json.dumps(report, indent=2))
    lines = metrics_lines(report["metrics"], report["baselines"])
    if missing:
        lines.append(f"(no head in the model for: {', '.join(missing)})")
    print("\n".join(lines) + f"\nwritten to {output}")
    return report
