"""Channel robustness (issue 26, item 5): does a spoken-digit model hold up over a telephone line?

A model fine-tuned on the sample's synthetic voices scored at chance on a real speaker recorded at
8 kHz. The measurable proxy: the task's val and test clips copied through an 8 kHz channel with white
noise at a fixed SNR (omnivec/channel.py) into OUTPUT/proxy, a dataset every command reads. Then:
  1. fine-tune the task alone (one stage of --steps steps, from --init or from scratch) with audio
     augmentation off (`augment: {}`), on (`augment.audio`: AudioAugment's defaults) and on with
     telephone band-limiting (`band_limit: 0.5`), and band-limiting alone, without the defaults' other
     augmentations (`band_only`), once per seed;
  2. score each model (top-1) on val and test, clean and through the channel.
The setting to keep is the best on val proxy: it is chosen on val only; test is reported, never used
to choose. Every run appends a line to OUTPUT/runs.jsonl (a rerun skips what is there and may add
seeds and settings; OUTPUT/settings.json refuses one under other settings) and keeps its model in
OUTPUT/runs/SETTING-seedN/model (for `omnivec evaluate` on real recordings); at the end come
channel.json (every run and the summary) and channel.md. Run from the repository root:

    python recipes/channel_robustness.py --output runs/channel                       # scratch, 300 steps, seeds 0 1 2
    python recipes/channel_robustness.py --init runs/pretrain-tiny/model --output runs/channel-pretrained
    python recipes/channel_robustness.py --snr-db 10 --augment off band_limit --output runs/channel-10db
    python recipes/channel_robustness.py --quick --output /tmp/channel               # a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from omnivec.channel import TELEPHONE_RATE, channel_copy
from omnivec.config import augment_configs
from omnivec.datasets import load_task
from omnivec.errors import ConfigError, exit_status
from omnivec.evaluation import align_classes, evaluate_tasks
from omnivec.finetune_config import FinetuneConfig, StageSpec
from omnivec.finetuning import finetune
from omnivec.model import OmniVecModel
from omnivec.parsing import require
from omnivec.recipe_config import load_recipe_config
from omnivec.registry import HEADS
from omnivec.run_dir import RESUME_MAY_CHANGE, as_json, refuse_other_settings
from omnivec.tasks import load_task_data
from omnivec.variants import load_model

# setting -> the fine-tuning config's `augment` for it (AudioAugment, omnivec/modalities/audio_files.py)
SETTINGS: dict[str, dict[str, Any]] = {
    "off": {},
    "audio": {"audio": {}},  # AudioAugment's defaults
    "band_limit": {"audio": {"band_limit": 0.5}},  # the defaults and half the clips through 8 kHz
    # band-limiting alone: the channel without the defaults' SpecAugment and the rest (the sample config's since
    # 2026-12-05: it won on val proxy, docs/evaluation.md)
    "band_only": {
        "audio": {
            "band_limit": 0.5,
            "speed": [],
            "time_shift": 0,
            "gain_db": 0,
            "noise_snr_db": [],
            "freq_mask": 0,
            "time_mask": 0,
        }
    },
}
DEFAULT_SETTINGS = ["off", "audio", "band_limit", "band_only"]
COLUMNS = ("val clean", "val proxy", "test clean", "test proxy")
# set per run by the recipe, so not overridable with --set
RECIPE_KEYS = ("init", "seed", "output_dir", "stages", "overwrite", "save_every", "augment", "eval_split")
QUICK = {"steps": 3, "eval_max_batches": 1}  # and the first seed only


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--init", help="a saved (pretrained) model folder to fine-tune; default: from scratch")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml")
    p.add_argument("--task", default="spoken_digits", help="an audio classification task of --finetune-config")
    p.add_argument(
        "--augment",
        nargs="+",
        default=DEFAULT_SETTINGS,
        help=f"settings among {list(SETTINGS)}; default: {' '.join(DEFAULT_SETTINGS)}",
    )
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--snr-db", type=float, default=20.0, help="the proxy's white-noise SNR in dB")
    p.add_argument("--proxy-seed", type=int, default=0, help="the seed of the proxy's noise")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        dest="finetune_set",
        help="overrides of the fine-tuning config for every run (e.g. lr=1e-3 batch_size=16)",
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps and the first seed, to check it runs")
    p.add_argument("--device", default="auto", help="auto or cpu")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse (`ConfigError`, before any work) what no run could use."""
    for name in args.augment:
        require(name in SETTINGS, "--augment", f"settings among {list(SETTINGS)}", name)
    require(args.steps > 0, "--steps", "an int > 0", args.steps)
    for seed in args.seeds:
        require(0 <= seed < 2**32, "--seeds", "ints in [0, 2**32)", seed)
    require(0 <= args.proxy_seed < 2**32, "--proxy-seed", "an int in [0, 2**32)", args.proxy_seed)
    require(math.isfinite(args.snr_db), "--snr-db", "a finite number of decibels", args.snr_db)
    require(args.device in ("auto", "cpu"), "--device", "auto or cpu", args.device)
    for override in args.finetune_set:
        if override.partition("=")[0].split(".")[0] in RECIPE_KEYS:
            raise ConfigError(f"--set {override}: the recipe sets {', '.join(RECIPE_KEYS)} itself")
    args.init = None if str(args.init).lower() in ("none", "") else args.init
    if args.quick:
        args.seeds, args.steps = args.seeds[:1], QUICK["steps"]


