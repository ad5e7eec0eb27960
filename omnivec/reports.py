"""Markdown tables shared by fine-tuning (eval.md), `omnivec evaluate` and the demo report."""
from __future__ import annotations

from typing import Any, Mapping


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
    return [(task, key, value) for task, metrics in final.items() for key, value in metrics.items()
            if isinstance(value, float) and key != "samples"]


def metrics_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: Mapping[str, Any]) -> list[str]:
    """| task | metric | one column per run | baseline |, for `runs`: {column: {task: {metric: value}}}."""
    lines = ["| task | metric | " + " | ".join(runs) + " | baseline |", "|---" * (len(runs) + 3) + "|"]
    for task, key, _ in metric_rows(next(iter(runs.values()))):
        lines.append(f"| {task} | {key} | " + " | ".join(f"{run[task][key]:.3f}" for run in runs.values())
                     + f" | {baseline_text(baselines.get(task, {}), key)} |")
    return lines


def metrics_lines(metrics: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Any]) -> list[str]:
    """A plain-text table for the terminal: task, metric, value, baseline."""
    lines = [f"{'task':<18} {'metric':<8} {'value':>7}  baseline"]
    lines += [f"{task:<18} {key:<8} {value:>7.3f}  {baseline_text(baselines.get(task, {}), key)}"
              for task, key, value in metric_rows(metrics)]
    return lines


def forgetting_matrix_table(matrix: Mapping[str, Any]) -> list[str]:
    """Row: after stage i; column: each task's main metric; blank before the task is trained."""
    lines = ["| after stage | " + " | ".join(f"{t} ({matrix['metric'][t]})" for t in matrix["tasks"]) + " |",
             "|---" * (len(matrix["tasks"]) + 1) + "|"]
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
    lines = [f"Metrics on the {report['split']} split (init: {report['init'] or 'scratch'}), "
             f"{report['seconds']:.0f}s", "", *metrics_table({"value": report["final"]}, report["baselines"]), "",
             "Forgetting matrix (row: after stage i; column: task, its main metric):", "",
             *forgetting_matrix_table(report["forgetting_matrix"])]
    if report.get("retrieval"):
        lines += ["", "Cross-modal retrieval (queries of one task, neighbours among the other's samples):", "",
                  *retrieval_table(report["retrieval"], "query -> neighbours")]
    return "\n".join(lines) + "\n"
