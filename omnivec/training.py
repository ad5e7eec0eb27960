"""The training loop every recipe uses: accelerate for devices, mixed precision and distribution;
AdamW with warmup + cosine; gradient accumulation and clipping; progress bar, `metrics.jsonl`;
atomic checkpoints every N steps and `resume=auto|PATH` that continues exactly where a run stopped;
`prepare_output_dir` guards the run folder before any work, and a NaN or infinite loss stops the
run naming its step, before any checkpoint holds its weights."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import augment_configs, join_key, non_finite_numbers, require, require_positive
from .errors import ConfigError, TrainingError

CHECKPOINTS, STATE_FILE, RUN_CONFIG = "checkpoints", "trainer_state.json", "run_config.json"
TENSORBOARD = "tensorboard"  # the TensorBoard run folder in output_dir (log_with: tensorboard)


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
    overwrite: bool = False  # replace the run already in output_dir (its outputs are removed first)
    seed: int = 0
    skip_bad: bool = False  # skip unreadable samples (counted and listed at the end) instead of stopping
    shuffle_buffer: int = 1000  # streamed datasets (shards, hf:): samples each worker shuffles among
    compile: bool = False  # torch.compile every transformer block (worth it on GPUs; minutes of compiling first)
    # Recompute the activations of the trunk's and the modality encoders' blocks in the backward pass instead of
    # keeping them (torch.utils.checkpoint, non-reentrant): far less activation memory, about a third more compute
    activation_checkpointing: bool = False
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
            "eval_every",
            "save_every",
            "shuffle_buffer",
        ):
            require(getattr(self, name) >= 0, join_key(prefix, name), "a number >= 0", getattr(self, name))
        require(
            self.precision in ("no", "bf16", "fp16"), join_key(prefix, "precision"), "no, bf16 or fp16", self.precision
        )
        require(self.device in ("auto", "cpu"), join_key(prefix, "device"), "auto or cpu", self.device)
        require(len(self.betas) == 2, join_key(prefix, "betas"), "two values", self.betas)
        require(all(0 <= b < 1 for b in self.betas), join_key(prefix, "betas"), "two values in [0, 1)", self.betas)
        require(0 <= self.seed < 2**32, join_key(prefix, "seed"), "an int in [0, 2**32)", self.seed)
        require(bool(self.output_dir), join_key(prefix, "output_dir"), "a folder", self.output_dir)
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


def param_groups(
    module: nn.Module, weight_decay: float, lr: float, lr_scales: Mapping[str, float] | None = None
) -> list[dict]:
    """Weight decay on matrices only (biases, norms, position embeddings and learned tokens go
    without); `lr_scales` maps a parameter-name prefix to a learning-rate multiplier."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "pos_embed" not in name and "token" not in name
        scale = next((s for prefix, s in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
        for (decay, scale), ps in groups.items()
    ]


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


# What runs write in their output_dir; `overwrite=true` removes these, and only these (pretrain_config.json:
# older runs recorded their config there too).
RUN_OUTPUTS = (
    "model",
    "model_ema",
    CHECKPOINTS,
    "stages",
    "metrics.jsonl",
    "eval.json",
    "eval.md",
    "summary.json",
    "loss.png",
    "reconstructions.png",
    "pretrain_config.json",
    RUN_CONFIG,
    TENSORBOARD,
)
RUN_MARKERS = ("model", CHECKPOINTS, "stages", "metrics.jsonl", "eval.json", "summary.json")  # a folder holds a run
# Config keys a resumed run may change: how long to train on, where, and how often to log and save.
RESUME_MAY_CHANGE = (
    "output_dir",
    "resume",
    "overwrite",
    "max_steps",
    "device",
    "num_workers",
    "compile",
    "log_every",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "skip_bad",
    "log_with",
    "activation_checkpointing",
)


def prepare_output_dir(cfg: TrainConfig, recipe: str) -> Path:
    """Check `cfg.output_dir` before any work, then record the run's config in it as `run_config.json`.

    - The folder must be creatable and writable (else a `ConfigError` naming it).
    - A folder holding another run (a `model/`, `checkpoints/`, `stages/`, `metrics.jsonl`,
      `eval.json` or `summary.json`) is refused, unless `overwrite=true` (that run's outputs,
      `RUN_OUTPUTS`, are removed first; other files stay) or `resume` is set and the run's
      `run_config.json` records the same recipe and config, `RESUME_MAY_CHANGE` aside. A run
      without `run_config.json` (an older omnivec, a copied checkpoint) can be resumed only from a
      checkpoint it holds (then its tensors are checked against the model).

    Every process checks; only the main one (`RANK` 0) removes or writes. Returns the folder."""
    out = Path(cfg.output_dir)
    check_writable(out)
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    main = os.environ.get("RANK", "0") == "0"
    if held and cfg.overwrite:
        if main:
            for name in RUN_OUTPUTS:
                target = out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
    elif held:
        check_resumable(cfg, recipe, out, held)
    if main:
        record = {"recipe": recipe, "config": as_json(cfg)}
        tmp = out / f".tmp-{RUN_CONFIG}"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out / RUN_CONFIG)
    return out


