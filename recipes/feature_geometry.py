"""Why does a random backbone's k-NN rival a pretrained one's? The geometry of one classification
task's frozen features (mean-pooled and L2-normalised, as the probes embed them), per backbone:

  - weighted k-NN top-1 (the probes' protocol, fitted on train) on val and on test, and again after
    centring (SimpleShot's CL2N: the train mean subtracted, then L2-normalised);
  - how anisotropic the train features are: the top 5 principal components' share of their
    variance, and the effective rank (exp of the entropy of the variance spectrum);
  - each train sample's nearest other train sample: the share of the same class, and of the same
    `--group` (a manifest column such as the voice) when given.

    python recipes/feature_geometry.py --task spoken_digits --group voice --random 0 1 2 \\
        --models runs/demo/pretrain/model --output runs/geometry

Writes OUTPUT/geometry.md and geometry.json. Run from the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from omnivec.datasets import TaskData
from omnivec.errors import ConfigError, exit_status
from omnivec.evaluation import embed_split
from omnivec.finetune_config import FinetuneConfig
from omnivec.metrics import precision_at_k
from omnivec.model import OmniVecModel
from omnivec.parsing import require
from omnivec.probes import Features, FrozenPass, knn_evaluate, task_features
from omnivec.protocols import unsupported
from omnivec.recipe_config import load_recipe_config
from omnivec.tasks import load_task_data
from omnivec.variants import load_model, model_config


def centred(f: Features) -> Features:
    """CL2N: train and test features minus the train mean, L2-normalised again."""
    mean = f.train.mean(0, keepdim=True)  # [1, D]
    train, test = F.normalize(f.train - mean, dim=1), F.normalize(f.test - mean, dim=1)
    return Features(train, f.train_y, test, f.test_y, f.num_classes)


def spectrum(train: torch.Tensor) -> dict[str, float]:
    """Train features [N, D] -> the top 5 principal components' share of the variance and the effective rank."""
    var = torch.linalg.svdvals(train - train.mean(0)) ** 2  # [min(N, D)]
    p = var / var.sum()
    return {"top5_share": float(p[:5].sum()), "effective_rank": float(torch.exp(-(p * torch.log(p + 1e-12)).sum()))}


def nearest_same(train: torch.Tensor, labels: list) -> float:
    """The share of train samples [N, D] whose nearest other sample (cosine) has the same label."""
    index = {v: i for i, v in enumerate(dict.fromkeys(labels))}  # label -> class id, built once
    ids = torch.tensor([index[v] for v in labels])  # [N]
    return precision_at_k(train @ train.T, ids, ids, k=1, same_set=True)["precision@1"]


def manifest_column(rows: list[dict[str, Any]], column: str) -> list[Any]:
    """Each row's `column` in the manifest line it was read from (a row keeps only its sample,
    split and target; its `where` is "MANIFEST:LINE")."""
    manifests: dict[str, list[str]] = {}
    values = []
    for row in rows:
        path, _, line = str(row["where"]).rpartition(":")
        if not path.endswith(".jsonl") or not line.isdigit():
            raise ConfigError(f"--group: {row['where']} is not a line of a JSONL manifest")
        record = json.loads(manifests.setdefault(path, Path(path).read_text().splitlines())[int(line) - 1])
        if column not in record:
            raise ConfigError(f"--group: {row['where']} has no column {column!r}; expected one of {sorted(record)}")
        values.append(record[column])
    return values


def random_backbone(config: Any, seed: int) -> OmniVecModel:
    """A randomly initialised backbone of `config`, drawn as the demo draws its random twins."""
    torch.manual_seed(seed)
    return OmniVecModel(config)


def geometry(model: OmniVecModel, datasets: list[TaskData], group: tuple[str, list[Any]] | None) -> dict[str, float]:
    """Every measure of the module docstring for one backbone (`group`: a column's name and its
    value for each train sample)."""
    out: dict[str, float] = {}
    f = task_features(model, datasets, FrozenPass(device="cpu", test_split="val"))  # train embedded once
    test_x, test_y = embed_split(model, datasets, "test", torch.device("cpu"))  # [M, D], [M]
    test = dataclasses.replace(f, test=test_x, test_y=test_y)
    for split, features in (("val", f), ("test", test)):
        out[f"knn_{split}"] = knn_evaluate(features)["top1"]
        out[f"knn_centred_{split}"] = knn_evaluate(centred(features))["top1"]
    out |= spectrum(f.train)
    out["nearest_same_class"] = nearest_same(f.train, f.train_y.tolist())
    if group:
        out[f"nearest_same_{group[0]}"] = nearest_same(f.train, group[1])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="spoken_digits", help="a single-label classification task of --finetune-config")
    p.add_argument("--models", nargs="*", default=[], help="saved model folders to measure")
    p.add_argument("--random", nargs="*", type=int, default=[0, 1, 2], help="seeds of random backbones to measure")
    p.add_argument("--group", help="a manifest column to check nearest neighbours against (e.g. voice)")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml", help="the task's data")
    p.add_argument("--output", default="runs/geometry")
    args = p.parse_args(argv)
    require(args.models or args.random, "--models / --random", "at least one backbone", [])
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    ft = load_recipe_config(FinetuneConfig, args.finetune_config, ["device=cpu"])
    require(args.task in ft.tasks, "--task", f"a task of {args.finetune_config} ({', '.join(ft.tasks)})", args.task)
    ft.tasks = {args.task: ft.tasks[args.task]}
    datasets = load_task_data(ft, ["train", "val", "test"])[args.task]
    rows = [row for d in datasets for row in d.split("train")]  # the order the eval loader embeds them in
    group = (args.group, manifest_column(rows, args.group)) if args.group else None  # before any work
    models = {m: load_model(m, ft.model) for m in args.models}
    config = next(iter(models.values())).config if models else model_config(ft.model, **(ft.model_overrides or {}))
    backbones: dict[str, Callable[[], OmniVecModel]] = {
        f"random, seed {s}": partial(random_backbone, config, s) for s in args.random
    }
    backbones |= {name: (lambda m=model: m) for name, model in models.items()}
    results = {}
    for name, build in backbones.items():
        model = build()
        why = unsupported(model, "knn", datasets)
        if why:
            raise ConfigError(f"--task {args.task}: {why}")
        results[name] = geometry(model, datasets, group)
        print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "geometry.json").write_text(json.dumps(results, indent=2))
    columns = list(next(iter(results.values())))
    lines = [f"# Feature geometry on {args.task}", "", "| backbone | " + " | ".join(columns) + " |"]
    lines += ["|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |" for name, r in results.items()]
    (out / "geometry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
