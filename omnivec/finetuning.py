"""Sequential fine-tuning: a list of stages, each training some tasks' heads (and, unless frozen,
the shared backbone and encoders); after every stage every task trained so far is evaluated (the
forgetting matrix) and a checkpoint is saved. `evaluate_tasks` also backs `omnivec evaluate`."""
from __future__ import annotations

import dataclasses
import gc
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn
from tqdm.auto import tqdm

from .config import join_key, require, require_positive
from .datasets import TaskData, find_tasks
from .datasets.loaders import task_loader
from .datasets.sampler import MultiModalLoader
from .errors import ConfigError, DataError
from .heads import masked_mean
from .model import OmniVecModel, model_config
from .registry import HEADS
from .training import TrainConfig, Trainer, to_device

FREEZABLE = ("backbone", "encoders")


@dataclass
class TaskSpec:
    """One task: its head type, its datasets (the modality and classes come from the data) and
    any extra head settings (`dropout`, `num_beams`, ...)."""

    head: str = "classification"
    data: list[str] = field(default_factory=list)
    head_args: dict = field(default_factory=dict)
    batch_size: int | None = None  # None: the config's batch_size
    label_map: dict[str, str] = field(default_factory=dict)  # rename labels (e.g. zero: "0") to share a label space

    def validate(self, prefix: str) -> None:
        require(self.head in HEADS, join_key(prefix, "head"), f"one of {HEADS.names()}", self.head)
        require_positive(self, prefix, "batch_size")
        require(bool(self.data), join_key(prefix, "data"), "at least one dataset path", self.data)


@dataclass
class StageSpec:
    """One stage: the tasks trained together, for how long, how fast, and what stays frozen."""

    tasks: list[str] = field(default_factory=list)
    steps: int = 100
    lr: float | None = None  # None: the config's lr
    freeze: list[str] = field(default_factory=list)  # any of: backbone, encoders
    replay: list[str] = field(default_factory=list)  # earlier tasks rehearsed: one of them joins every step
    # Tasks of other modalities with one label space whose embeddings are pulled together by class
    # (a cross-modal supervised contrastive loss): retrieval across those modalities then works.
    align: list[str] = field(default_factory=list)
    align_weight: float = 1.0
    align_temperature: float = 0.1

    def validate(self, prefix: str) -> None:
        require(bool(self.tasks), join_key(prefix, "tasks"), "at least one task name", self.tasks)
        require_positive(self, prefix, "steps", "lr", "align_temperature")
        require(self.align_weight >= 0, join_key(prefix, "align_weight"), "a number >= 0 (0: measure only)",
                self.align_weight)
        require(not self.align or (len(self.align) >= 2 and set(self.align) <= set(self.tasks)),
                join_key(prefix, "align"), "two or more of this stage's tasks", self.align)
        bad = [f for f in self.freeze if f not in FREEZABLE]
        require(not bad, join_key(prefix, "freeze"), f"a list of {list(FREEZABLE)}", self.freeze)
        require(not set(self.replay) & set(self.tasks), join_key(prefix, "replay"),
                "earlier tasks, not this stage's own", self.replay)


@dataclass
class FinetuneConfig(TrainConfig):
    """`omnivec finetune CONFIG key=value ...`."""

    init: str | None = None  # a saved model folder (pretrained), or none: `model` from scratch
    model: str = "omnivec_tiny"
    model_overrides: dict = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    stages: list[StageSpec] = field(default_factory=list)
    schedule: str = "all"  # how the tasks of one stage share steps: all | round_robin | weighted
    backbone_lr_scale: float = 1.0  # learning rate of the encoders and backbone relative to the heads'
    eval_split: str = "test"
    eval_batch_size: int = 64
    eval_max_batches: int = 0  # per task; 0: the whole split (a quick look evaluates a few batches)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require(bool(self.stages), join_key(prefix, "stages"), "at least one stage", self.stages)
        require_positive(self, prefix, "backbone_lr_scale", "eval_batch_size")
        require(self.eval_max_batches >= 0, join_key(prefix, "eval_max_batches"), "an int >= 0", self.eval_max_batches)
        earlier: set[str] = set()
        for i, stage in enumerate(self.stages):
            for task in stage.tasks:
                require(task in self.tasks, join_key(prefix, f"stages[{i}].tasks"),
                        f"names from tasks {sorted(self.tasks)}", task)
            for task in stage.replay:
                require(task in earlier, join_key(prefix, f"stages[{i}].replay"),
                        f"tasks of earlier stages {sorted(earlier)}", task)
            earlier.update(stage.tasks)
        require(self.schedule in ("all", "round_robin", "weighted"), join_key(prefix, "schedule"),
                "all, round_robin or weighted", self.schedule)
        require(self.eval_split in ("train", "val", "test"), join_key(prefix, "eval_split"), "train, val or test",
                self.eval_split)