def base_config(args: argparse.Namespace) -> FinetuneConfig:
    """--finetune-config with --set, restricted to --task in one stage of --steps, evaluated on val (validated)."""
    cfg = load_recipe_config(
        FinetuneConfig,
        args.finetune_config,
        [f"device={args.device}", "save_every=0", "overwrite=true", "eval_split=val", *args.finetune_set],
    )
    require(args.task in cfg.tasks, "--task", f"a task of {args.finetune_config} ({', '.join(cfg.tasks)})", args.task)
    spec = cfg.tasks[args.task]
    require(len(spec.data) == 1, f"tasks.{args.task}.data", "one dataset (the proxy copies it)", spec.data)
    cfg = dataclasses.replace(
        cfg, init=args.init, tasks={args.task: spec}, stages=[StageSpec(tasks=[args.task], steps=args.steps)]
    )
    return dataclasses.replace(cfg, eval_max_batches=QUICK["eval_max_batches"]) if args.quick else cfg


def check_model(cfg: FinetuneConfig, task: str, modality: str) -> None:
    """The task must be audio classification, and the model to fine-tune (--init, or `model` with its
    overrides) must have an audio encoder."""
    model = load_model(cfg.init, cfg.model, cfg.model_overrides)  # a missing or unreadable --init fails here
    top1 = HEADS.get(cfg.tasks[task].head).main_metric == "top1"
    if modality != "audio" or modality not in model.encoders or not top1:
        raise ConfigError(
            f"--task {task}: expected an audio classification task (top-1) and a model with an audio encoder "
            f"(the task is {modality} with a {cfg.tasks[task].head} head, the model has {', '.join(model.encoders)})"
        )


def recipe_settings(args: argparse.Namespace, cfg: FinetuneConfig) -> dict[str, Any]:
    """What the folder's results depend on (a rerun may add seeds and settings, nothing else)."""
    init = None
    if cfg.init:
        config = Path(cfg.init) / "config.json"
        init = {"path": str(Path(cfg.init).resolve()), "config": json.loads(config.read_text())}
    return {
        "fine-tuning": {k: v for k, v in as_json(cfg).items() if k not in RESUME_MAY_CHANGE + RECIPE_KEYS},
        "steps": args.steps,
        "init": init,
        "proxy": {"snr_db": args.snr_db, "seed": args.proxy_seed, "channel_rate": TELEPHONE_RATE},
        "augment": SETTINGS,
        "quick": args.quick,
    }


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """OUTPUT/settings.json: refuse a rerun under other settings in a folder with results."""
    path = out / "settings.json"
    if (out / "runs.jsonl").is_file() and path.is_file():
        refuse_other_settings(path, settings, f"{out}: its results")
    path.write_text(json.dumps(settings, indent=2))


def scores(model_dir: Path, task: str, data: dict[str, Any], cfg: FinetuneConfig, device: torch.device) -> dict:
    """{"val clean": top-1, "val proxy": ..., "test clean": ..., "test proxy": ...} of a fine-tuned model."""
    model = OmniVecModel.from_pretrained(model_dir).to(device)
    metric = HEADS.get(cfg.tasks[task].head).main_metric
    out = {}
    for channel, datasets in data.items():
        aligned = {task: align_classes(task, datasets, model.config.heads[task])}
        for split in ("val", "test"):
            found = evaluate_tasks(model, aligned, split, cfg.eval_batch_size, device, max_batches=cfg.eval_max_batches)
            out[f"{split} {channel}"] = found[task][metric]
    return out


