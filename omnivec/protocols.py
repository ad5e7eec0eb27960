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
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .datasets import TaskData
from .errors import ConfigError
from .evaluation import baselines, embed_split, eval_batches, evaluating
from .metrics import mean_average_precision, topk_accuracy
from .model import OmniVecModel
from .optim import param_groups
from .parsing import join_key, require, require_positive
from .pooling import AttentiveProbe, Layers, check_pool, layers_name


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


@dataclass
class TokenFeatures:
    """Frozen backbone tokens of one task, cached once for the attentive probe: train [N, L, D] and
    test [M, L', D] (prefix tokens left out; zero-padded to the split's longest sample), their
    padding masks [N, L] / [M, L'] (True = real token; None when no sample is padded), targets and
    the class count."""

    train: torch.Tensor
    train_mask: torch.Tensor | None
    train_y: torch.Tensor
    test: torch.Tensor
    test_mask: torch.Tensor | None
    test_y: torch.Tensor
    num_classes: int

    @property
    def multi_label(self) -> bool:
        return self.train_y.ndim == 2


def task_features(
    model: OmniVecModel,
    datasets: list[TaskData],
    device: str | torch.device | None = None,
    train_split: str = "train",
    test_split: str = "test",
    batch_size: int = 64,
    pool: str = "mean",
    layers: Layers = "last",
) -> Features:
    """Embed `train_split` and `test_split` of a classification task (`datasets`) with the frozen
    model (`model.embed`'s `pool` and `layers`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    name = datasets[0].name
    train, train_y = embed_split(
        model, datasets, train_split, device, batch_size, f"embed {name} {train_split}", pool, layers
    )
    test, test_y = embed_split(
        model, datasets, test_split, device, batch_size, f"embed {name} {test_split}", pool, layers
    )
    return Features(train, train_y, test, test_y, len(datasets[0].classes))


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
    from .datasets.loaders import task_loader

    modality, n = datasets[0].modality, model.backbone.num_prefix_tokens
    parts, masks, labels = [], [], []
    with evaluating(model):
        for x, batch in eval_batches(
            task_loader(model, datasets, split, batch_size, 0, train=False), device, desc=desc
        ):
            tokens, mask = model.layer_tokens(modality, x, layers)  # [B, n + L, D]
            parts.append(tokens[:, n:].float().cpu())  # [B, L, D]
            masks.append(torch.ones(parts[-1].shape[:2], dtype=torch.bool) if mask is None else mask.cpu())
            labels.append(batch["target"])
    length = max(p.shape[1] for p in parts)
    tokens = torch.cat([F.pad(p, (0, 0, 0, length - p.shape[1])) for p in parts])  # [N, L, D]
    mask = torch.cat([F.pad(m, (0, length - m.shape[1]), value=False) for m in masks])  # [N, L]
    return tokens, None if mask.all() else mask, torch.cat(labels)


def task_tokens(
    model: OmniVecModel,
    datasets: list[TaskData],
    device: str | torch.device | None = None,
    train_split: str = "train",
    test_split: str = "test",
    batch_size: int = 64,
    layers: Layers = "last",
) -> TokenFeatures:
    """The frozen model's tokens (of `layers`) for `train_split` and `test_split` of a classification task."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    name = datasets[0].name
    train = token_split(model, datasets, train_split, device, layers, batch_size, f"tokens {name} {train_split}")
    test = token_split(model, datasets, test_split, device, layers, batch_size, f"tokens {name} {test_split}")
    return TokenFeatures(*train, *test, len(datasets[0].classes))


def classification_metrics(scores: torch.Tensor, features: Features | TokenFeatures) -> dict[str, float]:
    """scores [M, C] on the test split -> top-1 / top-5 (single-label) or mAP (multi-label)."""
    if features.multi_label:
        return {"mAP": mean_average_precision(scores, features.test_y)}
    return {"top1": topk_accuracy(scores, features.test_y, 1), "top5": topk_accuracy(scores, features.test_y, 5)}


