"""Sequential fine-tuning: a list of stages, each training some tasks' heads (and, unless frozen,
the shared backbone and encoders); after every stage every task trained so far is evaluated (the
forgetting matrix) and a checkpoint is saved. `finetune` reads as a loop over `run_stage`."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from .backbone import set_drop_path
from .checkpointing import latest_checkpoint
from .datasets import TaskData
from .datasets.loaders import recipe_settings, task_loader
from .datasets.sampler import MultiModalLoader
from .errors import ConfigError
from .evaluation import baselines, cross_modal_retrieval, evaluate_tasks, public
from .finetune_config import FinetuneConfig, StageSpec
from .finetune_module import FinetuneModule, mixers
from .model import OmniVecModel
from .reports import format_report
from .run_dir import prepare_output_dir, resumes_recorded_run
from .saved_model import saved_config
from .tasks import head_config, load_task_data
from .trainer import Trainer
from .variants import load_model


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


def set_frozen(model: OmniVecModel, freeze: list[str]) -> None:
    """Freeze the backbone and / or the encoders (`freeze` names them) for a stage."""
    model.backbone.requires_grad_("backbone" not in freeze)
    model.encoders.requires_grad_("encoders" not in freeze)


def stage_folder(cfg: FinetuneConfig, i: int) -> Path:
    """Where stage `i` (1-based) writes its checkpoints, model and results."""
    return Path(cfg.output_dir) / "stages" / f"{i}_{'+'.join(cfg.stages[i - 1].tasks)}"


def stage_loaders(
    cfg: FinetuneConfig, model: OmniVecModel, data: Mapping[str, list[TaskData]], stage: StageSpec, accelerator: Any
) -> tuple[MultiModalLoader, MultiModalLoader | None]:
    """A stage's training data: its tasks mixed by `cfg.schedule`, and its replayed tasks in turn (or None)."""
    loaders = {
        t: task_loader(
            model,
            data[t],
            "train",
            cfg.tasks[t].batch_size or cfg.batch_size,
            train=True,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            **recipe_settings(cfg),
        )
        for t in stage.tasks + stage.replay
    }
    current = MultiModalLoader({t: loaders[t] for t in stage.tasks}, cfg.schedule, seed=cfg.seed)
    replay = MultiModalLoader({t: loaders[t] for t in stage.replay}, "round_robin") if stage.replay else None
    return current, replay