def check_writable(folder: Path) -> None:
    """A `ConfigError` naming `folder` unless it is (or can be made) a folder this process can write in."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir: {folder} is a file, expected a folder for the run")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write in {folder} ({e.strerror or e})") from e


def check_resumable(cfg: TrainConfig, recipe: str, out: Path, held: list[str]) -> None:
    """Refuse (`ConfigError`) to write into `out`, which holds a run (`held`), unless this run
    resumes that one: `resume` set and the same recipe and config (`RESUME_MAY_CHANGE` aside)."""
    options = "use another output_dir, or overwrite=true to replace that run"
    if not cfg.resume:
        raise ConfigError(
            f"output_dir: {out} already holds a run ({', '.join(held)}); refusing to replace it: "
            f"{options}, or resume=auto to continue it (same config)"
        )
    saved_file = out / RUN_CONFIG
    if not saved_file.is_file():
        if cfg.resume == "auto" and latest_checkpoint(out) is None:
            raise ConfigError(
                f"output_dir: {out} holds a run ({', '.join(held)}) with no {RUN_CONFIG} and no "
                f"checkpoint to resume from; {options}"
            )
        return  # an older run: its checkpoint's tensors are checked when it is loaded
    try:
        saved = json.loads(saved_file.read_text())
        saved_recipe, saved_config = saved["recipe"], saved["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{saved_file}: not a run config written by omnivec ({e}); {options}") from e
    if saved_recipe != recipe:
        raise ConfigError(
            f"output_dir: {out} holds a {saved_recipe} run; this {recipe} run cannot resume it: {options}"
        )
    changed = config_changes(saved_config, as_json(cfg))
    if changed:
        listing = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise ConfigError(
            f"output_dir: {out} holds a run of another config ({listing}); resume continues the "
            f"same config only (it may change {', '.join(RESUME_MAY_CHANGE)}): {options}"
        )


def as_json(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as the plain data of its JSON record (tuples become lists; odd YAML values strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key: saved value there, new value now` for every dotted key whose value differs, except
    the top-level keys in `RESUME_MAY_CHANGE`."""

    def flat(x: Any, prefix: str) -> dict[str, Any]:
        if isinstance(x, Mapping) and x:
            return {k: v for key, sub in x.items() for k, v in flat(sub, join_key(prefix, str(key))).items()}
        if isinstance(x, list) and x:
            return {k: v for i, sub in enumerate(x) for k, v in flat(sub, f"{prefix}[{i}]").items()}
        return {prefix: x}

    a, b = flat(saved, ""), flat(now, "")
    unset = "(unset)"
    return [
        f"{k}: {a.get(k, unset)!r} there, {b.get(k, unset)!r} now"
        for k in sorted(set(a) | set(b))
        if a.get(k, unset) != b.get(k, unset) and k.split(".")[0].split("[")[0] not in RESUME_MAY_CHANGE
    ]


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


