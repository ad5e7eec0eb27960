"""SSL evaluation protocols on a frozen model: weighted k-NN (DINO) and a linear probe (MAE) on the
embeddings of every classification task, and V-JEPA 2's attentive probe on its tokens, each fitted
on the train split and scored on the test split. Fine-tuning (`omnivec finetune` then `omnivec
evaluate`) is the fourth protocol.

    omnivec evaluate --protocol knn --model runs/pretrain-tiny/model --config configs/finetune/sample_sequential.yaml
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .attentive import attentive_evaluate, task_tokens
from .datasets import TaskData
from .errors import ConfigError
from .evaluation import baselines
from .model import OmniVecModel
from .parsing import join_key, require, require_positive
from .pooling import check_pool
from .probes import FrozenPass, knn_evaluate, linear_evaluate, task_features


@dataclass
class ProtocolSettings:
    """k-NN: `k` neighbours, softmax `temperature` (DINO: 20, 0.07). Linear probe: `epochs`, `lr`,
    `weight_decay` (see `linear_probe`). Attentive probe: `attentive_epochs`, `attentive_lr`,
    `attentive_weight_decay`, `attentive_heads` (see `attentive_probe`). Both probes: `batch_size`,
    `seed`. Every protocol: the tokens of `layers`; k-NN and linear: their `pool` (mean or cls)
    into embeddings (omnivec/pooling.py)."""

    k: int = 20
    temperature: float = 0.07
    epochs: int = 90
    lr: float = 0.1
    weight_decay: float = 0.0
    attentive_epochs: int = 20
    attentive_lr: float = 1e-3
    attentive_weight_decay: float = 1e-3
    attentive_heads: int = 0
    batch_size: int = 256
    seed: int = 0
    pool: str = "mean"
    layers: str = "last"

    def validate(self, prefix: str = "") -> None:
        require_positive(
            self, prefix, "k", "temperature", "epochs", "lr", "batch_size", "attentive_epochs", "attentive_lr"
        )
        for name in ("weight_decay", "attentive_weight_decay", "attentive_heads"):
            require(getattr(self, name) >= 0, join_key(prefix, name), "a number >= 0", getattr(self, name))
        require(
            self.pool in ("mean", "cls"),
            join_key(prefix, "pool"),
            "mean or cls (the attentive protocol trains its own pooler)",
            self.pool,
        )


PROTOCOLS: dict[str, Callable[[Any, ProtocolSettings], dict[str, Any]]] = {
    "knn": lambda f, s: knn_evaluate(f, s.k, s.temperature),
    "linear": lambda f, s: linear_evaluate(
        f, epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay, batch_size=s.batch_size, seed=s.seed
    ),
    "attentive": lambda f, s: attentive_evaluate(
        f,
        epochs=s.attentive_epochs,
        lr=s.attentive_lr,
        weight_decay=s.attentive_weight_decay,
        batch_size=s.batch_size,
        seed=s.seed,
        num_heads=s.attentive_heads,
        layers=s.layers,
    ),
}
TOKEN_PROTOCOLS = ("attentive",)  # trained on cached tokens (`task_tokens`); the others on embeddings (`task_features`)


def knn_protocol(
    model: OmniVecModel,
    datasets: list[TaskData],
    run: FrozenPass = FrozenPass(),
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted k-NN of a frozen model on one task: {"top1", "top5"} on `run.test_split`."""
    return knn_evaluate(task_features(model, datasets, run), k, temperature)


def linear_protocol(
    model: OmniVecModel, datasets: list[TaskData], run: FrozenPass = FrozenPass(), **settings: Any
) -> dict[str, float]:
    """Linear probe of a frozen model on one task: {"top1", "top5"} (or {"mAP"}) on `run.test_split`;
    `settings`: `linear_probe`'s epochs, lr, weight_decay, batch_size, seed."""
    return linear_evaluate(task_features(model, datasets, run), **settings)


def attentive_protocol(
    model: OmniVecModel, datasets: list[TaskData], run: FrozenPass = FrozenPass(), **settings: Any
) -> dict[str, Any]:
    """Attentive probe of a frozen model on one task, on the tokens of `run.layers`: {"top1", "top5"}
    (or {"mAP"}) on `run.test_split`, and the trained probe under "_probe"; `settings`:
    `attentive_probe`'s epochs, lr, weight_decay, batch_size, seed, num_heads."""
    return attentive_evaluate(task_tokens(model, datasets, run), layers=run.layers, **settings)


def unsupported(model: OmniVecModel, protocol: str, datasets: list[TaskData]) -> str | None:
    """Why `protocol` cannot score this task (None when it can)."""
    modality = datasets[0].modality
    if modality not in model.encoders:
        return f"the model has no {modality} encoder"
    kind = datasets[0].target_kind
    if kind is None or not kind.has_classes:
        return f"not a classification task (target {datasets[0].target!r})"
    if protocol == "knn" and kind.multi_label:
        return "multi-label: no k-NN protocol (the linear probe reports mAP)"
    return None


