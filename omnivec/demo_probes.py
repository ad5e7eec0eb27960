"""The demo's frozen-probe evidence (issue 26): weighted k-NN and a linear probe (omnivec/protocols.py)
of the demo's pretrained backbone, before any fine-tuning, against randomly initialised backbones of
the same architecture, on every classification task; fitted on the train split, scored on the test split."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from .model import OmniVecModel
from .protocols import ProtocolSettings, run_protocols
from .registry import HEADS
from .tasks import load_task_data

RANDOM_SEEDS = (0, 1, 2)  # the random backbones' seeds, fixed before looking at any result
SPLIT = "test"
PROBES = ["knn", "linear"]


def probe_row(task: str, modality: str, pretrained: dict[str, dict], randoms: list[dict[str, dict]]) -> dict[str, Any]:
    """One task's row: per probe, the pretrained backbone's main metric (top1, or mAP for a multi-label
    task) beside the random backbones' values, mean and sample standard deviation; `knn_gap` (pretrained
    minus the random mean) and `above_2sd` (the gap exceeds twice that standard deviation), None
    where the task has no k-NN result."""
    row: dict[str, Any] = {"task": task, "modality": modality}
    for probe in PROBES:
        if probe not in pretrained:
            continue
        metric = "top1" if "top1" in pretrained[probe] else "mAP"
        values = [r[probe][metric] for r in randoms]
        row[probe] = {
            "metric": metric,
            "pretrained": pretrained[probe][metric],
            "random": values,
            "random_mean": statistics.fmean(values),
            "random_sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    knn = row.get("knn")
    row["knn_gap"] = knn["pretrained"] - knn["random_mean"] if knn else None
    row["above_2sd"] = row["knn_gap"] > 2 * knn["random_sd"] if knn else None
    return row


def modalities_above(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """{modality: whether the pretrained k-NN is above random by > 2 sd on every task of that modality
    that has a k-NN result}; modalities without one are left out."""
    verdicts: dict[str, bool] = {}
    for r in rows:
        if r["above_2sd"] is not None:
            verdicts[r["modality"]] = verdicts.get(r["modality"], True) and r["above_2sd"]
    return verdicts


def probe_backbones(
    pretrained: Path,
    cfg: Any,
    out: Path,
    settings: ProtocolSettings,
    device: str | torch.device | None = None,
    seeds: tuple[int, ...] = RANDOM_SEEDS,
    split: str = SPLIT,
    random_cache: dict[tuple[int, str], dict] | None = None,
) -> dict[str, Any]:
    """k-NN and a linear probe of the saved model `pretrained` and of one randomly initialised twin
    per seed (its config, built after `torch.manual_seed(seed)`) on every classification task of the
    fine-tuning config `cfg`, fitted on train and scored on `split` (a screen: val) -> the record
    written to `out` (JSON). The global RNG is left as it was. `random_cache` ({(seed, context):
    results}, context: the architecture, the tasks' data, `settings`, `split` and `device`) is filled
    and reused across calls, so a random twin probed once under the same context is not probed again."""
    with torch.random.fork_rng(devices=[]):  # the demo's later stages see the global RNG as it was
        data = {
            task: datasets
            for task, datasets in load_task_data(cfg, ["train", split]).items()
            if HEADS.get(cfg.tasks[task].head).target.has_classes
        }
        model = OmniVecModel.from_pretrained(pretrained)
        results, skipped = run_protocols(model, data, PROBES, dataclasses.replace(settings, seed=0), device, split)
        cache = {} if random_cache is None else random_cache
        sources = {task: [str(d.source) for d in datasets] for task, datasets in data.items()}
        context = repr((model.config, sources, settings, split, str(device)))
        for seed in seeds:
            if (seed, context) not in cache:
                torch.manual_seed(seed)
                random = OmniVecModel(model.config)
                cache[seed, context] = run_protocols(
                    random, data, PROBES, dataclasses.replace(settings, seed=seed), device, split
                )[0]
        randoms = [cache[seed, context] for seed in seeds]
    rows = [
        probe_row(
            task,
            datasets[0].modality,
            {p: results[p][task] for p in PROBES if task in results[p]},
            [{p: r[p][task] for p in PROBES if task in r[p]} for r in randoms],
        )
        for task, datasets in data.items()
    ]
    record = {
        "pretrained": str(pretrained),
        "fit_split": "train",
        "split": split,
        "random_seeds": list(seeds),
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "modalities_above": modalities_above(rows),
        "skipped": skipped,
    }
    out.write_text(json.dumps(record, indent=2))
    return record
