"""`omnivec data check`: read every sample of every dataset under a path and report what is wrong."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError
from .readers import load_sample
from .records import TaskData, count_row
from .sources import find_tasks


@dataclass
class TaskReport:
    task: TaskData
    bad: list[str] = field(default_factory=list)  # "path: reason", one per unusable sample
    counts: dict[str, tuple[int, Counter]] | None = None  # streamed datasets: counted while reading

    def samples(self) -> dict[str, tuple[int, Counter]]:
        return self.counts if self.counts is not None else self.task.counts()


def check_row(task: TaskData, row: dict) -> str | None:
    """None when the row's sample decodes to a usable raw sample, else the reason (naming the file)."""
    if "error" in row:  # a shard's sample that could not be read
        return row["error"]
    try:
        load_sample(row, task.modality, verify=True)
    except DataError as e:
        return str(e)
    return None


def check_path(path: str | Path, workers: int = 4, allow_outside_root: bool = False) -> list[TaskReport]:
    """Check every dataset under `path` (see `find_tasks`), decoding every file (every shard
    member, for a streamed dataset)."""
    reports = []
    for task in find_tasks(path, allow_outside_root):
        if task.stream is not None:
            reports.append(check_stream(task, workers))
            continue
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(check_row, [task] * len(task.rows), task.rows)
            bad = [r for r in tqdm(results, total=len(task.rows), desc=f"check {task.name}", leave=False) if r]
        reports.append(TaskReport(task, bad))
    return reports


def check_stream(task: TaskData, workers: int = 4) -> TaskReport:
    """Read every shard of a streamed dataset in order, decoding every sample; a shard that cannot
    be read is reported (with the samples read before its end) and the next one checked."""
    counts: dict[str, tuple[int, Counter]] = {}
    report = TaskReport(task, counts=counts)
    bad_shards: list[str] = []

    def rows() -> Iterator[dict]:
        for shard in task.stream.shards:
            n, error = 0, None
            try:
                for _, row in shard.read():
                    n += 1
                    yield row
            except DataError as e:
                error = str(e)
            problem = shard.shortfall(n, error)
            if problem:
                bad_shards.append(problem)

    def count(row: dict) -> dict:
        count_row(counts, row, task.target_kind)
        return row

    total = task.stream.count(None)
    with ThreadPoolExecutor(workers) as pool:
        results = bounded_map(pool, lambda row: check_row(task, row), map(count, rows()), 4 * workers)
        report.bad = [r for r in tqdm(results, total=total, desc=f"check {task.name}", leave=False) if r]
    report.bad += bad_shards
    return report


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int) -> Iterator[Any]:
    """`pool.map(fn, items)` in order, with at most `window` items in flight (`Executor.map` takes
    every item up front: a stream of shards would be held in memory at once)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def format_report(reports: list[TaskReport]) -> str:
    """A per-task summary: modality, target, samples per split and class, then the bad files."""
    lines = []
    for report in reports:
        task = report.task
        target = f", {task.target}" if task.target else ""
        classes = f", {len(task.classes)} classes" if task.classes else ""
        lines.append(f"{task.name} ({task.modality}{target}{classes}): {task.source}")
        for split, (n, counter) in sorted(report.samples().items()):
            per_class = " ".join(f"{c}:{k}" for c, k in sorted(counter.items()))
            lines.append(f"  {split:<6}{n:>6}  {per_class}".rstrip())
        lines += [f"  BAD {line}" for line in report.bad]
    total = sum(n for r in reports for n, _ in r.samples().values())
    bad = sum(len(r.bad) for r in reports)
    lines.append(f"{len(reports)} datasets, {total} samples, {bad} bad")
    return "\n".join(lines)
