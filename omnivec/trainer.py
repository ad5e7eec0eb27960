"""The training loop every recipe uses: accelerate for devices, mixed precision and distribution;
AdamW with warmup + cosine (omnivec/optim.py); gradient accumulation and clipping; a progress bar
and `metrics.jsonl`; checkpoints every N steps and `resume=auto|PATH` that continues exactly where a
run stopped (omnivec/checkpointing.py); a NaN or infinite loss stops the run naming its step, before
any checkpoint holds its weights. The run folder is guarded by omnivec/run_dir.py."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from .backbone import compile_blocks
from .checkpointing import Checkpoints, check_resume, kept_checkpoint
from .config import augment_configs
from .datasets.dataset import to_device
from .errors import ConfigError, TrainingError
from .optim import build_optimizer
from .parsing import join_key, non_finite_numbers, require, require_positive
from .run_dir import METRICS, TENSORBOARD, trim_metrics


@dataclass
class TrainConfig:
    """Loop settings shared by the recipes (each recipe's config adds its own)."""

    output_dir: str = "runs/run"
    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_accum: int = 1
    clip_grad: float = 1.0  # max gradient norm; 0 disables clipping
    precision: str = "no"  # no | bf16 | fp16 (accelerate's mixed_precision)
    device: str = "auto"  # auto (GPU when there is one) | cpu
    num_workers: int = 2  # DataLoader worker processes per dataset
    cache_mb: int = 0  # MiB of decoded samples each loading process keeps for later epochs (file datasets; 0: none)
    log_every: int = 10  # steps per metrics record (the mean loss over those steps and every process)
    eval_every: int = 0  # 0: evaluate at the start and the end only
    save_every: int = 500  # 0: save at the end only
    keep_checkpoints: int = 2
    resume: str | None = None  # auto (the latest checkpoint in output_dir) | a checkpoint folder
    overwrite: bool = False  # replace the run already in output_dir (its outputs are removed first)
    seed: int = 0
    skip_bad: bool = False  # skip unreadable samples (counted and listed at the end) instead of stopping
    shuffle_buffer: int = 1000  # streamed datasets (shards, hf:): samples each worker shuffles among
    # Recompute the blocks' activations in the backward pass (torch.utils.checkpoint): far less memory, +1/3 compute
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile every transformer block (worth it on GPUs; minutes of compiling first)
    # Training augmentation per modality, e.g. {image: {rand_augment: rand-m9-mstd0.5-inc1}, audio: {}}: a
    # modality listed gets its augment class's settings (defaults: its anchors' fine-tuning recipe, see
    # omnivec/modalities/MODALITY.py), one not listed only the random crop (or point-cloud rotation) of training.
    augment: dict = field(default_factory=dict)
    log_with: str | None = None  # tensorboard: also log to TensorBoard (accelerate's tracker) in output_dir/tensorboard

    def validate(self, prefix: str) -> None:
        for key, value in non_finite_numbers(self, prefix):  # every number of a training config, nested ones too
            require(False, key, "a finite number", value)
        require_positive(self, prefix, "max_steps", "batch_size", "lr", "grad_accum", "log_every", "keep_checkpoints")
        for name in (
            "min_lr",
            "weight_decay",
            "warmup_steps",
            "clip_grad",
            "num_workers",
            "cache_mb",
            "eval_every",
            "save_every",
            "shuffle_buffer",
        ):
            require(getattr(self, name) >= 0, join_key(prefix, name), "a number >= 0", getattr(self, name))
        require(
            self.min_lr <= self.lr,
            join_key(prefix, "min_lr"),
            f"at most lr ({self.lr:g}): the schedule decays from lr to min_lr",
            self.min_lr,
        )
        require(
            self.precision in ("no", "bf16", "fp16"), join_key(prefix, "precision"), "no, bf16 or fp16", self.precision
        )
        require(self.device in ("auto", "cpu"), join_key(prefix, "device"), "auto or cpu", self.device)
        require(len(self.betas) == 2, join_key(prefix, "betas"), "two values", self.betas)
        require(all(0 <= b < 1 for b in self.betas), join_key(prefix, "betas"), "two values in [0, 1)", self.betas)
        require(0 <= self.seed < 2**32, join_key(prefix, "seed"), "an int in [0, 2**32)", self.seed)
        require(bool(self.output_dir), join_key(prefix, "output_dir"), "a folder", self.output_dir)
        check_resume(self.resume, join_key(prefix, "resume"))
        require(
            not (self.overwrite and self.resume),
            join_key(prefix, "overwrite"),
            "false when resume is set (resume continues the run in output_dir, overwrite replaces it)",
            self.overwrite,
        )
        self.augment = augment_configs(self.augment, join_key(prefix, "augment"))
        require(
            self.log_with in (None, "tensorboard"), join_key(prefix, "log_with"), "none or tensorboard", self.log_with
        )
        if self.log_with == "tensorboard":
            from accelerate.utils import is_tensorboard_available

            if not is_tensorboard_available():
                raise ConfigError(
                    f"{join_key(prefix, 'log_with')}: tensorboard is not installed: pip install "
                    "tensorboard (or omnivec[dev]), or log_with=none"
                )


@dataclass
class LossInterval:
    """The losses since the last log, kept on the device (no host sync per step): their sums, the
    micro-batches each was in (round_robin: one modality per step), and (step, name, loss) of each
    micro-batch, which finds a NaN's step."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    recent: list[tuple[int, str, torch.Tensor]] = field(default_factory=list)

    def add(self, step: int, parts: Mapping[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1
            self.recent.append((step, k, v.detach()))


class Trainer:
    """Runs `module(batch, step) -> {name: loss}` for `cfg.max_steps` optimizer steps over `batches`,
    where `batch` is `{key: {"input": ..., "target": ...}}` on the training device.

    `batches` yields `{key: collated batch}` (see `MultiModalLoader`) and has `state_dict()` /
    `load_state_dict()` for its position, saved with every checkpoint. `module.model` is the
    `OmniVecModel` a checkpoint carries for users (`save_model`); `module.after_step(step)`, when it
    has one, runs after every optimizer step (weight EMA); `module.monitor`, when it has one, adds the
    module's own metrics to each record and can stop the run (see `monitor`). Records go to
    `metrics.jsonl` and, with `log_with`, to accelerate's tracker (`close` ends it).
    """

    def __init__(self, cfg: TrainConfig, module: nn.Module):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            cpu=cfg.device == "cpu",
            mixed_precision=cfg.precision,
            step_scheduler_with_optimizer=False,
            # Modalities take turns, so some parameters get no gradient in a step.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            log_with=cfg.log_with,
            project_dir=cfg.output_dir,
        )
        if cfg.log_with:
            self.accelerator.init_trackers(TENSORBOARD)  # output_dir/tensorboard
        set_seed(cfg.seed)
        fused = self.accelerator.device.type in ("cuda", "cpu")  # fused AdamW kernels exist for both
        lr_scales = module.lr_scales() if hasattr(module, "lr_scales") else None
        optimizer, scheduler = build_optimizer(module, cfg, lr_scales, fused)
        if cfg.activation_checkpointing:
            module.model.set_grad_checkpointing(True)
        if cfg.compile:
            compile_blocks(module)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, optimizer, scheduler)
        self.checkpoints = Checkpoints(self.accelerator, self.output_dir, cfg.keep_checkpoints)
        self.step = 0
        self.val_step: int | None = None  # the step of the last `val/` record (a checkpoint keeps it)
        self.skipped: list[str] = []
        self.is_main = self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to `output_dir/metrics.jsonl`, and log it to the tracker (main process only)."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / METRICS).open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.cfg.log_with:
                self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        """Flush and close the trackers: accelerate's `end_training`, but the process group stays
        (the next fine-tuning stage trains with it)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()

    def resume(self, batches: Any) -> None:
        """Load `cfg.resume` (auto: the latest checkpoint, or a fresh start when there is none),
        then drop the metrics records of steps the checkpoint did not reach."""
        if not self.cfg.resume:
            return
        restored = self.checkpoints.restore(self.cfg.resume, self.module, batches)
        if restored is not None:
            path, (self.step, self.skipped, self.val_step) = restored
            if self.is_main:
                tqdm.write(f"resumed from {path} at step {self.step}")
        if self.is_main:
            trim_metrics(self.output_dir, self.step)

    def save_model(self, directory: Path) -> None:
        """Write the whole `OmniVecModel` to `directory` (every process calls this; see `Checkpoints`)."""
        self.checkpoints.save_model(self.module, directory)

    def save_checkpoint(self, batches: Any) -> Path:
        return self.checkpoints.save(self.step, self.module, self.optimizer, batches, self.skipped, self.val_step)

    def log_evaluation(self, evaluate: Callable[[], dict[str, float]]) -> None:
        """Log a `val/` record of `evaluate()` at this step (every process evaluates; the main one writes)."""
        self.log({"step": self.step, **{f"val/{k}": v for k, v in evaluate().items()}})
        self.val_step = self.step

    def interval_means(self, interval: LossInterval) -> dict[str, float]:
        """The mean loss per name over the micro-batches since the last log that had it, and over
        every process (one host sync). A mean that is not finite stops the run: `TrainingError`
        naming the first step whose loss was not finite."""
        keys = sorted(interval.sums)
        if not keys:
            return {}
        sums, counts = interval.sums, interval.counts
        means = self.accelerator.reduce(torch.stack([sums[k] / counts[k] for k in keys]), "mean").tolist()
        if not all(math.isfinite(m) for m in means):
            self.stop_non_finite(interval.recent)
        return dict(zip(keys, means))

    def stop_non_finite(self, recent: list[tuple[int, str, torch.Tensor]]) -> None:
        """Raise `TrainingError` naming the first step (over every process) whose loss in `recent`
        is NaN or infinite, and the last good checkpoint, which stays as it is."""
        values = torch.stack([v.detach().float() for _, _, v in recent]).cpu()
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        first = [(recent[bad[0]][0], recent[bad[0]][1], values[bad[0]].item())] if bad else []
        if self.accelerator.num_processes > 1:
            first = gather_object(first)
        if first:
            step, name, value = min(first, key=lambda f: (f[0], f[1]))
            what = f"step {step}: the {name!r} loss is {value}"
        else:  # every loss finite, their sum not: far too large
            what = f"steps {recent[0][0]}-{recent[-1][0]}: the losses overflow when averaged"
        raise TrainingError(
            f"{what}; training stopped there. {kept_checkpoint(self.output_dir)} Lower lr, clip "
            "gradients (clip_grad) or check the data."
        )

    def monitor(self, clear: bool = True) -> dict[str, float]:
        """The module's own metrics since the last log (`module.monitor(reduce, clear)` -> (metrics
        averaged over the processes by `reduce`, a failure message or None), e.g. the latent targets'
        spread); a failure stops the run with `TrainingError`, naming the last good checkpoint."""
        if not hasattr(self.unwrapped, "monitor"):
            return {}
        metrics, failure = self.unwrapped.monitor(lambda t: self.accelerator.reduce(t, "mean"), clear)
        if failure:
            raise TrainingError(f"{failure}; training stopped there. {kept_checkpoint(self.output_dir)}")
        return metrics

    def _next_batch(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], int]:
        """The next `{key: {"input", "target"}}` on the device, and its sample count; bad samples
        the loader skipped are listed once, however many epochs meet them."""
        batch, samples = {}, 0
        for key, b in next(batches).items():
            if b.get("skipped"):
                self.skipped = list(dict.fromkeys(self.skipped + b["skipped"]))
            if b["input"] is not None:  # None: every sample of the batch was bad and skipped
                batch[key] = {
                    "input": to_device(b["input"], self.device),
                    "target": to_device(b["target"], self.device),
                }
                samples += len(b["index"])
        return batch, samples

    def _micro_step(self, batch: dict[str, Any], loss_weights: Mapping[str, float], last: bool) -> dict[str, Any]:
        """Forward and backward of one micro-batch (gradients synchronised on the `last` one) -> its losses."""
        sync = nullcontext() if last else self.accelerator.no_sync(self.module)
        with sync:
            parts = self.module(batch, step=self.step)
            loss = sum(loss_weights.get(k, 1.0) * v for k, v in parts.items()) / self.cfg.grad_accum
            self.accelerator.backward(loss)
        return parts

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad > 0:
            self.accelerator.clip_grad_norm_(self.module.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if hasattr(self.unwrapped, "after_step"):
            self.unwrapped.after_step(self.step)

    def _log_interval(self, interval: LossInterval, samples: int, elapsed: float, bar: tqdm) -> None:
        # One host sync per log: the interval's mean loss over every process (stops at a NaN).
        losses = self.interval_means(interval)
        speed = samples / max(elapsed, 1e-9)
        record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        record |= {f"loss/{k}": v for k, v in losses.items()} | self.monitor()
        record |= {"samples_per_s": speed, "elapsed_s": round(elapsed, 3)}  # seconds in the loop (since a resume)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | {"samples/s": f"{speed:.0f}"})
        self.log(record)

    def fit(
        self,
        batches: Iterator[dict[str, Any]],
        evaluate: Callable[[], dict[str, float]] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Train until `cfg.max_steps`, logging, evaluating and checkpointing on the way."""
        cfg = self.cfg
        self.resume(batches)
        if evaluate is not None and self.step == 0:
            self.log_evaluation(evaluate)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not self.is_main, dynamic_ncols=True)
        start, samples, interval = time.perf_counter(), 0, LossInterval()
        while self.step < cfg.max_steps:
            self.module.train()
            for micro in range(cfg.grad_accum):
                batch, n = self._next_batch(batches)
                samples += n * self.accelerator.num_processes
                parts = self._micro_step(batch, loss_weights or {}, last=micro == cfg.grad_accum - 1)
                interval.add(self.step + 1, parts)
            self._optimizer_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log_interval(interval, samples, time.perf_counter() - start, bar)
                interval = LossInterval()
            before_end = self.step < cfg.max_steps
            if evaluate is not None and cfg.eval_every and self.step % cfg.eval_every == 0 and before_end:
                self.log_evaluation(evaluate)
            if cfg.save_every and self.step % cfg.save_every == 0 and before_end:
                self.interval_means(interval)  # losses since the last log must be finite
                self.monitor(clear=False)  # and the module sound (no collapsed teacher in a checkpoint)
                self.save_checkpoint(batches)
        bar.close()
        if self.accelerator.num_processes > 1:  # every process's skipped samples, for the summary
            self.skipped = list(dict.fromkeys(gather_object(self.skipped)))
        if evaluate is not None and self.val_step != self.step:  # (resumed from the final checkpoint: logged)
            self.log_evaluation(evaluate)
        self.save_checkpoint(batches)