def run_protocols(
    model: OmniVecModel,
    data: Mapping[str, list[TaskData]],
    protocols: list[str],
    settings: ProtocolSettings | None = None,
    device: str | torch.device | None = None,
    test_split: str = "test",
) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
    """Each protocol on each task, embedding every task once (and caching its tokens once for the
    token protocols) -> ({protocol: {task: metrics}}, {"protocol/task": why it was skipped}); the
    attentive probe's metrics hold the trained probe under "_probe"."""
    settings = settings or ProtocolSettings()
    check_pool(
        settings.pool,
        settings.layers,
        None,
        model.config.backbone.dim,
        len(model.backbone.blocks),
        model.backbone.num_prefix_tokens,
    )  # before any work
    heads, width = settings.attentive_heads, model.config.backbone.dim
    if "attentive" in protocols and heads and width % heads:
        raise ConfigError(f"attentive_heads (--heads): {heads} does not divide the backbone's width {width}")
    run = FrozenPass(device, test_split=test_split, layers=settings.layers)
    results: dict[str, dict[str, dict]] = {p: {} for p in protocols}
    skipped: dict[str, str] = {}
    for task, datasets in data.items():
        wanted = [p for p in protocols if not unsupported(model, p, datasets)]
        skipped.update({f"{p}/{task}": unsupported(model, p, datasets) for p in protocols if p not in wanted})
        cached: dict[bool, Any] = {}  # embeddings (False) and tokens (True), each computed once
        for p in wanted:
            tokens = p in TOKEN_PROTOCOLS
            if tokens not in cached:
                cached[tokens] = (
                    task_tokens(model, datasets, run) if tokens else task_features(model, datasets, run, settings.pool)
                )
            results[p][task] = {**PROTOCOLS[p](cached[tokens], settings), "samples": len(cached[tokens].test)}
    return results, skipped


def evaluate_protocol(
    model_dir: str | Path,
    cfg: Any,
    protocol: str,
    split: str,
    output: Path,
    device: str = "auto",
    settings: ProtocolSettings | None = None,
) -> dict[str, Any]:
    """`omnivec evaluate --protocol knn|linear|attentive`: the frozen model on every classification
    task of the fine-tuning config `cfg` (train split to fit, `split` to score); prints a table and
    writes `OUTPUT/PROTOCOL.json` (attentive: and each task's probe to `OUTPUT/attentive/TASK/`,
    whose pooler `omnivec embed --pool attentive --pooler` loads)."""
    from .reports import metrics_lines
    from .tasks import load_task_data

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: expected finetune or one of {sorted(PROTOCOLS)}, got {protocol!r}")
    settings = settings or ProtocolSettings()
    settings.validate()
    model = OmniVecModel.from_pretrained(model_dir)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    data = load_task_data(cfg, ["train", split])
    results, skipped = run_protocols(model, data, [protocol], settings, dev, split)
    metrics = results[protocol]
    if not metrics:
        raise ConfigError(
            f"{model_dir}: no task of the config can be scored by {protocol} ({'; '.join(skipped.values())})"
        )
    for task, m in metrics.items():
        if "_probe" in m:
            m.pop("_probe").save(
                output / protocol / task, model=str(model_dir), task=task, classes=data[task][0].classes
            )
    report: dict[str, Any] = {
        "model": str(model_dir),
        "protocol": protocol,
        "split": split,
        "fit_split": "train",
        "settings": asdict(settings),
        "metrics": metrics,
        "baselines": baselines({t: data[t] for t in metrics}, {t: cfg.tasks[t].head for t in metrics}, split),
        "skipped": {k.split("/", 1)[1]: why for k, why in skipped.items()},
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{protocol}.json").write_text(json.dumps(report, indent=2))
    lines = metrics_lines(metrics, report["baselines"])
    lines += [f"(skipped {task}: {why})" for task, why in report["skipped"].items()]
    main = ", ".join(f"{t} {next(iter(m))}={next(iter(m.values())):.3f}" for t, m in metrics.items())
    print("\n".join(lines) + f"\n{protocol} on {split}: {main}; written to {output / f'{protocol}.json'}")
    return report


def finetune_protocol(
    cfg: Any, task: str, init: str | Path | None, fraction: float, seed: int, run_dir: Path, steps: int
) -> float:
    """Fine-tune `init` (a saved model; None: from scratch) on `fraction` of `task`'s training
    labels (stratified, drawn by `seed`) for `steps` steps, with the fine-tuning config `cfg`'s
    settings -> the task's main metric on `cfg.eval_split`. Only the run's records stay in
    `run_dir` (the weights are removed: label-efficiency grids make a hundred of them)."""
    import dataclasses
    import shutil

    from .finetune_config import StageSpec
    from .finetuning import finetune
    from .registry import HEADS

    run_cfg = dataclasses.replace(
        cfg,
        init=str(init) if init else None,
        seed=seed,
        output_dir=str(run_dir),
        overwrite=True,
        save_every=0,
        tasks={task: dataclasses.replace(cfg.tasks[task], train_fraction=fraction)},
        stages=[StageSpec(tasks=[task], steps=steps)],
    )
    final = finetune(run_cfg)["final"][task]
    for folder in ("model", "model_ema", "stages"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    return final[HEADS.get(cfg.tasks[task].head).main_metric]