def knn_scores(features: Features, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: each test sample's k most similar train samples (cosine) vote for their
    class with weight exp(similarity / temperature) -> class scores [M, C]."""
    k = min(k, len(features.train))
    scores = []
    for queries in features.test.split(chunk):
        sims, idx = (queries @ features.train.T).topk(k, dim=1)  # [m, k]
        votes = torch.zeros(len(queries), features.num_classes)
        scores.append(votes.scatter_add_(1, features.train_y[idx], (sims / temperature).exp()))  # [m, C]
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
        probe = nn.Sequential(
            nn.BatchNorm1d(features.train.shape[1], affine=False, eps=1e-6),
            nn.Linear(features.train.shape[1], features.num_classes),
        )
        nn.init.trunc_normal_(probe[1].weight, std=0.01)
        nn.init.zeros_(probe[1].bias)
        order = torch.Generator().manual_seed(seed)
        n = len(features.train)
        steps_per_epoch = -(-n // batch_size)
        optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
        loss_fn = F.binary_cross_entropy_with_logits if features.multi_label else F.cross_entropy
        probe.train()
        for _ in tqdm(range(epochs), desc="linear probe", leave=False):
            for idx in torch.randperm(n, generator=order).split(batch_size):
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = loss_fn(probe(features.train[idx]), features.train_y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return probe.eval()


def linear_evaluate(
    features: Features,
    epochs: int = 90,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """`linear_probe` fitted on the train features, scored on the test split."""
    probe = linear_probe(features, epochs, lr, weight_decay, batch_size, seed)
    with torch.no_grad():
        return classification_metrics(probe(features.test), features)


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
        order = torch.Generator().manual_seed(seed)
        n = len(features.train)
        optimizer = torch.optim.AdamW(param_groups(probe, weight_decay, lr), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * -(-n // batch_size))
        loss_fn = F.binary_cross_entropy_with_logits if features.multi_label else F.cross_entropy
        probe.train()
        for _ in tqdm(range(epochs), desc="attentive probe", leave=False):
            for idx in torch.randperm(n, generator=order).split(batch_size):
                mask = None if features.train_mask is None else features.train_mask[idx]
                loss = loss_fn(probe(features.train[idx], mask), features.train_y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return probe.eval()


def attentive_evaluate(
    features: TokenFeatures,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    num_heads: int = 0,
    layers: Layers = "last",
) -> dict[str, Any]:
    """`attentive_probe` fitted on the train tokens, scored on the test split; the trained probe
    comes back under "_probe" (private keys stay out of reports)."""
    probe = attentive_probe(features, epochs, lr, weight_decay, batch_size, seed, num_heads, layers)
    mask = features.test_mask
    with torch.no_grad():
        scores = torch.cat(
            [
                probe(features.test[i : i + batch_size], None if mask is None else mask[i : i + batch_size])
                for i in range(0, len(features.test), batch_size)
            ]
        )  # [M, C]
    return {**classification_metrics(scores, features), "_probe": probe}


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
    "linear": lambda f, s: linear_evaluate(f, s.epochs, s.lr, s.weight_decay, s.batch_size, s.seed),
    "attentive": lambda f, s: attentive_evaluate(
        f,
        s.attentive_epochs,
        s.attentive_lr,
        s.attentive_weight_decay,
        s.batch_size,
        s.seed,
        s.attentive_heads,
        s.layers,
    ),
}
TOKEN_PROTOCOLS = ("attentive",)  # trained on cached tokens (`task_tokens`); the others on embeddings (`task_features`)


def knn_protocol(
    model: OmniVecModel,
    datasets: list[TaskData],
    k: int = 20,
    temperature: float = 0.07,
    device: str | torch.device | None = None,
    test_split: str = "test",
) -> dict[str, float]:
    """Weighted k-NN of a frozen model on one task: {"top1", "top5"} on `test_split`."""
    return knn_evaluate(task_features(model, datasets, device, test_split=test_split), k, temperature)


def linear_protocol(
    model: OmniVecModel,
    datasets: list[TaskData],
    device: str | torch.device | None = None,
    test_split: str = "test",
    **settings: Any,
) -> dict[str, float]:
    """Linear probe of a frozen model on one task: {"top1", "top5"} (or {"mAP"}) on `test_split`;
    `settings`: `linear_probe`'s epochs, lr, weight_decay, batch_size, seed."""
    return linear_evaluate(task_features(model, datasets, device, test_split=test_split), **settings)


def attentive_protocol(
    model: OmniVecModel,
    datasets: list[TaskData],
    device: str | torch.device | None = None,
    test_split: str = "test",
    layers: Layers = "last",
    **settings: Any,
) -> dict[str, Any]:
    """Attentive probe of a frozen model on one task: {"top1", "top5"} (or {"mAP"}) on `test_split`,
    and the trained probe under "_probe"; `settings`: `attentive_probe`'s."""
    features = task_tokens(model, datasets, device, test_split=test_split, layers=layers)
    return attentive_evaluate(features, layers=layers, **settings)


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
                    task_tokens(model, datasets, device, test_split=test_split, layers=settings.layers)
                    if tokens
                    else task_features(
                        model, datasets, device, test_split=test_split, pool=settings.pool, layers=settings.layers
                    )
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
    report = {
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