class FinetuneModule(nn.Module):
    """The model plus the list of tasks being trained: `forward` gives each task's head loss."""

    def __init__(self, model: OmniVecModel, backbone_lr_scale: float = 1.0, stage: StageSpec | None = None):
        super().__init__()
        self.model, self.backbone_lr_scale = model, backbone_lr_scale
        self.align = list(stage.align) if stage else []
        self.align_weight = stage.align_weight if stage else 1.0
        self.align_temperature = stage.align_temperature if stage else 0.1

    def lr_scales(self) -> dict[str, float]:
        return {"model.backbone.": self.backbone_lr_scale, "model.encoders.": self.backbone_lr_scale}

    def forward(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, torch.Tensor]:
        losses, embeddings = {}, {}
        for task, b in batch.items():
            hidden, mask = self.model.forward_features(self.model.config.heads[task].modality, b["input"])
            losses[task] = self.model.heads[task].loss(hidden, mask, b["target"])
            if task in self.align:
                embeddings[task] = (F.normalize(masked_mean(hidden, mask), dim=-1), b["target"])  # model.embed's
        if len(embeddings) >= 2 and self.align_weight > 0:
            losses["align"] = self.align_weight * cross_modal_alignment(embeddings, self.align_temperature)
        return losses

    def save_model(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)


def cross_modal_alignment(embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]], temperature: float) -> torch.Tensor:
    """Supervised contrastive loss across tasks: {task: ([B, D] unit embeddings, [B] class ids of
    one shared label space)} -> for every anchor of one task and every other task, -log of the
    softmax mass (over that task's batch) on the samples of the anchor's class; averaged over the
    anchors that have such a sample."""
    terms = []
    for a, (emb_a, y_a) in embeddings.items():
        for b, (emb_b, y_b) in embeddings.items():
            if a == b:
                continue
            log_prob = (emb_a @ emb_b.T / temperature).float().log_softmax(dim=1)  # [Ba, Bb]
            positive = y_a[:, None] == y_b[None, :]  # [Ba, Bb]
            has = positive.any(1)
            mass = torch.logsumexp(log_prob.masked_fill(~positive, -float("inf")), dim=1)  # [Ba]
            terms.append(-(mass[has]).sum() / has.sum().clamp(min=1))
    return torch.stack(terms).mean()


def cross_modal_retrieval(model: OmniVecModel, data: Mapping[str, list[TaskData]], split: str, device: torch.device,
                          k: int = 5, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """For each ordered pair of tasks (one label space): the share of a query's k nearest
    neighbours (cosine of `model.embed`) among the other task's samples that have its class,
    against chance."""
    was_training = model.training
    model.eval()
    embedded = {}
    with torch.no_grad():
        for task, datasets in data.items():
            loader = task_loader(model, datasets, split, batch_size, 0, train=False)
            parts, labels = [], []
            for batch in loader:
                if batch["input"] is not None:
                    modality = model.config.heads[task].modality
                    parts.append(model.embed({modality: to_device(batch["input"], device)})[modality].float().cpu())
                    labels.append(batch["target"])
            embedded[task] = (torch.cat(parts), torch.cat(labels))
    model.train(was_training)
    out = {}
    for a, (emb_a, y_a) in embedded.items():
        for b, (emb_b, y_b) in embedded.items():
            if a != b:
                top = (emb_a @ emb_b.T).topk(min(k, len(y_b)), dim=1).indices  # [Na, k]
                chance = sum((y_a == c).sum().item() * (y_b == c).float().mean().item() for c in y_a.unique()) / len(y_a)
                out[f"{a}->{b}"] = {f"precision@{k}": (y_b[top] == y_a[:, None]).float().mean().item(), "chance": chance}
    return out


class ReplayLoader:
    """The stage's own tasks (per the schedule) plus one rehearsed earlier task per step, in turn."""

    def __init__(self, current: MultiModalLoader, replay: MultiModalLoader | None):
        self.current, self.replay = current, replay

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self.current) | (next(self.replay) if self.replay else {})

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current.state_dict(), "replay": self.replay.state_dict() if self.replay else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current.load_state_dict(state["current"])
        if self.replay:
            self.replay.load_state_dict(state["replay"])