def fill_optimizer_state(optimizer: torch.optim.AdamW) -> None:
    """Give every trainable parameter AdamW state, as AdamW creates it before a parameter's first
    update (step 0, zero moments: numerically the same as none). Parameters that have had no
    gradient yet (a modality the data lacks, or whose turn has not come) have none, and torch's
    FSDP optimizer loading refuses a checkpoint that misses any."""
    for group in optimizer.param_groups:
        on_device = group["fused"] or group["capturable"]
        for p in group["params"]:
            if p.requires_grad and not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device) if on_device else torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    **(
                        {"max_exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                        if group["amsgrad"]
                        else {}
                    ),
                }


class Trainer:
    """Runs `module(batch, step) -> {name: loss}` for `cfg.max_steps` optimizer steps over `batches`,
    where `batch` is `{key: {"input": ..., "target": ...}}` on the training device.

    `batches` yields `{key: collated batch}` (see `MultiModalLoader`) and has `state_dict()` /
    `load_state_dict()` for its position, saved with every checkpoint. `module.model` is the
    `OmniVecModel` a checkpoint carries for users (`save_model`); `module.after_step(step)`, when it
    has one, runs after every optimizer step (weight EMA). Records go to `metrics.jsonl` and, with
    `log_with`, to accelerate's tracker (`close` ends it).
    """

    def __init__(self, cfg: TrainConfig, module: nn.Module):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed

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
        optimizer = torch.optim.AdamW(
            param_groups(module, cfg.weight_decay, cfg.lr, lr_scales), lr=cfg.lr, betas=tuple(cfg.betas), fused=fused
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg))
        if cfg.activation_checkpointing:
            module.model.set_grad_checkpointing(True)
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
        """Append one JSON line to `output_dir/metrics.jsonl`, and log it to the tracker (main process only)."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.cfg.log_with:
                self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        """Flush and close the trackers: accelerate's `end_training`, but the process group stays
        (the next fine-tuning stage trains with it)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()

    def resume(self, batches: Any) -> None:
        """Load `cfg.resume` (auto: the latest checkpoint, or a fresh start when there is none)."""
        if not self.cfg.resume:
            return
        path = latest_checkpoint(self.output_dir) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
        self.check_compatible(path)
        self.accelerator.load_state(str(path / "state"))
        state = json.loads((path / STATE_FILE).read_text())
        self.step = state["step"]
        self.skipped = unique(state.get("skipped", []))
        ranks = state.get("data_ranks") or []  # each process's position (streams differ per process)
        batches.load_state_dict(
            ranks[self.accelerator.process_index] if len(ranks) == self.accelerator.num_processes else state["data"]
        )
        if self.is_main:
            tqdm.write(f"resumed from {path} at step {self.step}")

    def check_compatible(self, checkpoint: Path) -> None:
        """Fail with the differing tensor names, before loading anything, when a checkpoint was
        written for another configuration. Reads only a safetensors header: accelerate's state, or
        under FSDP (whose state is in its own format) the checkpoint's model folder."""
        from safetensors import safe_open
        from torch.distributed.tensor import DTensor

        from .model import WEIGHTS_NAME, state_dict_mismatch

        weights, prefix = checkpoint / "state" / "model.safetensors", ""
        if not weights.is_file():
            weights, prefix = checkpoint / "model" / WEIGHTS_NAME, "model."
        with safe_open(str(weights), "pt") as f:
            found = {prefix + k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        expected = {k: v for k, v in self.unwrapped.state_dict().items() if k.startswith(prefix)}
        shared: dict[int, list[str]] = {}  # tied tensors are saved once
        for k, v in expected.items():
            shared.setdefault((v.to_local() if isinstance(v, DTensor) else v).data_ptr(), []).append(k)
        for names in shared.values():
            if len(names) > 1 and any(n in found for n in names):
                for n in names:
                    if n not in found:
                        expected.pop(n)
        problems = state_dict_mismatch(expected, found)
        if problems:
            raise ConfigError(
                f"{weights.parents[1]}: written for a different configuration than this run's: {problems}"
            )

    def trim_metrics(self) -> None:
        """On resume, drop the records of steps after `self.step` from `metrics.jsonl` (logged by a
        run killed after its last checkpoint; all of them when no checkpoint was found and the run
        starts again from step 0): a resumed run logs each step once."""
        path = self.output_dir / "metrics.jsonl"
        if not self.cfg.resume or not self.is_main or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue  # half a line: the process was killed while writing it
            if self.step and step <= self.step:
                keep.append(line if line.endswith("\n") else line + "\n")
        if keep != lines:
            tmp = path.with_name(".tmp-metrics.jsonl")
            tmp.write_text("".join(keep))
            os.replace(tmp, path)

    def interval_means(
        self, sums: Mapping[str, torch.Tensor], counts: Mapping[str, int], recent: list[tuple[int, str, torch.Tensor]]
    ) -> dict[str, float]:
        """The mean loss per name over the `counts[name]` micro-batches since the last log that had
        it, and over every process (one host sync). A mean that is not finite stops the run:
        `TrainingError` naming the first step whose loss was not finite, found in `recent` ((step,
        name, loss) of each micro-batch)."""
        keys = sorted(sums)
        if not keys:
            return {}
        means = self.accelerator.reduce(torch.stack([sums[k] / counts[k] for k in keys]), "mean").tolist()
        if not all(math.isfinite(m) for m in means):
            self.stop_non_finite(recent)
        return dict(zip(keys, means))

    def stop_non_finite(self, recent: list[tuple[int, str, torch.Tensor]]) -> None:
        """Raise `TrainingError` naming the first step (over every process) whose loss in `recent`
        is NaN or infinite, and the last good checkpoint, which stays as it is."""
        values = torch.stack([v.detach().float() for _, _, v in recent]).cpu()
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        first = [(recent[bad[0]][0], recent[bad[0]][1], values[bad[0]].item())] if bad else []
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            first = gather_object(first)
        if first:
            step, name, value = min(first, key=lambda f: (f[0], f[1]))
            what = f"step {step}: the {name!r} loss is {value}"
        else:  # every loss finite, their sum not: far too large
            what = f"steps {recent[0][0]}-{recent[-1][0]}: the losses overflow when averaged"
        raise TrainingError(
            f"{what}; training stopped there. {self.kept_checkpoint()} Lower lr, clip "
            "gradients (clip_grad) or check the data."
        )

    def kept_checkpoint(self) -> str:
        last = latest_checkpoint(self.output_dir)
        return (
            f"Its weights are not saved; the last good checkpoint is {last}."
            if last
            else f"Its weights are not saved; there is no checkpoint in {self.output_dir} yet."
        )

    def check_weights(self) -> None:
        """`TrainingError` naming the tensors, before a checkpoint is written, when any weight is
        NaN or infinite (one host sync). Under FSDP each process checks its shards."""
        from torch.distributed.tensor import DTensor

        params = [(n, p.to_local() if isinstance(p, DTensor) else p) for n, p in self.unwrapped.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).all()
        if self.accelerator.reduce((~finite).float(), "sum").item() == 0:
            return
        names = [n for n, p in params if not torch.isfinite(p).all()]
        listing = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise TrainingError(
            f"step {self.step}: the weights hold NaN or Inf ({listing or 'on another process'}); "
            f"training stopped there. {self.kept_checkpoint()} Lower lr or clip gradients (clip_grad)."
        )

    def save_model(self, directory: Path) -> None:
        """Write `module.model` to `directory` (`OmniVecModel.save_pretrained`) with full weights.
        Every process calls this: under FSDP each holds shards, which `get_state_dict` gathers;
        the main process writes."""
        state = self.accelerator.get_state_dict(self.module)  # {name: full tensor} on the main process
        if self.is_main:
            self.unwrapped.model.save_pretrained(
                directory,
                {name.removeprefix("model."): tensor for name, tensor in state.items() if name.startswith("model.")},
            )

    def save_checkpoint(self, batches: Any) -> Path:
        """Write `checkpoints/step_N/` aside as `.tmp-step_N` and rename it into place when complete
        (never weights holding NaN or Inf: `check_weights`)."""
        from accelerate.utils import gather_object

        self.check_weights()
        folder = self.output_dir / CHECKPOINTS
        final, tmp = folder / f"step_{self.step:08d}", folder / f".tmp-step_{self.step:08d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        if self.accelerator.distributed_type == "FSDP":
            fill_optimizer_state(self.optimizer.optimizer)
        self.accelerator.save_state(str(tmp / "state"), safe_serialization=True)
        data = [batches.state_dict()]
        if self.accelerator.num_processes > 1:
            data = gather_object(data)
        self.save_model(tmp / "model")
        self.accelerator.wait_for_everyone()  # every process's part of the state is written before it moves
        if self.is_main:
            state = {"step": self.step, "data": data[0], "data_ranks": data, "skipped": self.skipped}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(folder.glob("step_*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def fit(
        self,
        batches: Iterator[dict[str, Any]],
        evaluate: Callable[[], dict[str, float]] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Train until `cfg.max_steps`, logging, evaluating and checkpointing on the way."""
        cfg, acc = self.cfg, self.accelerator
        self.resume(batches)
        self.trim_metrics()
        if evaluate is not None and self.step == 0:
            self.log({"step": 0, **{f"val/{k}": v for k, v in evaluate().items()}})
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not self.is_main, dynamic_ncols=True)
        start, samples = time.perf_counter(), 0
        interval: dict[str, torch.Tensor] = {}  # loss sums since the last log, kept on the device (no sync per step)
        counts: dict[str, int] = {}  # micro-batches each loss was in (round_robin: one modality per step)
        recent: list[tuple[int, str, torch.Tensor]] = []  # (step, name, loss) since the last log: finds a NaN's step
        while self.step < cfg.max_steps:
            self.module.train()
            for micro in range(cfg.grad_accum):
                batch = {}
                for key, b in next(batches).items():
                    if b.get("skipped"):  # each bad sample listed once, however many epochs meet it
                        self.skipped = unique(self.skipped + b["skipped"])
                    if b["input"] is not None:  # None: every sample of the batch was bad and skipped
                        batch[key] = {
                            "input": to_device(b["input"], self.device),
                            "target": to_device(b["target"], self.device),
                        }
                        samples += len(b["index"]) * acc.num_processes
                sync = acc.no_sync(self.module) if micro < cfg.grad_accum - 1 else nullcontext()
                with sync:
                    parts = self.module(batch, step=self.step)
                    loss = sum((loss_weights or {}).get(k, 1.0) * v for k, v in parts.items()) / cfg.grad_accum
                    acc.backward(loss)
                for k, v in parts.items():
                    interval[k] = interval.get(k, 0.0) + v.detach().float()
                    counts[k] = counts.get(k, 0) + 1
                    recent.append((self.step + 1, k, v.detach()))
            if cfg.clip_grad > 0:
                acc.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if hasattr(self.unwrapped, "after_step"):
                self.unwrapped.after_step(self.step)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                # One host sync per log: the interval's mean loss over every process (stops at a NaN).
                losses = self.interval_means(interval, counts, recent)
                elapsed = time.perf_counter() - start
                record = {
                    "step": self.step,
                    "lr": self.scheduler.get_last_lr()[0],
                    **{f"loss/{k}": v for k, v in losses.items()},
                    "samples_per_s": samples / max(elapsed, 1e-9),
                }
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in losses.items()} | {"samples/s": f"{record['samples_per_s']:.0f}"}
                )
                self.log(record)
                interval, counts, recent = {}, {}, []
            if (
                evaluate is not None
                and cfg.eval_every
                and self.step % cfg.eval_every == 0
                and self.step < cfg.max_steps
            ):
                self.log({"step": self.step, **{f"val/{k}": v for k, v in evaluate().items()}})
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.interval_means(interval, counts, recent)  # losses since the last log must be finite
                self.save_checkpoint(batches)
        bar.close()
        if acc.num_processes > 1:  # every process's skipped samples, for the summary
            from accelerate.utils import gather_object

            self.skipped = unique(gather_object(self.skipped))
        if evaluate is not None:
            self.log({"step": self.step, **{f"val/{k}": v for k, v in evaluate().items()}})
        self.save_checkpoint(batches)


def unique(items: list[str]) -> list[str]:
    """`items` without repeats, in first-seen order."""
    return list(dict.fromkeys(items))
