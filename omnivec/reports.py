"""Markdown tables shared by fine-tuning (eval.md), `omnivec evaluate`, the demo report and the
label-efficiency recipe."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def baseline_text(baseline: Mapping[str, Any], key: str) -> str:
    """A task's baseline for metric `key`: "0.100 (chance)", "0.222 (lead-1)" or ""."""
    if f"chance_{key}" in baseline:
        return f"{baseline[f'chance_{key}']:.3f} (chance)"
    for name, values in baseline.items():
        if isinstance(values, Mapping) and key in values:
            return f"{values[key]:.3f} ({name})"
    return ""


def metric_rows(final: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    """(task, metric, value) for every numeric metric of every task (sample counts left out)."""
    return [
        (task, key, value)
        for task, metrics in final.items()
        for key, value in metrics.items()
        if isinstance(value, float) and key != "samples"
    ]


def metrics_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: Mapping[str, Any]) -> list[str]:
    """| task | metric | one column per run | baseline |, for `runs`: {column: {task: {metric: value}}}."""
    lines = ["| task | metric | " + " | ".join(runs) + " | baseline |", "|---" * (len(runs) + 3) + "|"]
    for task, key, _ in metric_rows(next(iter(runs.values()))):
        lines.append(
            f"| {task} | {key} | "
            + " | ".join(f"{run[task][key]:.3f}" for run in runs.values())
            + f" | {baseline_text(baselines.get(task, {}), key)} |"
        )
    return lines


def metrics_lines(metrics: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Any]) -> list[str]:
    """A plain-text table for the terminal: task, metric, value, baseline."""
    lines = [f"{'task':<18} {'metric':<8} {'value':>7}  baseline"]
    lines += [
        f"{task:<18} {key:<8} {value:>7.3f}  {baseline_text(baselines.get(task, {}), key)}"
        for task, key, value in metric_rows(metrics)
    ]
    return lines


def forgetting_matrix_table(matrix: Mapping[str, Any]) -> list[str]:
    """Row: after stage i; column: each task's main metric; blank before the task is trained."""
    lines = [
        "| after stage | " + " | ".join(f"{t} ({matrix['metric'][t]})" for t in matrix["tasks"]) + " |",
        "|---" * (len(matrix["tasks"]) + 1) + "|",
    ]
    for i, row in enumerate(matrix["rows"], 1):
        lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
    return lines


def retrieval_table(rows: Mapping[str, Mapping[str, float]], what: str, k: int = 5) -> list[str]:
    """| WHAT | precision@k | chance | for {name: precision_at_k result}."""
    lines = [f"| {what} | precision@{k} | chance |", "|---|---|---|"]
    return lines + [f"| {name} | {r[f'precision@{k}']:.3f} | {r['chance']:.3f} |" for name, r in rows.items()]


def format_report(report: Mapping[str, Any]) -> str:
    """eval.md: the final metrics per task beside their baselines, then the forgetting matrix
    (and cross-modal retrieval when a stage aligned tasks)."""
    lines = [
        f"Metrics on the {report['split']} split (init: {report['init'] or 'scratch'}), {report['seconds']:.0f}s",
        "",
        *metrics_table({"value": report["final"]}, report["baselines"]),
        "",
        "Forgetting matrix (row: after stage i; column: task, its main metric):",
        "",
        *forgetting_matrix_table(report["forgetting_matrix"]),
    ]
    if report.get("retrieval"):
        lines += [
            "",
            "Cross-modal retrieval (queries of one task, neighbours among the other's samples):",
            "",
            *retrieval_table(report["retrieval"], "query -> neighbours"),
        ]
    return "\n".join(lines) + "\n"


