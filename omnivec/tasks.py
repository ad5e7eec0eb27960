"""Each fine-tuning task's data: read, relabelled, subsampled and checked against its head (one
modality, one label space, the target its head learns, the splits it needs) before anything trains."""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .config import HeadConfig
from .datasets import TaskData
from .datasets.dataset import check_files_exist
from .datasets.records import relabel_row
from .datasets.sources import find_all_tasks
from .errors import ConfigError
from .finetune_config import FinetuneConfig, TaskSpec
from .registry import HEADS
from .targets import single_label


def warn_unseen_classes(task: str, datasets: list[TaskData], split: str) -> None:
    """Warn when `split` holds classes no training row has: the head never learns them, yet they are scored."""
    seen: set[str] = set()
    scored: set[str] = set()
    for d in datasets:
        counts = d.counts() if d.stream is None else {}
        seen |= set(counts.get("train", (0, {}))[1])
        scored |= set(counts.get(split, (0, {}))[1])
    if scored - seen:
        unseen = sorted(scored - seen)
        warnings.warn(
            f"tasks.{task}: the {split!r} split holds {len(unseen)} class(es) no 'train' row has "
            f"({', '.join(unseen[:5])}{', ...' if len(unseen) > 5 else ''}); they are scored but never learned",
            stacklevel=2,
        )


def load_task_data(cfg: FinetuneConfig, splits: Sequence[str] | None = None) -> dict[str, list[TaskData]]:
    """Every task's datasets, checked: one modality per task, the same classes across its datasets,
    the target column its head learns, and rows in each of `splits` (default: train and eval_split)."""
    out, checked = {}, list(dict.fromkeys(splits or ("train", cfg.eval_split)))
    for name, spec in cfg.tasks.items():
        datasets = [
            subsample_train(relabel(t, spec.label_map, f"tasks.{name}.label_map"), spec.train_fraction, cfg.seed)
            for t in find_all_tasks(spec.data, key=f"tasks.{name}.data")
        ]
        if len({(t.modality, tuple(t.classes), t.target) for t in datasets}) > 1:
            raise ConfigError(f"tasks.{name}.data: the datasets differ in modality, classes or target")
        for split in checked:  # fail now, not after training
            if not any(d.has_split(split) for d in datasets):
                raise ConfigError(
                    f"tasks.{name}.data: no {split!r} rows in {', '.join(str(d.source) for d in datasets)}"
                )
            if split != "train" or not cfg.skip_bad:  # evaluation reads every row: skip_bad is for training
                rows = [r for d in datasets if d.stream is None for r in d.split(split)]
                check_files_exist(rows, split, f"tasks.{name}.data", skippable=split == "train")
        for split in checked[1:] if checked[0] == "train" else []:  # scored against what train taught
            warn_unseen_classes(name, datasets, split)
        wanted = HEADS.get(spec.head).target.column
        if datasets[0].target != wanted:
            raise ConfigError(
                f"tasks.{name}.data: a {spec.head} head learns the {wanted!r} column, "
                f"{datasets[0].source} has {datasets[0].target or 'no target'!r}"
            )
        out[name] = datasets
    for i, stage in enumerate(cfg.stages):
        mixed = [
            t for t in stage.align if out[t][0].modality in cfg.augment and cfg.augment[out[t][0].modality].batch_mix()
        ]
        if mixed:
            modality = out[mixed[0]][0].modality
            raise ConfigError(
                f"stages.{i}.align: task {mixed[0]!r} would be mixed (augment.{modality}: mixup / "
                "cutmix), and the alignment loss pairs samples by class: set them to 0"
            )
        spaces = {tuple(out[t][0].classes) for t in stage.align}
        if (
            len(spaces) > 1
            or not all(spaces)
            or any(not single_label(HEADS.get(cfg.tasks[t].head).target) for t in stage.align)
        ):
            raise ConfigError(
                f"stages.{i}.align: expected classification tasks with one label space (use "
                f"tasks.NAME.label_map), got { ({t: out[t][0].classes[:5] for t in stage.align}) }"
            )
    return out


def relabel(task: TaskData, label_map: Mapping[str, str], key: str) -> TaskData:
    """`task` with its labels renamed by `label_map` (every map key must be one of its labels)."""
    if not label_map:
        return task
    unknown = sorted(set(label_map) - set(task.classes))
    if unknown:
        raise ConfigError(f"{key}: {unknown[0]!r} is not a label of {task.source} ({', '.join(task.classes[:12])})")

    classes = sorted({label_map.get(c, c) for c in task.classes})
    stream = task.stream.relabel(label_map) if task.stream is not None else None
    return dataclasses.replace(
        task, rows=[relabel_row(r, label_map) for r in task.rows], classes=classes, stream=stream
    )


def subsample_train(task: TaskData, fraction: float, seed: int) -> TaskData:
    """`task` with a `fraction` of its train rows, stratified by class (by the first label of a
    multi-label row; at least one row per class) and drawn by `seed`; the other splits whole."""
    if fraction >= 1:
        return task
    if task.stream is not None:
        raise ConfigError(
            f"train_fraction: {task.source} is streamed (shards or hf:), which cannot be subsampled "
            "by class here; write a subsample with omnivec data shard from a manifest instead"
        )
    kind = task.target_kind
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(task.rows):
        if row.get("split") == "train":
            classes = kind.classes(row[kind.column]) if kind is not None and kind.column in row else []
            by_class.setdefault(min(classes or [""]), []).append(i)
    rng = random.Random(seed)
    keep = {i for c in sorted(by_class) for i in rng.sample(by_class[c], max(1, round(len(by_class[c]) * fraction)))}
    return dataclasses.replace(
        task, rows=[r for i, r in enumerate(task.rows) if r.get("split") != "train" or i in keep]
    )


def head_config(
    name: str, spec: TaskSpec, data: list[TaskData], model_config: Any, label_smoothing: float = 0.0
) -> HeadConfig:
    """The head config of task `name`, completed by its head from the data (classes) and the model;
    a head that takes soft targets gets `label_smoothing` unless its `head_args` set it."""
    head = HEADS.get(spec.head)
    args = {"label_smoothing": label_smoothing, **spec.head_args} if head.soft_targets else spec.head_args
    return head.config_from_data(name, args, data[0].modality, data[0].classes, model_config)
