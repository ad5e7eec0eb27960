"""The run folder policy: before any work, `output_dir` must be writable and must not hold
another run (unless `overwrite=true` replaces it, or `resume` continues the same config); the run's
config is recorded as `run_config.json`; a resumed run drops the metrics its last checkpoint did
not reach, so each step is logged once."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpointing import CHECKPOINTS, latest_checkpoint, resume_checkpoint
from .errors import ConfigError
from .parsing import join_key

RUN_CONFIG = "run_config.json"
TENSORBOARD = "tensorboard"  # the TensorBoard run folder in output_dir (log_with: tensorboard)
METRICS = "metrics.jsonl"

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
    "cache_mb",
    "compile",
    "log_every",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "skip_bad",
    "log_with",
    "activation_checkpointing",
)


def prepare_output_dir(cfg: Any, recipe: str) -> Path:
    """Check `cfg.output_dir` before any work, then record the run's config in it as `run_config.json`.

    - The folder must be creatable and writable (else a `ConfigError` naming it).
    - A folder holding another run (a `model/`, `checkpoints/`, `stages/`, `metrics.jsonl`,
      `eval.json` or `summary.json`) is refused, unless `overwrite=true` (that run's outputs,
      `RUN_OUTPUTS`, are removed first; other files stay) or `resume` is set and the run's
      `run_config.json` records the same recipe and config, `RESUME_MAY_CHANGE` aside. A run
      without `run_config.json` (an older omnivec, a copied checkpoint) can be resumed only from a
      checkpoint it holds (then its tensors are checked against the model).

    Every process checks; only the main one (`RANK` 0) removes or writes, and it first removes what
    a killed run left aside (`remove_partial_writes`). Returns the folder."""
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
        remove_partial_writes(out)
        record = {"recipe": recipe, "config": as_json(cfg)}
        tmp = out / f".tmp-{RUN_CONFIG}"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out / RUN_CONFIG)
    return out


def resumes_recorded_run(cfg: Any) -> bool:
    """Whether this run continues `cfg.output_dir`'s own run under a recorded config: `resume` set
    and `run_config.json` there, which `prepare_output_dir` then holds this config to. Ask before
    `prepare_output_dir`, which rewrites the record. Such a run is rebuilt from the model config
    its checkpoint in this folder saved, where it has one, not from today's variant. (Under several
    processes another rank may see the record rank 0 has just written for a new run; a new run
    has no checkpoint yet, so every rank builds the same model.)"""
    return bool(cfg.resume) and (Path(cfg.output_dir) / RUN_CONFIG).is_file()


def recorded_checkpoint(cfg: Any) -> Path | None:
    """The checkpoint of `cfg.output_dir`'s own run that `cfg.resume` continues, when
    `resumes_recorded_run`; else None (also for a checkpoint of another folder)."""
    out = Path(cfg.output_dir)
    path = resume_checkpoint(cfg.resume, out) if resumes_recorded_run(cfg) else None
    return path if path is not None and path.resolve().parent.parent == out.resolve() else None


MODEL_TMP = re.compile(r"\.tmp-[a-z0-9_]{8}")  # save_pretrained's folder aside (tempfile.TemporaryDirectory)


def remove_partial_writes(out: Path) -> None:
    """Remove what a run killed while writing left aside, by omnivec's own names only: in the run
    folder and each fine-tuning stage's, `.tmp-run_config.json`, `.tmp-metrics.jsonl`, half-written
    checkpoints (`checkpoints/.tmp-step_N`) and model files (`model/.tmp-XXXXXXXX`, `model_ema/...`)."""
    for run in [out, *sorted(out.glob("stages/*"))]:
        leftovers = [run / f".tmp-{RUN_CONFIG}", run / f".tmp-{METRICS}"]
        leftovers += run.glob(f"{CHECKPOINTS}/.tmp-step_{'[0-9]' * 8}")
        leftovers += [p for m in ("model", "model_ema") for p in run.glob(f"{m}/.tmp-*") if MODEL_TMP.fullmatch(p.name)]
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()


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


def check_resumable(cfg: Any, recipe: str, out: Path, held: list[str]) -> None:
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


def as_json(cfg: Any) -> dict[str, Any]:
    """`cfg` as the plain data of its JSON record (tuples become lists; odd YAML values strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key: saved value there, new value now` for every dotted key whose value differs, except
    the top-level keys in `RESUME_MAY_CHANGE`."""

    def flat(x: Any, prefix: str) -> dict[str, Any]:
        if isinstance(x, Mapping) and x:
            return {k: v for key, sub in x.items() for k, v in flat(sub, join_key(prefix, str(key))).items()}
        if isinstance(x, list) and x:
            return {k: v for i, sub in enumerate(x) for k, v in flat(sub, join_key(prefix, str(i))).items()}
        return {prefix: x}

    a, b = flat(saved, ""), flat(now, "")
    unset = "(unset)"
    return [
        f"{k}: {a.get(k, unset)!r} there, {b.get(k, unset)!r} now"
        for k in sorted(set(a) | set(b))
        if a.get(k, unset) != b.get(k, unset) and k.split(".")[0].split("[")[0] not in RESUME_MAY_CHANGE
    ]


def trim_metrics(output_dir: Path, step: int) -> None:
    """On resume, drop the records of steps after `step` from `metrics.jsonl` (logged by a run
    killed after its last checkpoint; all of them when no checkpoint was found and the run starts
    again from step 0): a resumed run logs each step once."""
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # half a line: the process was killed while writing it
        if step and logged <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
        tmp = path.with_name(f".tmp-{METRICS}")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def changes_summary(changed: list[str]) -> str:
    """The first four of `config_changes` and how many more."""
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def refuse_other_settings(path: Path, settings: Mapping[str, Any], what: str) -> None:
    """A recipe's rerun in a folder with results: `ConfigError` ("`what` were made with other
    settings (...)") unless the settings recorded in `path` (JSON) are `settings`."""
    try:
        before = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); delete it only if you know the folder's settings") from e
    changed = config_changes(before, settings)
    if changed:
        raise ConfigError(f"{what} were made with other settings ({changes_summary(changed)}); use a new --output")