def summarize_runs(records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records {task, protocol, init, fraction, seed, metric, value} -> one cell per (task, protocol,
    init, fraction, metric): mean, sample standard deviation (0 for one run) and run count."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["task"], r["protocol"], r["init"], r["fraction"], r["metric"]), []).append(r["value"])
    return [
        {
            "task": t,
            "protocol": p,
            "init": i,
            "fraction": f,
            "metric": m,
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for (t, p, i, f, m), v in groups.items()
    ]


def cell_lookup(summary: Sequence[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    """{(task, protocol, init, fraction, metric): cell} for a `summarize_runs` result."""
    return {(c["task"], c["protocol"], c["init"], c["fraction"], c["metric"]): c for c in summary}


def cell_text(cells: Mapping[tuple, Mapping[str, Any]], key: tuple) -> str:
    """A summary cell as "mean ± std" ("" when it was not run)."""
    c = cells.get(key)
    return f"{c['mean']:.3f} ± {c['std']:.3f}" if c else ""


def finetune_comparison_table(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """Fine-tuning from the pretrained backbone vs from scratch per task and label fraction (mean ±
    standard deviation over seeds, their difference, whether it exceeds twice the larger standard
    deviation), and the target-modality-only backbone where it was run."""
    cells = cell_lookup(summary)

    lines = [
        "| task | metric | labels | pretrained | scratch | pretrained - scratch | > 2 sd | target only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(c["task"] for c in summary):
        for c in sorted(
            (c for c in summary if c["task"] == task and c["protocol"] == "finetune" and c["init"] == "pretrained"),
            key=lambda c: c["fraction"],
        ):
            f, m = c["fraction"], c["metric"]
            scratch = cells.get((task, "finetune", "scratch", f, m))
            gap = (c["mean"] - scratch["mean"]) if scratch else None
            beats = "yes" if scratch and gap > 2 * max(c["std"], scratch["std"]) else "no"
            lines.append(
                f"| {task} | {m} | {f:.0%} | {cell_text(cells, (task, 'finetune', 'pretrained', f, m))} | "
                f"{cell_text(cells, (task, 'finetune', 'scratch', f, m))} | {'' if gap is None else f'{gap:+.3f}'} | "
                f"{beats if scratch else ''} | {cell_text(cells, (task, 'finetune', 'target_only', f, m))} |"
            )
    return lines


def label_efficiency_report(summary: list[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """label_efficiency.md: fine-tuning pretrained vs scratch per fraction of the training labels
    (and target-modality-only pretraining), then k-NN / linear probes of the frozen backbones."""
    cells = cell_lookup(summary)

    tasks = list(dict.fromkeys(c["task"] for c in summary))
    seeds = len(meta["seeds"])
    lines = [
        f"# Label efficiency{' (quick: a smoke-test budget, numbers mean nothing)' if meta.get('quick') else ''}",
        "",
        f"Pretrained backbone: {meta['pretrained']} ({meta['pretrain_steps']} pretraining steps); {seeds} seeds; "
        f"{meta['minutes']} minutes. Test split; mean ± sample standard deviation over the seeds."
        + (
            f" Fine-tuning steps per run: {', '.join(f'{t} {n}' for t, n in meta['steps'].items())}."
            if meta.get("steps")
            else ""
        )
        + "".join(
            f" {what.capitalize()} overrides: `{' '.join(keys)}`."
            for what, keys in meta.get("overrides", {}).items()
            if keys
        ),
        "",
        "## Fine-tuning: pretrained backbone vs scratch",
        "",
        "Each seed draws its own stratified subsample of the training labels and its own head initialisation. "
        "*target only*: the backbone pretrained for the same steps on the task's modality alone (at the smallest "
        "fraction). *> 2 sd*: pretrained minus scratch exceeds twice the larger standard deviation.",
        "",
        *finetune_comparison_table(summary),
    ]
    lines += [
        "",
        "## Frozen backbones: k-NN and linear probe",
        "",
        "Fitted on all the training labels: weighted k-NN (k=20, temperature 0.07, DINO) and a linear probe "
        "(BatchNorm + linear, SGD, MAE) on the L2-normalised embeddings. *random*: a randomly initialised "
        "backbone, one per seed; a pretrained backbone is one model, so its k-NN spread is 0 and its linear "
        "probe's comes from the probe's seed. k-NN has no multi-label variant.",
        "",
        "| task | metric | k-NN pretrained | k-NN target only | k-NN random | linear pretrained | linear target only "
        "| linear random |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        metric = next(
            (
                c["metric"]
                for c in summary
                if c["task"] == task and c["protocol"] == "linear" and c["metric"] in ("top1", "mAP")
            ),
            None,
        )
        if metric:
            lines.append(
                f"| {task} | {metric} | "
                + " | ".join(
                    cell_text(cells, (task, p, i, 1.0, metric))
                    for p in ("knn", "linear")
                    for i in ("pretrained", "target_only", "random")
                )
                + " |"
            )
    return "\n".join(lines) + "\n"