def evaluate_stage(
    cfg: FinetuneConfig,
    model: OmniVecModel,
    ema: Any,
    data: Mapping[str, list[TaskData]],
    seen: list[str],
    device: torch.device,
    stage_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Every task seen so far, evaluated on `cfg.eval_split`; with an EMA copy, its metrics beside the raw
    ones as "ema:METRIC" and its weights saved in `stage_dir/model_ema`."""

    def evaluate(m: OmniVecModel) -> dict[str, dict[str, Any]]:
        found = evaluate_tasks(
            m, {t: data[t] for t in seen}, cfg.eval_split, cfg.eval_batch_size, device, max_batches=cfg.eval_max_batches
        )
        return {t: public(r) for t, r in found.items()}

    results = evaluate(model)
    if ema is not None:
        ema_model = cast(OmniVecModel, ema.module)  # a copy of the OmniVecModel
        for t, r in evaluate(ema_model).items():
            results[t].update({f"ema:{k}": v for k, v in r.items() if isinstance(v, float)})
        ema_model.save_pretrained(stage_dir / "model_ema")
    return results


def run_stage(
    cfg: FinetuneConfig, i: int, model: OmniVecModel, data: Mapping[str, list[TaskData]], seen: list[str]
) -> tuple[OmniVecModel, dict[str, Any] | None]:
    """Stage `i` (1-based): add its heads, train, save the model in its folder, then (main process)
    evaluate every task in `seen` and write `done.json` there. Returns the saved model (loaded by
    every process) and what the stage records (None on the other processes); a finished stage is
    taken from its folder under `resume`."""
    stage, stage_dir = cfg.stages[i - 1], stage_folder(cfg, i)
    done_file = stage_dir / "done.json"
    if cfg.resume and done_file.is_file():  # finished before: take its model and results
        return OmniVecModel.from_pretrained(stage_dir / "model"), json.loads(done_file.read_text())
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # a stage's new heads start alike in a resumed run
        torch.manual_seed(cfg.seed * 1_000_003 + i)
        for task in stage.tasks:
            model.add_head(task, head_config(task, cfg.tasks[task], data[task], model.config, cfg.label_smoothing))
    set_frozen(model, stage.freeze)
    stage_cfg = dataclasses.replace(
        cfg,
        max_steps=stage.steps,
        lr=stage.lr or cfg.lr,
        output_dir=str(stage_dir),
        warmup_steps=min(cfg.warmup_steps, stage.steps // 5),
    )
    module = FinetuneModule(
        model,
        cfg.backbone_lr_scale,
        stage,
        cfg.layer_decay,
        mixers(cfg, model, stage.tasks + stage.replay),
        cfg.ema_decay,
    )
    trainer = Trainer(stage_cfg, module)
    accelerator = trainer.accelerator
    if cfg.ema_decay and accelerator.distributed_type == "FSDP":  # the EMA copy would be sharded with the model
        raise ConfigError(
            "ema_decay: not supported under FSDP yet (the EMA copy of the weights is sharded with "
            "the model, and evaluating it on one process would hang); set ema_decay=0"
        )
    if trainer.is_main:
        tqdm.write(
            f"stage {i}/{len(cfg.stages)}: {', '.join(stage.tasks)} ({stage.steps} steps"
            + (f", frozen: {', '.join(stage.freeze)}" if stage.freeze else "")
            + (f", rehearsing: {', '.join(stage.replay)}" if stage.replay else "")
            + ")"
        )
    current, replay = stage_loaders(cfg, model, data, stage, accelerator)
    trainer.fit(ReplayLoader(current, replay))
    trainer.close()
    del current, replay
    gc.collect()  # stop this stage's DataLoader workers here, not in the next stage's forked workers
    ema = trainer.unwrapped.ema
    trainer.save_model(stage_dir / "model")
    accelerator.wait_for_everyone()
    # Every process goes on with the saved model: whole weights, where under FSDP the trained module holds shards.
    model = OmniVecModel.from_pretrained(stage_dir / "model").to(trainer.device)
    done = None
    if trainer.is_main:
        results = evaluate_stage(cfg, model, ema, data, seen, trainer.device, stage_dir)
        row = {t: results[t][model.heads[t].main_metric] for t in seen}
        info = {
            "stage": i,
            "tasks": stage.tasks,
            "steps": stage.steps,
            "freeze": stage.freeze,
            "replay": stage.replay,
            "seconds": round(time.perf_counter() - started, 1),
            "skipped_samples": trainer.skipped,
        }
        done = {"row": row, "stage": info, "results": results}
        done_file.write_text(json.dumps(done))
        n = len(trainer.skipped)
        skipped = f" ({n} bad sample{'s' if n > 1 else ''} skipped: stages/{stage_dir.name}/done.json)" if n else ""
        tqdm.write("  " + ", ".join(f"{t} {model.heads[t].main_metric}={v:.3f}" for t, v in row.items()) + skipped)
    accelerator.wait_for_everyone()
    return model, done


def first_model(cfg: FinetuneConfig, recorded: bool) -> OmniVecModel:
    """What stage 1 starts from: `init`, else the variant with its overrides, newly initialised. A
    run that resumes its own recorded run (`recorded`) from scratch is built from the model config
    its first stage saved (heads dropped; the checkpoint's state replaces the weights), so that it
    resumes after a later omnivec changed the variant's defaults."""
    if not recorded or cfg.init:
        return load_model(cfg.init, cfg.model, cfg.model_overrides)
    stage = stage_folder(cfg, 1)
    checkpoint = latest_checkpoint(stage)
    saved = saved_config([stage / "model", checkpoint / "model" if checkpoint else None])
    if saved is None:  # stopped before its first checkpoint: it starts again
        return load_model(cfg.init, cfg.model, cfg.model_overrides)
    saved.heads = {}
    return OmniVecModel(saved, load_library_weights=False)  # (when stage 1 is done, run_stage takes its model)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run every stage in order; write `eval.json`, `eval.md` and the model with all heads to `cfg.output_dir`."""
    started = time.perf_counter()
    recorded = resumes_recorded_run(cfg)  # asked before prepare_output_dir rewrites the run's record
    data = load_task_data(cfg)  # every dataset and split found before overwrite=true removes a run
    prepare_output_dir(cfg, "finetune")  # writable, and not another run's folder: checked before any work
    torch.manual_seed(cfg.seed)
    model = first_model(cfg, recorded)
    if cfg.drop_path is not None:
        set_drop_path(model.backbone.blocks, cfg.drop_path)
        model.config.backbone.drop_path = cfg.drop_path  # (recorded with the model; no effect in eval mode)
    for name in data:
        if data[name][0].modality not in model.encoders:
            raise ConfigError(f"tasks.{name}: the model has no {data[name][0].modality!r} encoder ({model.modalities})")
        head_config(name, cfg.tasks[name], data[name], model.config, cfg.label_smoothing)  # bad head settings fail now
    seen: list[str] = []
    done: list[dict[str, Any]] = []
    for i, stage in enumerate(cfg.stages, 1):
        seen += [t for t in stage.tasks if t not in seen]
        model, record = run_stage(cfg, i, model, data, seen)
        if record is not None:
            done.append(record)
    report = {}
    if PartialState().is_main_process:  # the last stage evaluated every task: its results are final
        report = final_report(cfg, model, data, seen, done, time.perf_counter() - started)
        out = Path(cfg.output_dir)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        (out / "eval.md").write_text(format_report(report))
        model.save_pretrained(out / "model")  # its model card shows eval.json's metrics
        if cfg.ema_decay:  # the last stage's EMA weights
            shutil.copytree(stage_folder(cfg, len(cfg.stages)) / "model_ema", out / "model_ema", dirs_exist_ok=True)
        tqdm.write(format_report(report))
    return report


def final_report(
    cfg: FinetuneConfig,
    model: OmniVecModel,
    data: Mapping[str, list[TaskData]],
    seen: list[str],
    done: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """eval.json: the final metrics, the forgetting matrix, baselines and cross-modal retrieval."""
    results = done[-1]["results"]
    return {
        "split": cfg.eval_split,
        "init": cfg.init,
        "seconds": round(seconds, 1),
        "stages": [d["stage"] for d in done],
        "forgetting_matrix": {
            "tasks": seen,
            "metric": {t: model.heads[t].main_metric for t in seen},
            "rows": [[d["row"].get(t) for t in seen] for d in done],
        },
        "final": {t: {k: v for k, v in m.items() if k != "examples"} for t, m in results.items()},
        "examples": {t: m["examples"] for t, m in results.items() if "examples" in m},
        "baselines": baselines({t: data[t] for t in seen}, {t: cfg.tasks[t].head for t in seen}, cfg.eval_split),
        "retrieval": {
            pair: r
            for stage in cfg.stages
            if stage.align
            for pair, r in cross_modal_retrieval(
                model, {t: data[t] for t in stage.align}, cfg.eval_split, next(model.parameters()).device
            ).items()
        },
    }