def load_task_data(cfg: FinetuneConfig) -> dict[str, list[TaskData]]:
    """Every task's datasets, checked: one modality per task, the same classes across its datasets."""
    out = {}
    for name, spec in cfg.tasks.items():
        datasets = [relabel(t, spec.label_map, f"tasks.{name}.label_map") for path in spec.data for t in find_tasks(path)]
        if len({(t.modality, tuple(t.classes), t.target) for t in datasets}) > 1:
            raise ConfigError(f"tasks.{name}.data: the datasets differ in modality, classes or target")
        out[name] = datasets
    for i, stage in enumerate(cfg.stages):
        spaces = {tuple(out[t][0].classes) for t in stage.align}
        if len(spaces) > 1 or not all(spaces) or any(cfg.tasks[t].head != "classification" for t in stage.align):
            raise ConfigError(f"stages[{i}].align: expected classification tasks with one label space (use "
                              f"tasks.NAME.label_map), got {({t: out[t][0].classes[:5] for t in stage.align})}")
    return out


def relabel(task: TaskData, label_map: Mapping[str, str], key: str) -> TaskData:
    """`task` with its labels renamed by `label_map` (every map key must be one of its labels)."""
    if not label_map:
        return task
    unknown = sorted(set(label_map) - set(task.classes))
    if unknown:
        raise ConfigError(f"{key}: {unknown[0]!r} is not a label of {task.source} ({', '.join(task.classes[:12])})")

    def rename(row: dict) -> dict:
        row = dict(row)
        if "label" in row:
            row["label"] = label_map.get(row["label"], row["label"])
        if "labels" in row:
            row["labels"] = [label_map.get(c, c) for c in row["labels"]]
        return row

    classes = sorted({label_map.get(c, c) for c in task.classes})
    return dataclasses.replace(task, rows=[rename(r) for r in task.rows], classes=classes)


def head_config(name: str, spec: TaskSpec, data: list[TaskData], model: OmniVecModel) -> Any:
    """The head config of a task, completed from its data (classes) and the model (tokenizer)."""
    from .config import from_dict

    values = {"type": spec.head, "modality": data[0].modality, **spec.head_args}
    fields = {f.name for f in dataclasses.fields(HEADS.get(spec.head).config_class)}
    if "num_classes" in fields:
        values.setdefault("num_classes", len(data[0].classes))
        values.setdefault("labels", list(data[0].classes))
    if "tokenizer" in fields:
        text = model.config.modalities.get("text")
        if text is None:
            raise ConfigError(f"tasks.{name}: a {spec.head} head needs a model with a text encoder")
        values.setdefault("tokenizer", text.tokenizer)
        values.setdefault("vocab_size", text.vocab_size)
    return from_dict(HEADS.get(spec.head).config_class, values, f"tasks.{name}.head_args")


