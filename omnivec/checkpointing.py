"""The checkpoint format of a run: `OUTPUT/checkpoints/step_N/` holds accelerate's state (weights
as safetensors, optimizer, scheduler, RNG), the whole `OmniVecModel` in `model/` and
`trainer_state.json` (step, data position per process, skipped samples). Each is written aside as
`.tmp-step_N` and renamed into place when complete; weights holding NaN or Inf are never written;
a checkpoint written for another configuration is refused, naming the tensors, before it loads."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor

from .errors import CheckpointError, ConfigError, TrainingError
from .parsing import require
from .saved_model import WEIGHTS_NAME, state_dict_mismatch

CHECKPOINTS, STATE_FILE = "checkpoints", "trainer_state.json"


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a complete checkpoint folder (its `trainer_state.json` is written last)."""
    return (path / STATE_FILE).is_file()


def check_resume(resume: str | None, key: str) -> None:
    """`resume` must be none, auto or a complete checkpoint folder: else a `ConfigError` naming `key`."""
    require(
        resume in (None, "auto") or is_checkpoint(Path(resume)),
        key,
        "auto (the latest checkpoint in output_dir) or a checkpoint folder (OUTPUT/checkpoints/step_N)",
        resume,
    )


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints under `output_dir/checkpoints`, oldest first (half-written ones are never named)."""
    folder = Path(output_dir) / CHECKPOINTS
    return sorted(p for p in folder.glob("step_*") if is_checkpoint(p)) if folder.is_dir() else []


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir/checkpoints`."""
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def resume_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint a run with `resume` continues from: None when not resuming, or `auto` finds none."""
    if not resume:
        return None
    return latest_checkpoint(output_dir) if resume == "auto" else Path(resume)


def kept_checkpoint(output_dir: Path) -> str:
    """What a run that stops on bad numbers keeps: the sentence naming its last good checkpoint."""
    last = latest_checkpoint(output_dir)
    return (
        f"Its weights are not saved; the last good checkpoint is {last}."
        if last
        else f"Its weights are not saved; there is no checkpoint in {output_dir} yet."
    )


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


def check_compatible(checkpoint: Path, expected_state: Mapping[str, torch.Tensor]) -> None:
    """Fail with the differing tensor names, before loading anything, when a checkpoint was
    written for another configuration than the module whose `state_dict()` is `expected_state`.
    Reads only a safetensors header: accelerate's state, or under FSDP (whose state is in its own
    format) the checkpoint's model folder."""
    weights, prefix = checkpoint / "state" / "model.safetensors", ""
    if not weights.is_file():
        weights, prefix = checkpoint / "model" / WEIGHTS_NAME, "model."
    with safe_open(str(weights), "pt") as f:
        found = {prefix + k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    expected = {k: v for k, v in expected_state.items() if k.startswith(prefix)}
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
        raise ConfigError(f"{weights.parents[1]}: written for a different configuration than this run's: {problems}")


class Checkpoints:
    """The checkpoints of one run in `output_dir/checkpoints`, written and read through `accelerator`
    for a prepared module (whose `.model` is the `OmniVecModel` users get) and its optimizer."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, keep: int):
        self.accelerator, self.output_dir, self.keep = accelerator, Path(output_dir), keep
        self.is_main = accelerator.is_main_process

    def check_weights(self, module: nn.Module, step: int) -> None:
        """`TrainingError` naming the tensors, before a checkpoint is written, when any weight is
        NaN or infinite (one host sync). Under FSDP each process checks its shards."""
        unwrapped = self.accelerator.unwrap_model(module)
        params = [(n, p.to_local() if isinstance(p, DTensor) else p) for n, p in unwrapped.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).all()
        if self.accelerator.reduce((~finite).float(), "sum").item() == 0:
            return
        names = [n for n, p in params if not torch.isfinite(p).all()]
        listing = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise TrainingError(
            f"step {step}: the weights hold NaN or Inf ({listing or 'on another process'}); training stopped "
            f"there. {kept_checkpoint(self.output_dir)} Lower lr or clip gradients (clip_grad)."
        )

    def save_model(self, module: nn.Module, directory: Path) -> None:
        """Write `module.model` to `directory` (`OmniVecModel.save_pretrained`) with full weights.
        Every process calls this: under FSDP each holds shards, which `get_state_dict` gathers;
        the main process writes."""
        state = self.accelerator.get_state_dict(module)  # {name: full tensor} on the main process
        if self.is_main:
            weights = {name.removeprefix("model."): t for name, t in state.items() if name.startswith("model.")}
            self.accelerator.unwrap_model(module).model.save_pretrained(directory, weights)

    def save(
        self, step: int, module: nn.Module, optimizer: Any, batches: Any, skipped: list[str], val_step: int | None
    ) -> Path:
        """Write `checkpoints/step_N/` aside as `.tmp-step_N` and rename it into place when complete
        (never weights holding NaN or Inf: `check_weights`); keep the newest `keep`. `val_step`: the
        step of the run's last `val/` record, so a run resumed at its end does not log it again."""
        self.check_weights(module, step)
        folder = self.output_dir / CHECKPOINTS
        final, tmp = folder / f"step_{step:08d}", folder / f".tmp-step_{step:08d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        if self.accelerator.distributed_type == "FSDP":
            fill_optimizer_state(optimizer.optimizer)
        self.accelerator.save_state(str(tmp / "state"), safe_serialization=True)
        data = [batches.state_dict()]
        if self.accelerator.num_processes > 1:
            data = gather_object(data)
        self.save_model(module, tmp / "model")
        self.accelerator.wait_for_everyone()  # every process's part of the state is written before it moves
        if self.is_main:
            state = {"step": step, "data": data[0], "data_ranks": data, "skipped": skipped, "val_step": val_step}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(folder.glob("step_*"))[: -self.keep]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def restore(
        self, resume: str, module: nn.Module, batches: Any
    ) -> tuple[Path, tuple[int, list[str], int | None]] | None:
        """Load `resume` (a checkpoint folder, or `auto`) -> (the checkpoint, `load`'s result); None
        when `auto` finds no checkpoint. `auto` goes back from the newest complete checkpoint to the
        first that reads, warning about each damaged one it passes (`CheckpointError` when none reads)."""
        if resume != "auto":
            return Path(resume), self.load(Path(resume), module, batches)
        damaged = []
        for path in reversed(complete_checkpoints(self.output_dir)):
            error = None
            try:
                result = self.load(path, module, batches)
            except CheckpointError as e:
                error = e
            failed = self.accelerator.reduce(torch.tensor(float(error is not None), device=self.accelerator.device))
            if failed.item() == 0:  # every process read it: all resume from the same step
                return path, result
            damaged.append(str(error or f"{path}: damaged on another process"))
            if self.is_main:
                warnings.warn(f"{damaged[-1]}; trying the checkpoint before it", stacklevel=2)
        if damaged:
            raise CheckpointError(
                f"resume=auto: no checkpoint in {self.output_dir / CHECKPOINTS} can be read: " + "; ".join(damaged)
            )
        return None

    def load(self, path: Path, module: nn.Module, batches: Any) -> tuple[int, list[str], int | None]:
        """Restore the checkpoint `path` into the prepared module, optimizer, scheduler, RNG and
        `batches` (this process's data position) -> (step, skipped samples, step of the last `val/`
        record). A file that cannot be read is a `CheckpointError` naming the checkpoint and the part;
        one written for another configuration a `ConfigError`."""
        if not is_checkpoint(path):
            raise ConfigError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE})")
        with damage(path, "its weights header"):
            check_compatible(path, self.accelerator.unwrap_model(module).state_dict())
        with damage(path, STATE_FILE):
            state = json.loads((path / STATE_FILE).read_text())
            ranks = state.get("data_ranks") or []  # each process's position (streams differ per process)
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            data, step = (ranks[rank] if len(ranks) == world else state["data"]), int(state["step"])
        with damage(path, "its training state (state/: weights, optimizer, scheduler, RNG)"):
            self.accelerator.load_state(str(path / "state"))
        with damage(path, f"{STATE_FILE}'s data position"):
            batches.load_state_dict(data)
        return step, list(dict.fromkeys(state.get("skipped", []))), state.get("val_step")


@contextmanager
def damage(path: Path, part: str) -> Iterator[None]:
    """Any failure to read `part` of the checkpoint `path` (a truncated safetensors, pickle or JSON
    file, a missing file) becomes a `CheckpointError` naming both; a `ConfigError` (another
    configuration's checkpoint) or running out of memory passes through."""
    try:
        yield
    except (ConfigError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read {part}, the checkpoint is damaged ({type(e).__name__}: {e})") from e
