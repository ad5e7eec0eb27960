"""`omnivec data check`: read every sample of every dataset under a path and report what is wrong."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError
from .manifest import TaskData, find_tasks
from .readers import load_sample


@dataclass
class TaskReport:
    task: TaskData
    bad: list[str] = field(default_factory=list)  # "path: reason", one per unusable sample


def check_row(task: TaskData, row: dict) -> str | None:
    """None when the row's sample decodes to a usable raw sample, else the reason (naming the file)."""
    try:
        load_sample(row, task.modality, verify=True)
    except DataError as e:
        return str(e)
    return None


def check_path(path: str | Path, workers: int = 4, allow_outside_root: bool = False) -> list[TaskReport]:
    """Check every dataset under `path` (see `find_tasks`), decoding every file."""
    reports = []
    for task in find_tasks(path, allow_outside_root):
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(lambda row: check_row(task, row), task.rows)
            bad = [r for r in tqdm(results, total=len(task.rows), desc=f"check {task.name}", leave=False) if r]
        reports.append(TaskReport(task, bad))
    return reports


def format_report(reports: list[TaskReport]) -> str:
    """A per-task summary: modality, target, samples per split and class, then the bad files."""
    lines = []
    for report in reports:
        task = report.task
        target = f", {task.target}" if task.target else ""
        classes = f", {len(task.classes)} classes" if task.classes else ""
        lines.append(f"{task.name} ({task.modality}{target}{classes}): {task.source}")
        for split, (n, counter) in sorted(task.counts().items()):
            per_class = " ".join(f"{c}:{k}" for c, k in sorted(counter.items()))
            lines.append(f"  {split:<6}{n:>6}  {per_class}".rstrip())
        lines += [f"  BAD {line}" for line in report.bad]
    total = sum(len(r.task.rows) for r in reports)
    bad = sum(len(r.bad) for r in reports)
    lines.append(f"{len(reports)} datasets, {total} samples, {bad} bad")
    return "\n".join(lines)
