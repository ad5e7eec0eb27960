"""The training loop every recipe uses: accelerate for devices, mixed precision and distribution;
AdamW with warmup + cosine; gradient accumulation and clipping; progress bar, `metrics.jsonl`;
atomic checkpoints every N steps and `resume=auto|PATH` that continues exactly where a run stopped."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import join_key, require, require_positive
from .errors import ConfigError

CHECKPOINTS, STATE_FILE = "checkpoints", "trainer_state.json"


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
    log_every: int = 10  # steps per metrics record (the mean loss over those steps and every process)
    eval_every: int = 0  # 0: evaluate at the start and the end only
    save_every: int = 500  # 0: save at the end only
    keep_checkpoints: int = 2
    resume: str | None = None  # auto (the latest checkpoint in output_dir) | a checkpoint folder
    seed: int = 0
    skip_bad: bool = False  # skip unreadable samples (counted and listed at the end) instead of stopping
    compile: bool = False  # torch.compile every transformer block (worth it on GPUs; minutes of compiling first)

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "max_steps", "batch_size", "lr", "grad_accum", "log_every", "keep_checkpoints")
        for name in ("min_lr", "weight_decay", "warmup_steps", "clip_grad", "num_workers", "eval_every", "save_every"):
            require(getattr(self, name) >= 0, join_key(prefix, name), "a number >= 0", getattr(self, name))
        require(self.precision in ("no", "bf16", "fp16"), join_key(prefix, "precision"), "no, bf16 or fp16", self.precision)
        require(self.device in ("auto", "cpu"), join_key(prefix, "device"), "auto or cpu", self.device)
        require(len(self.betas) == 2, join_key(prefix, "betas"), "two values", self.betas)


def param_groups(module: nn.Module, weight_decay: float, lr: float,
                 lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """Weight decay on matrices only (biases, norms, position embeddings and learned tokens go
    without); `lr_scales` maps a parameter-name prefix to a learning-rate multiplier."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "pos_embed" not in name and "token" not in name
        scale = next((s for prefix, s in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
            for (decay, scale), ps in groups.items()]


def warmup_cosine(cfg: TrainConfig) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine down to min_lr / lr at max_steps."""
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir/checkpoints` (half-written ones are never named)."""
    folder = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in folder.glob("step_*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def compile_blocks(module: nn.Module) -> None:
    """Regional compilation: `torch.compile` each transformer block in place (backbone, encoders,
    decoders); identical blocks share the compiled code, and masking or padding outside the blocks
    stays eager, so varying token counts only add dynamic-shape guards."""
    from timm.models.vision_transformer import Block

    for block in module.modules():
        if isinstance(block, Block):
            block.compile(dynamic=None)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


class Trainer:
    """Runs `module(batch, step) -> {name: loss}` for `cfg.max_steps` optimizer steps over `batches`,
    where `batch` is `{key: {"input": ..., "target": ...}}` on the training device.

    `batches` yields `{key: collated batch}` (see `MultiModalLoader`) and has `state_dict()` /
    `load_state_dict()` for its position, saved with every checkpoint. `module.save_model(dir)`
    writes the model a checkpoint carries for users (`OmniVecModel.save_pretrained`).
    """

    def __init__(self, cfg: TrainConfig, module: nn.Module):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            cpu=cfg.device == "cpu", mixed_precision=cfg.precision, step_scheduler_with_optimizer=False,
            # Modalities take turns, so some parameters get no gradient in a step.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(cfg.seed)
        fused = self.accelerator.device.type in ("cuda", "cpu")  # fused AdamW kernels exist for both
        lr_scales = module.lr_scales() if hasattr(module, "lr_scales") else None
        optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay, cfg.lr, lr_scales), lr=cfg.lr,
                                      betas=tuple(cfg.betas), fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg))
        if cfg.compile:
            compile_blocks(module)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, optimizer, scheduler)
        self.step = 0
        self.skipped: list[str] = []
        self.is_main = self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to `output_dir/metrics.jsonl` (main process only)."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def resume(self, batches: Any) -> None:
        """Load `cfg.resume` (auto: the latest checkpoint, or a fresh start when there is none)."""
        if not self.cfg.resume:
            return
        path = latest_checkpoint(self.output_dir) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
        self.check_compatible(path / "state" / "model.safetensors")
        self.accelerator.load_state(str(path / "state"))
        state = json.loads((path / STATE_FILE).read_text())
        self.step = state["step"]
        self.skipped = state.get("skipped", [])
        batches.load_state_dict(state["data"])
        if self.is_main:
            tqdm.write(f"resumed from {path} at step {self.step}")

    def check_compatible(self, weights: Path) -> None:
        """Fail with the differing tensor names, before loading anything, when a checkpoint was
        written for another configuration (reads only the safetensors header)."""
        from safetensors import safe_open

        from .model import state_dict_mismatch

        with safe_open(str(weights), "pt") as f:
            found = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        expected = self.unwrapped.state_dict()
        shared: dict[int, list[str]] = {}  # tied tensors are saved once
        for k, v in expected.items():
            shared.setdefault(v.data_ptr(), []).append(k)
        for names in shared.values():
            if len(names) > 1 and any(n in found for n in names):
                for n in names:
                    if n not in found:
                        expected.pop(n)
        problems = state_dict_mismatch(expected, found)
        if problems:
            raise ConfigError(f"{weights.parents[1]}: written for a different configuration than this run's: {problems}")

    def save_checkpoint(self, batches: Any) -> Path:
        """Write `checkpoints/step_N/` aside as `.tmp-step_N` and rename it into place when complete."""
        folder = self.output_dir / CHECKPOINTS
        final, tmp = folder / f"step_{self.step:08d}", folder / f".tmp-step_{self.step:08d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp / "state"), safe_serialization=True)
        if self.is_main:
            self.unwrapped.save_model(tmp / "model")
            state = {"step": self.step, "data": batches.state_dict(), "skipped": self.skipped}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(folder.glob("step_*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def fit(self, batches: Iterator[dict[str, Any]], evaluate: Callable[[], dict[str, float]] | None = None,
            loss_weights: Mapping[str, float] | None = None) -> None:
        """Train until `cfg.max_steps`, logging, evaluating and checkpointing on the way."""
        cfg, acc = self.cfg, self.accelerator
        self.resume(batches)
        if evaluate is not None and self.step == 0:
            self.log({"step": 0, **{f"val/{k}": v for k, v in evaluate().items()}})
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not self.is_main, dynamic_ncols=True)
        start, samples = time.perf_counter(), 0
        interval: dict[str, torch.Tensor] = {}  # loss sums since the last log, kept on the device (no sync per step)
        interval_steps = 0
        while self.step < cfg.max_steps:
            self.module.train()
            for micro in range(cfg.grad_accum):
                batch = {}
                for key, b in next(batches).items():
                    self.skipped += b.get("skipped", [])
                    if b["input"] is not None:  # None: every sample of the batch was bad and skipped
                        batch[key] = {"input": to_device(b["input"], self.device),
                                      "target": to_device(b["target"], self.device)}
                        samples += len(b["index"]) * acc.num_processes
                sync = acc.no_sync(self.module) if micro < cfg.grad_accum - 1 else nullcontext()
                with sync:
                    parts = self.module(batch, step=self.step)
                    loss = sum((loss_weights or {}).get(k, 1.0) * v for k, v in parts.items()) / cfg.grad_accum
                    acc.backward(loss)
                for k, v in parts.items():
                    interval[k] = interval.get(k, 0.0) + v.detach().float() / cfg.grad_accum
            if cfg.clip_grad > 0:
                acc.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            interval_steps += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                # One host sync per log: the interval's mean loss over every process.
                keys = sorted(interval)
                means = acc.reduce(torch.stack([interval[k] for k in keys]) / interval_steps, "mean").tolist()
                losses = dict(zip(keys, means))
                elapsed = time.perf_counter() - start
                record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                          **{f"loss/{k}": v for k, v in losses.items()}, "samples_per_s": samples / max(elapsed, 1e-9)}
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | {"samples/s": f"{record['samples_per_s']:.0f}"})
                self.log(record)
                interval, interval_steps = {}, 0
            if evaluate is not None and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.log({"step": self.step, **{f"val/{k}": v for k, v in evaluate().items()}})
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.save_checkpoint(batches)
        bar.close()
        if acc.num_processes > 1:  # every process's skipped samples, for the summary
            from accelerate.utils import gather_object

            self.skipped = gather_object(self.skipped)
        if evaluate is not None:
            self.log({"step": self.step, **{f"val/{k}": v for k, v in evaluate().items()}})
        self.save_checkpoint(batches)