@torch.no_grad()
def evaluate_tasks(model: OmniVecModel, data: Mapping[str, list[TaskData]], split: str, batch_size: int,
                   device: torch.device, num_workers: int = 0, max_batches: int = 0) -> dict[str, dict[str, Any]]:
    """Each task's head metrics on `split`; classification tasks also return their predictions and
    targets (for confusion matrices) under the private keys `_pred` and `_true`."""
    was_training = model.training
    model.eval()
    results = {}
    for task, datasets in data.items():
        head = model.heads[task]
        loader = task_loader(model, datasets, split, batch_size, num_workers, train=False)
        predictions, targets = [], []
        for i, batch in enumerate(tqdm(loader, desc=f"eval {task}", leave=False)):
            if max_batches and i >= max_batches:
                break
            if batch["input"] is None:
                continue
            hidden, mask = model.forward_features(model.config.heads[task].modality, to_device(batch["input"], device))
            pred = head.predict(hidden, mask)
            if isinstance(pred, torch.Tensor):
                predictions.append(pred.float().cpu())
                targets.append(batch["target"])
            else:
                predictions += pred
                targets += batch["target"]
        if predictions and isinstance(predictions[0], torch.Tensor):
            predictions, targets = torch.cat(predictions), torch.cat(targets)
        metrics = head.metrics(predictions, targets)
        if isinstance(predictions, torch.Tensor) and targets.ndim == 1:
            metrics["_pred"], metrics["_true"] = predictions.argmax(1).tolist(), targets.tolist()
        elif not isinstance(predictions, torch.Tensor):
            metrics["examples"] = [{"prediction": p, "reference": t} for p, t in list(zip(predictions, targets))[:3]]
        metrics["samples"] = len(targets)
        results[task] = metrics
    model.train(was_training)
    return results


def baselines(data: Mapping[str, list[TaskData]], specs: Mapping[str, TaskSpec], split: str) -> dict[str, dict]:
    """Reference points: chance for classification; the lead-sentence summary's ROUGE for summarization."""
    from .evaluation import rouge

    out = {}
    for task, datasets in data.items():
        rows = [r for d in datasets for r in d.split(split)]
        if specs[task].head == "summarization":
            lead = [re.split(r"(?<=[.!?])\s+", r["text"].strip(), maxsplit=1)[0] for r in rows]
            out[task] = {"lead-1": rouge(lead, [r["summary"] for r in rows])}
        elif datasets[0].classes and datasets[0].target == "label":  # single-label: chance accuracy
            out[task] = {"chance_top1": 1 / len(datasets[0].classes),
                         "chance_top5": min(5, len(datasets[0].classes)) / len(datasets[0].classes)}
    return out


def set_frozen(model: OmniVecModel, freeze: list[str]) -> None:
    model.backbone.requires_grad_("backbone" not in freeze)
    model.encoders.requires_grad_("encoders" not in freeze)


