"""recipes/pretraining_payoff.py's probes and report: k-NN and a linear probe of a frozen backbone,
fitted on the train split and scored on val (for choosing) and test (for the tables); then the
tables of payoff.md and the curves of payoff.png from the grid's records."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from omnivec.datasets import TaskData  # noqa: E402
from omnivec.evaluation import embed_split  # noqa: E402
from omnivec.metrics import classification_metrics  # noqa: E402
from omnivec.model import OmniVecModel  # noqa: E402
from omnivec.probes import Features, knn_evaluate, linear_probe  # noqa: E402
from omnivec.protocols import ProtocolSettings  # noqa: E402

CHOOSE, REPORT = "val", "test"  # the split that picks the objective, the split every table reports


def probe_backbone(
    model: OmniVecModel, data: Mapping[str, list[TaskData]], settings: ProtocolSettings, device: torch.device
) -> tuple[dict[str, dict], dict[str, float]]:
    """k-NN (single-label tasks) and a linear probe of the frozen `model` on each task, fitted on the
    train split -> ({task: {protocol: {"val": metrics, "test": metrics}}}, {task: seconds})."""
    model.to(device)
    probes, seconds = {}, {}
    for task, datasets in data.items():
        started = time.perf_counter()
        train = embed_split(model, datasets, "train", device)
        features = {
            s: Features(*train, *embed_split(model, datasets, s, device), len(datasets[0].classes))
            for s in (CHOOSE, REPORT)
        }
        result = {}
        if not features[REPORT].multi_label:
            result["knn"] = {s: knn_evaluate(f, settings.k, settings.temperature) for s, f in features.items()}
        probe = linear_probe(
            features[REPORT], settings.epochs, settings.lr, settings.weight_decay, settings.batch_size, settings.seed
        )
        with torch.no_grad():
            result["linear"] = {s: classification_metrics(probe(f.test), f) for s, f in features.items()}
        probes[task], seconds[task] = result, time.perf_counter() - started
    return probes, seconds


def main_metric(protocol: str, multi_label: bool) -> str:
    return "mAP" if multi_label and protocol == "linear" else "top1"


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def scope_of(grid: Mapping[str, Any], task: str, data: str) -> str:
    """The run's `data` for a task: "all", or (data "alone") the task's modality."""
    return "all" if data == "all" else grid["tasks"][task]["modality"]


def scores(grid: Mapping[str, Any], task: str, protocol: str, split: str, objective: str | None, data: str = "all"):
    """The final checkpoint's metric per seed of the runs of `objective` on `data` (None: the random backbones)."""
    metric = main_metric(protocol, grid["tasks"][task]["multi_label"])
    if objective is None:
        return [r["probes"][task][protocol][split][metric] for r in grid["random"]]
    runs = [r for r in grid["runs"] if r["objective"] == objective and r["data"] == scope_of(grid, task, data)]
    return [r["points"][-1]["probes"][task][protocol][split][metric] for r in runs]


def curve(grid: Mapping[str, Any], task: str, protocol: str, objective: str, data: str) -> list[tuple[float, ...]]:
    """(mean minutes, mean, sd) over the seeds at step 0 (the seed's random backbone: the run's own
    start) and at each checkpoint of the runs of `objective` on `data`, test split."""
    metric = main_metric(protocol, grid["tasks"][task]["multi_label"])
    start = {r["seed"]: r["probes"][task][protocol][REPORT][metric] for r in grid["random"]}
    runs = [r for r in grid["runs"] if r["objective"] == objective and r["data"] == scope_of(grid, task, data)]
    points = [(0.0, *mean_sd([start[r["seed"]] for r in runs]))] if runs else []
    for i in range(len(runs[0]["points"]) if runs else 0):
        minutes = statistics.fmean(r["points"][i]["seconds"] for r in runs) / 60
        points.append((minutes, *mean_sd([r["points"][i]["probes"][task][protocol][REPORT][metric] for r in runs])))
    return points


def protocols(grid: Mapping[str, Any], task: str) -> list[str]:
    return ["linear"] if grid["tasks"][task]["multi_label"] else ["knn", "linear"]


def summarize(grid: Mapping[str, Any]) -> dict[str, list[dict]]:
    """The three tables' rows: the better objective (on val) against random, per task and protocol;
    latent's time to MAE's final k-NN; all the data against the task's modality alone."""
    objectives = grid["settings"]["recipe"]["objectives"]
    vs_random, latent_vs_mae, all_vs_alone = [], [], []
    for task in grid["tasks"]:
        first = protocols(grid, task)[0]  # k-NN, or for multi-label tasks the linear probe, chooses
        chosen = max(objectives, key=lambda o: statistics.fmean(scores(grid, task, first, CHOOSE, o)))
        for p in protocols(grid, task):
            (best, best_sd), (rand, rand_sd) = (
                mean_sd(scores(grid, task, p, REPORT, chosen)),
                mean_sd(scores(grid, task, p, REPORT, None)),
            )
            margin = 2 * math.hypot(best_sd, rand_sd)
            vs_random.append(
                dict(task=task, protocol=p, objective=chosen, mean=best, sd=best_sd, random=rand, random_sd=rand_sd)
                | dict(difference=best - rand, beats=best - rand > margin)
            )
            for o in objectives:
                (a, a_sd), (b, b_sd) = (mean_sd(scores(grid, task, p, REPORT, o, d)) for d in ("all", "alone"))
                all_vs_alone.append(
                    dict(
                        task=task, protocol=p, objective=o, all=a, all_sd=a_sd, alone=b, alone_sd=b_sd, difference=a - b
                    )
                )
        if "knn" not in protocols(grid, task) or not {"mae", "latent"} <= set(objectives):
            continue
        for data in ("all", "alone"):
            mae, latent = curve(grid, task, "knn", "mae", data), curve(grid, task, "knn", "latent", data)
            reached = next((minutes for minutes, value, _ in latent if value >= mae[-1][1]), None)
            latent_vs_mae.append(
                dict(task=task, modality=grid["tasks"][task]["modality"], data=data, mae=mae[-1][1])
                | dict(mae_minutes=mae[-1][0], latent=latent[-1][1], latent_minutes=latent[-1][0], reached=reached)
                | dict(share=None if reached is None else reached / mae[-1][0])
            )
    return {"vs_random": vs_random, "latent_vs_mae": latent_vs_mae, "all_vs_alone": all_vs_alone}


def pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def report(grid: Mapping[str, Any], tables: Mapping[str, list[dict]]) -> str:
    """payoff.md: the plan as run, then the three tables."""
    rec, plan = grid["settings"]["recipe"], grid["plan"]
    everything = ", ".join(grid["settings"]["pretraining"]["data"])
    lines = [
        "# Does pretraining pay off?",
        "",
        f"{grid['settings']['pretraining']['model']} pretrained with {' and '.join(rec['objectives'])} on all its "
        f"data ({everything}) and on each task's modality alone, seeds {rec['seeds']}; "
        f"{plan['summary']}. Probes of the frozen backbone (k-NN, k={grid['settings']['probes']['k']}; "
        f"linear, {grid['settings']['probes']['epochs']} epochs) fitted on train; the objective is chosen on "
        f"{CHOOSE}, every number below is on {REPORT} (mean ± sd over seeds; random: one random backbone per "
        f"seed). {grid['minutes']:.1f} minutes on this machine.",
        "",
        "## 1. The better objective (all the data, final checkpoint) against random backbones",
        "",
        "'> 2 sd': the difference exceeds twice the sd of a difference, 2·√(sd² + sd_random²).",
        "",
        "| task | protocol | objective (on val) | pretrained | random | difference | > 2 sd |",
        "|---|---|---|---|---|---:|---|",
    ]
    for r in tables["vs_random"]:
        lines.append(
            f"| {r['task']} | {r['protocol']} | {r['objective']} | {pm(r['mean'], r['sd'])} | "
            f"{pm(r['random'], r['random_sd'])} | {r['difference']:+.3f} | {'yes' if r['beats'] else 'no'} |"
        )
    lines += [
        "",
        "## 2. Latent against MAE: when the latent runs first reach MAE's final k-NN",
        "",
        "The first checkpoint (step 0: the random backbone) whose mean k-NN is at least MAE's final mean: an upper "
        "bound, at the checkpoints' spacing.",
        "",
        "| task | modality | data | MAE final k-NN (at min) | latent reaches it at (min) | share of MAE's time "
        "| latent final k-NN (at min) |",
        "|---|---|---|---|---|---:|---|",
    ]
    for r in tables["latent_vs_mae"]:
        reached = "not reached" if r["reached"] is None else f"{r['reached']:.2f}"
        share = "-" if r["share"] is None else f"{r['share']:.2f}"
        lines.append(
            f"| {r['task']} | {r['modality']} | {r['data']} | {r['mae']:.3f} ({r['mae_minutes']:.2f}) | {reached} | "
            f"{share} | {r['latent']:.3f} ({r['latent_minutes']:.2f}) |"
        )
    lines += [
        "",
        "## 3. All the data against the task's modality alone (same steps; final checkpoint)",
        "",
        "| task | protocol | objective | all | alone | all - alone |",
        "|---|---|---|---|---|---:|",
    ]
    for r in tables["all_vs_alone"]:
        lines.append(
            f"| {r['task']} | {r['protocol']} | {r['objective']} | {pm(r['all'], r['all_sd'])} | "
            f"{pm(r['alone'], r['alone_sd'])} | {r['difference']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(grid: Mapping[str, Any], png: Path) -> None:
    """One panel per task: k-NN (linear mAP for multi-label tasks) against pretraining minutes, a line
    per objective and data (mean over seeds, sd band), the random backbones' mean dashed."""
    tasks = list(grid["tasks"])
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        protocol = protocols(grid, task)[0]
        for i, (objective, data) in enumerate(
            (o, d) for o in grid["settings"]["recipe"]["objectives"] for d in ("all", "alone")
        ):
            points = curve(grid, task, protocol, objective, data)
            x, y, sd = (torch.tensor([p[j] for p in points]) for j in range(3))
            style = "o-" if data == "all" else "s--"
            ax.plot(x, y, style, color=f"C{i // 2}", alpha=1 if data == "all" else 0.7, label=f"{objective}, {data}")
            ax.fill_between(x, y - sd, y + sd, color=f"C{i // 2}", alpha=0.15)
        ax.axhline(
            statistics.fmean(scores(grid, task, protocol, REPORT, None)), color="C7", linestyle="--", label="random"
        )
        metric = main_metric(protocol, grid["tasks"][task]["multi_label"])
        ax.set_title(f"{task} ({grid['tasks'][task]['modality']})", fontsize=10)
        ax.set_xlabel("pretraining minutes")
        ax.set_ylabel(f"{'k-NN' if protocol == 'knn' else 'linear'} {metric} ({REPORT})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