def summarize(runs: list[dict[str, Any]], settings: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{setting: {column: {mean, sd (sample; 0 for one run), n}}} over the seeds."""
    summary = {}
    for name in settings:
        mine = [r for r in runs if r["setting"] == name]
        if mine:
            summary[name] = {
                c: {
                    "mean": statistics.fmean(v := [r[c] for r in mine]),
                    "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                    "n": len(v),
                }
                for c in COLUMNS
            }
    return summary


def report(summary: dict, best: str, meta: dict[str, Any]) -> str:
    """channel.md: one row per setting, the four columns as mean ± sd, and the setting chosen on val proxy."""
    quick = " (quick: a smoke-test budget, numbers mean nothing)" if meta["quick"] else ""
    lines = [
        f"# Channel robustness of {meta['task']}{quick}",
        "",
        f"Proxy (`proxy/`): each val and test clip resampled to {TELEPHONE_RATE} Hz and back to its rate, with white "
        f"noise at {meta['snr_db']:g} dB SNR added at {TELEPHONE_RATE} Hz (noise seed {meta['proxy_seed']}). "
        f"Fine-tuned alone for {meta['steps']} steps from {meta['init'] or 'scratch'}; seeds {meta['seeds']}; "
        f"{meta['metric']}, mean ± sample standard deviation over the seeds; chance {meta['chance']:.3f}; "
        f"{meta['minutes']} minutes."
        + (f" Fine-tuning overrides: `{' '.join(meta['overrides'])}`." if meta["overrides"] else ""),
        "",
        "| augmentation | augment | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for name, cells in summary.items():
        row = " | ".join(f"{cells[c]['mean']:.3f} ± {cells[c]['sd']:.3f}" for c in COLUMNS)
        lines.append(f"| {name} | `{json.dumps(SETTINGS[name])}` | {row} |")
    top = summary[best]["val proxy"]
    tied = [n for n in summary if n != best and summary[n]["val proxy"]["mean"] == top["mean"]]
    lines += [
        "",
        f"Best on val proxy: **{best}** ({top['mean']:.3f} ± {top['sd']:.3f}"
        + (f"; tied with {', '.join(tied)}: the first listed is named" if tied else "")
        + "); chosen on val only, test is reported, never used to choose.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = Path(args.output)
    started = time.perf_counter()
    check_args(args)
    cfg = base_config(args)
    task = args.task
    clean = load_task_data(cfg, ["train", "val", "test"])
    check_model(cfg, task, clean[task][0].modality)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, recipe_settings(args, cfg))

    # the dataset as it is on disk (labels not yet mapped by the task's label_map, which reads the proxy too)
    channel_copy(load_task(cfg.tasks[task].data[0]), out / "proxy", ("val", "test"), args.snr_db, args.proxy_seed)
    proxy_cfg = dataclasses.replace(cfg, tasks={task: dataclasses.replace(cfg.tasks[task], data=[str(out / "proxy")])})
    data = {"clean": clean[task], "proxy": load_task_data(proxy_cfg, ["val", "test"])[task]}
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu")

    record_path = out / "runs.jsonl"
    runs = [json.loads(line) for line in record_path.read_text().splitlines()] if record_path.is_file() else []
    done = {(r["setting"], r["seed"]) for r in runs}
    todo = [(name, seed) for name in args.augment for seed in args.seeds if (name, seed) not in done]
    for name, seed in tqdm(todo, desc="fine-tuning runs"):
        run_dir = out / "runs" / f"{name}-seed{seed}"
        run_cfg = dataclasses.replace(
            cfg, seed=seed, output_dir=str(run_dir), augment=augment_configs(SETTINGS[name], "augment")
        )
        run_started = time.perf_counter()
        finetune(run_cfg)
        shutil.rmtree(run_dir / "stages", ignore_errors=True)  # the same model again, per stage
        found = scores(run_dir / "model", task, data, cfg, device)
        record = {"setting": name, "seed": seed, **{c: found[c] for c in COLUMNS}}
        record["minutes"] = round((time.perf_counter() - run_started) / 60, 2)
        runs.append(record)
        with record_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(f"{name} seed {seed}: " + ", ".join(f"{c} {record[c]:.3f}" for c in COLUMNS))

    wanted = [r for r in runs if r["setting"] in args.augment and r["seed"] in args.seeds]
    summary = summarize(wanted, args.augment)
    best = max(summary, key=lambda name: summary[name]["val proxy"]["mean"])  # val only; ties: the first listed
    minutes = round((time.perf_counter() - started) / 60, 1)
    meta = {
        "task": task,
        "quick": args.quick,
        "snr_db": args.snr_db,
        "proxy_seed": args.proxy_seed,
        "steps": args.steps,
        "init": cfg.init,
        "seeds": args.seeds,
        "metric": HEADS.get(cfg.tasks[task].head).main_metric,
        "chance": 1 / len(clean[task][0].classes),
        "minutes": minutes,
        "overrides": args.finetune_set,
    }
    (out / "channel.json").write_text(
        json.dumps(
            {"meta": meta, "augment": SETTINGS, "runs": wanted, "summary": summary, "best_on_val_proxy": best}, indent=2
        )
    )
    (out / "channel.md").write_text(report(summary, best, meta))
    print(report(summary, best, meta) + f"written to {out / 'channel.md'} and {out / 'channel.json'}")
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