def public(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run every stage in order; write `eval.json`, `eval.md` and the model with all heads to `cfg.output_dir`."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = OmniVecModel.from_pretrained(cfg.init) if cfg.init else OmniVecModel(model_config(cfg.model, **cfg.model_overrides))
    data = load_task_data(cfg)
    for name in data:
        if data[name][0].modality not in model.encoders:
            raise ConfigError(f"tasks.{name}: the model has no {data[name][0].modality!r} encoder ({model.modalities})")
        head_config(name, cfg.tasks[name], data[name], model)  # a bad head setting fails before training
    out = Path(cfg.output_dir)
    seen: list[str] = []
    rows, stages, results = [], [], {}
    for i, stage in enumerate(cfg.stages, 1):
        stage_dir = out / "stages" / f"{i}_{'+'.join(stage.tasks)}"
        done_file = stage_dir / "done.json"
        seen += [t for t in stage.tasks if t not in seen]
        if cfg.resume and done_file.is_file():  # finished before: take its model and results
            model = OmniVecModel.from_pretrained(stage_dir / "model")
            done = json.loads(done_file.read_text())
            rows.append(done["row"])
            stages.append(done["stage"])
            results = done["results"]
            continue
        stage_start = time.perf_counter()
        for task in stage.tasks:
            model.add_head(task, head_config(task, cfg.tasks[task], data[task], model))
        set_frozen(model, stage.freeze)
        stage_cfg = dataclasses.replace(cfg, max_steps=stage.steps, lr=stage.lr or cfg.lr, output_dir=str(stage_dir),
                                        warmup_steps=min(cfg.warmup_steps, stage.steps // 5))
        trainer = Trainer(stage_cfg, FinetuneModule(model, cfg.backbone_lr_scale, stage))
        acc = trainer.accelerator
        if trainer.is_main:
            tqdm.write(f"stage {i}/{len(cfg.stages)}: {', '.join(stage.tasks)} ({stage.steps} steps"
                       + (f", frozen: {', '.join(stage.freeze)}" if stage.freeze else "")
                       + (f", rehearsing: {', '.join(stage.replay)}" if stage.replay else "") + ")")
        loaders = {t: task_loader(model, data[t], "train", cfg.tasks[t].batch_size or cfg.batch_size, cfg.num_workers,
                                  train=True, seed=cfg.seed,
                                  skip_bad=cfg.skip_bad, rank=acc.process_index, world_size=acc.num_processes)
                   for t in stage.tasks + stage.replay}
        current = MultiModalLoader({t: loaders[t] for t in stage.tasks}, cfg.schedule, seed=cfg.seed)
        replay = MultiModalLoader({t: loaders[t] for t in stage.replay}, "round_robin") if stage.replay else None
        trainer.fit(ReplayLoader(current, replay))
        del loaders, current, replay
        gc.collect()  # stop this stage's DataLoader workers here, not in the next stage's forked workers
        model = trainer.unwrapped.model
        if trainer.is_main:
            results = {t: public(r) for t, r in evaluate_tasks(
                model, {t: data[t] for t in seen}, cfg.eval_split, cfg.eval_batch_size, trainer.device,
                max_batches=cfg.eval_max_batches).items()}
            row = {t: results[t][model.heads[t].main_metric] for t in seen}
            stage_info = {"stage": i, "tasks": stage.tasks, "steps": stage.steps, "freeze": stage.freeze,
                          "replay": stage.replay,
                          "seconds": round(time.perf_counter() - stage_start, 1), "skipped_samples": trainer.skipped}
            model.save_pretrained(stage_dir / "model")
            done_file.write_text(json.dumps({"row": row, "stage": stage_info, "results": results}))
            rows.append(row)
            stages.append(stage_info)
            tqdm.write("  " + ", ".join(f"{t} {model.heads[t].main_metric}={v:.3f}" for t, v in row.items()))
        acc.wait_for_everyone()
    report = {}
    if PartialState().is_main_process:  # the last stage evaluated every task: its results are final
        report = {
            "split": cfg.eval_split,
            "init": cfg.init,
            "seconds": round(time.perf_counter() - started, 1),
            "stages": stages,
            "forgetting_matrix": {"tasks": seen, "metric": {t: model.heads[t].main_metric for t in seen},
                                  "rows": [[row.get(t) for t in seen] for row in rows]},
            "final": {t: {k: v for k, v in m.items() if k != "examples"} for t, m in results.items()},
            "examples": {t: m["examples"] for t, m in results.items() if "examples" in m},
            "baselines": baselines({t: data[t] for t in seen}, cfg.tasks, cfg.eval_split),
            "retrieval": {pair: r for stage in cfg.stages if stage.align for pair, r in cross_modal_retrieval(
                model, {t: data[t] for t in stage.align}, cfg.eval_split, next(model.parameters()).device).items()},
        }
        model.save_pretrained(out / "model")
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        (out / "eval.md").write_text(format_report(report))
        tqdm.write(format_report(report))
    return report


def evaluate_saved(model_dir: str | Path, cfg: FinetuneConfig, split: str, output: Path,
                   device: str = "auto") -> dict[str, Any]:
    """`omnivec evaluate`: every task of `cfg` whose head the saved model has, on `split`; prints a
    table and writes `metrics.json` and a confusion-matrix PNG per classification task to `output`."""
    from .plots import plot_confusion

    model = OmniVecModel.from_pretrained(model_dir)
    missing = [t for t in cfg.tasks if t not in model.heads]
    tasks = [t for t in cfg.tasks if t in model.heads]
    if not tasks:
        raise ConfigError(f"{model_dir}: the model has none of the config's task heads {sorted(cfg.tasks)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    model.to(dev)
    data = {t: align_classes(t, d, model.config.heads[t]) for t, d in load_task_data(cfg).items() if t in tasks}
    results = evaluate_tasks(model, data, split, cfg.eval_batch_size, dev, max_batches=cfg.eval_max_batches)
    output.mkdir(parents=True, exist_ok=True)
    for task, metrics in results.items():
        if "_pred" in metrics:
            plot_confusion(metrics["_pred"], metrics["_true"], model.config.heads[task].labels,
                           output / f"confusion_{task}.png", title=f"{task} ({split})")
    report = {"model": str(model_dir), "split": split, "metrics": {t: public(m) for t, m in results.items()},
              "baselines": baselines(data, cfg.tasks, split), "not_in_model": missing}
    (output / "metrics.json").write_text(json.dumps(report, indent=2))
    lines = [f"{'task':<18} {'metric':<8} {'value':>7}  baseline"]
    for task, metrics in report["metrics"].items():
        for key, value in metrics.items():
            if isinstance(value, float):
                lines.append(f"{task:<18} {key:<8} {value:>7.3f}  {baseline_text(report['baselines'].get(task, {}), key)}")
    if missing:
        lines.append(f"(no head in the model for: {', '.join(missing)})")
    print("\n".join(lines) + f"\nwritten to {output}")
    return report


def align_classes(task: str, datasets: list[TaskData], head: Any) -> list[TaskData]:
    """Index a task's labels as the trained head does; a label the head never learned is an error
    naming the file and the label (instead of silently shifted class indices)."""
    labels = list(getattr(head, "labels", None) or [])
    if not labels or not datasets[0].classes:
        return datasets
    for d in datasets:
        unknown = sorted(set(d.classes) - set(labels))
        if unknown:
            row = next(r for r in d.rows if unknown[0] in (r.get("labels") or [r.get("label")]))
            raise DataError(f"{row['where']}: label {unknown[0]!r} is not one of the {len(labels)} labels the "
                            f"{task!r} head was trained on ({', '.join(map(str, labels[:12]))}"
                            f"{', ...' if len(labels) > 12 else ''})")
    return [dataclasses.replace(d, classes=labels) for d in datasets]


def baseline_text(baselines: Mapping[str, Any], key: str) -> str:
    """A task's baseline for metric `key`: "0.100 (chance)", "0.222 (lead-1)" or ""."""
    if f"chance_{key}" in baselines:
        return f"{baselines[f'chance_{key}']:.3f} (chance)"
    if key in baselines.get("lead-1", {}):
        return f"{baselines['lead-1'][key]:.3f} (lead-1)"
    return ""


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown: the final metrics per task beside their baselines, then the forgetting matrix."""
    lines = [f"Metrics on the {report['split']} split (init: {report['init'] or 'scratch'}), "
             f"{report['seconds']:.0f}s", "", "| task | metric | value | baseline |", "|---|---|---|---|"]
    for task, metrics in report["final"].items():
        for key, value in metrics.items():
            if key != "samples":
                lines.append(f"| {task} | {key} | {value:.3f} | {baseline_text(report['baselines'].get(task, {}), key)} |")
    matrix = report["forgetting_matrix"]
    lines += ["", "Forgetting matrix (row: after stage i; column: task, its main metric):", "",
              "| after stage | " + " | ".join(f"{t} ({matrix['metric'][t]})" for t in matrix["tasks"]) + " |",
              "|---" * (len(matrix["tasks"]) + 1) + "|"]
    for i, row in enumerate(matrix["rows"], 1):
        lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
    if report.get("retrieval"):
        lines += ["", "Cross-modal retrieval (queries of one task, neighbours among the other's samples):", "",
                  "| query -> neighbours | precision@5 | chance |", "|---|---|---|"]
        lines += [f"| {pair} | {r['precision@5']:.3f} | {r['chance']:.3f} |" for pair, r in report["retrieval"].items()]
    return "\n".join(lines) + "\n"
