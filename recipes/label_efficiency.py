"""Label efficiency: what masked pretraining buys when labels are scarce (issue 16).

For each classification task of the sample set:
  1. fine-tune from the pretrained backbone and from scratch on 5%, 25% and 100% of the training
     labels (a stratified subsample drawn by the seed: `tasks.NAME.train_fraction`), 3 seeds each;
  2. k-NN and linear probe (omnivec/protocols.py) of the frozen pretrained backbone against a
     randomly initialised one (one per seed);
  3. pretraining on all five modalities against pretraining on the task's modality alone (same
     steps): probes, and fine-tuning at the smallest fraction.
Every run appends a line to OUTPUT/results.jsonl (a rerun skips what is there; OUTPUT/settings.json
keeps a rerun from mixing in results under other configs or overrides); at the end come
summary.json (mean and standard deviation per cell), label_efficiency.md and label_efficiency.png.
Run from the repository root (the configs' paths are relative to it):

    python recipes/label_efficiency.py --output runs/label-efficiency            # pretrains first
    python recipes/label_efficiency.py --pretrained runs/pretrain-tiny/model --output runs/le
    python recipes/label_efficiency.py --quick --tasks digits --seeds 0 --output /tmp/le   # a smoke test
    python recipes/label_efficiency.py --output runs/le-lr --set lr=5e-4 --fractions 0.05 --no-target-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from omnivec.errors import ConfigError, exit_status
from omnivec.finetune_config import FinetuneConfig, StageSpec
from omnivec.model import OmniVecModel
from omnivec.parsing import require
from omnivec.plots import plot_label_efficiency
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.probes import FrozenPass, task_features
from omnivec.protocols import PROTOCOLS, ProtocolSettings, finetune_protocol, unsupported
from omnivec.recipe_config import load_recipe_config
from omnivec.registry import HEADS
from omnivec.reports import label_efficiency_report, summarize_runs
from omnivec.run_dir import RESUME_MAY_CHANGE, RUN_CONFIG, as_json, refuse_other_settings
from omnivec.tasks import load_task_data
from omnivec.variants import load_model

TASKS = ["digits", "spoken_digits", "spoken_mix", "shapes", "moving_digits", "acl_highlights"]
# set per run or per backbone by the recipe, so not overridable
RECIPE_FINETUNE_KEYS = ("init", "seed", "output_dir", "stages", "overwrite", "save_every")
RECIPE_PRETRAIN_KEYS = ("output_dir", "max_steps", "overwrite")
# --quick: a few steps of everything, to check that the recipe runs end to end
QUICK = {
    "pretrain": ["max_steps=3", "eval_batches=1", "plot_samples=1"],
    "finetune_steps": 3,
    "probe_epochs": 2,
    "eval_max_batches": 1,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--pretrained", help="a saved pretrained model (else one is pretrained with --pretrain-config)")
    p.add_argument("--pretrain-config", default="configs/pretrain/tiny.yaml")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        help="pretraining steps (default: the pretrain config's; with "
        "--pretrained, the steps its run recorded), also for the target-modality-only backbones",
    )
    p.add_argument(
        "--pretrain-set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the pretrain config, for every backbone it pretrains (e.g. "
        "model_overrides.modalities.image.mask_ratio=0.5; steps: --pretrain-steps)",
    )
    p.add_argument(
        "--finetune-config",
        default="configs/finetune/sample_sequential.yaml",
        help="the tasks, their data and loop settings; each task trains for its stage's steps",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        dest="finetune_set",
        help="overrides of the fine-tuning config, for every run (e.g. lr=5e-4 layer_decay=0.75)",
    )
    p.add_argument(
        "--no-target-only",
        dest="target_only",
        action="store_false",
        help="skip pretraining on each task's modality alone (and its probes and fine-tuning)",
    )
    p.add_argument("--tasks", nargs="+", default=TASKS, help=f"default: {' '.join(TASKS)}")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.25, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="share of each task's fine-tuning steps in the config to run (the demo runs 0.3)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny budget (a few steps each) to check it runs")
    p.add_argument("--device", default="auto", help="auto or cpu")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse (`ConfigError`, before any work) the numbers the configs would refuse only at their
    run, overrides of what the recipe sets itself, and `--pretrain-set` when nothing is pretrained."""
    for fraction in args.fractions:
        require(0 < fraction <= 1, "--fractions", "shares of the training labels in (0, 1]", fraction)
    for seed in args.seeds:
        require(0 <= seed < 2**32, "--seeds", "ints in [0, 2**32)", seed)
    require(
        math.isfinite(args.steps_scale) and args.steps_scale > 0,
        "--steps-scale",
        "a finite number > 0 (the share of each task's fine-tuning steps)",
        args.steps_scale,
    )
    require(
        args.pretrain_steps is None or args.pretrain_steps > 0, "--pretrain-steps", "an int > 0", args.pretrain_steps
    )
    for override in args.finetune_set:
        key = override.partition("=")[0]
        if key in RECIPE_FINETUNE_KEYS or key.endswith(".train_fraction"):
            raise ConfigError(
                f"--set {override}: the recipe sets {', '.join(RECIPE_FINETUNE_KEYS)} and "
                "tasks.*.train_fraction itself (--fractions, --seeds, --steps-scale)"
            )
    for override in args.pretrain_set:
        if override.partition("=")[0] in RECIPE_PRETRAIN_KEYS:
            raise ConfigError(
                f"--pretrain-set {override}: the recipe sets {', '.join(RECIPE_PRETRAIN_KEYS)} itself "
                "(steps: --pretrain-steps)"
            )
    if args.pretrain_set and args.pretrained and not args.target_only:
        raise ConfigError("--pretrain-set: nothing is pretrained (--pretrained and --no-target-only)")


def pretrain_config(args: argparse.Namespace, out: Path) -> PretrainConfig:
    """The pretrain config with the recipe's settings and `--pretrain-set`, validated (before any work)."""
    overrides = [f"output_dir={out}", f"device={args.device}", "overwrite=true", "save_every=0", "eval_every=0"]
    overrides += [f"max_steps={args.pretrain_steps}"] if args.pretrain_steps else []
    overrides += QUICK["pretrain"] if args.quick else []
    return load_recipe_config(PretrainConfig, args.pretrain_config, overrides + args.pretrain_set)


def pretrained_backbone(cfg: PretrainConfig, out: Path, modalities: list[str] | None = None) -> Path:
    """A backbone pretrained with `cfg` on `modalities` (default: all of its data) in `out`, reused
    if the folder has one."""
    model_dir = out / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    cfg = dataclasses.replace(cfg, output_dir=str(out))
    if modalities:
        cfg.data = {m: cfg.data[m] for m in modalities}
        cfg.weights = {m: w for m, w in cfg.weights.items() if m in modalities}
    pretrain(cfg)
    return model_dir


def recorded_steps(model_dir: Path) -> int | None:
    """The max_steps a `pretrain` run recorded beside its model folder, if any."""
    record = model_dir.parent / RUN_CONFIG
    run = json.loads(record.read_text()) if record.is_file() else {}
    return run["config"]["max_steps"] if run.get("recipe") == "pretrain" else None


class Results:
    """results.jsonl: one record per (task, protocol, init, fraction, seed); finished runs are skipped."""

    def __init__(self, path: Path):
        self.path = path
        self.records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        self.done = {self.key(r) for r in self.records}

    @staticmethod
    def key(r: dict) -> tuple:
        return r["task"], r["protocol"], r["init"], r["fraction"], r["seed"]

    def add(self, **record) -> None:
        self.records.append(record)
        self.done.add(self.key(record))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def recipe_settings(
    args: argparse.Namespace, finetune_cfg: FinetuneConfig, pretrain_cfg: PretrainConfig | None
) -> dict:
    """What the folder's results depend on: the resolved configs (the keys a run may change, and
    those the recipe sets per run, aside), the fine-tuning budget and the pretrained backbone."""

    def plain(cfg: Any, drop: tuple[str, ...]) -> dict:
        return {k: v for k, v in as_json(cfg).items() if k not in RESUME_MAY_CHANGE + drop}

    pretrained = None
    if args.pretrained:
        model_config = Path(args.pretrained) / "config.json"
        pretrained = {
            "path": str(Path(args.pretrained).resolve()),
            "config": json.loads(model_config.read_text()) if model_config.is_file() else None,
        }
    return {
        "fine-tuning": plain(finetune_cfg, RECIPE_FINETUNE_KEYS),
        "steps_scale": args.steps_scale,
        "quick": args.quick,
        "pretrained": pretrained,
        "pretraining": pretrain_cfg and plain(pretrain_cfg, ()),
        "pretrain_steps": pretrain_cfg and pretrain_cfg.max_steps,
    }


def check_settings(out: Path, settings: dict) -> None:
    """OUTPUT/settings.json: what the folder's results and backbones were made with. A rerun may add
    tasks, fractions and seeds; under other settings it would mix two recipes in one table, so it
    is refused (a folder with neither results nor backbones takes the new settings)."""
    path = out / "settings.json"
    made = (out / "results.jsonl").is_file() or any(out.glob("pretrain-*/model/config.json"))
    if made and path.is_file():
        refuse_other_settings(path, settings, f"{out}: its results or backbones")
    elif made:
        print(
            f"warning: {out} has results but no settings.json (an older run of this recipe); its settings are "
            "taken to be this run's"
        )
    path.write_text(json.dumps(settings, indent=2))


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = Path(args.output)
    started = time.perf_counter()
    check_args(args)
    cfg = load_recipe_config(
        FinetuneConfig,
        args.finetune_config,
        [f"device={args.device}", "save_every=0", "overwrite=true", *args.finetune_set],
    )
    unknown = sorted(set(args.tasks) - set(cfg.tasks))
    if unknown:
        raise ConfigError(f"--tasks: {unknown} are not tasks of {args.finetune_config} ({sorted(cfg.tasks)})")
    if args.pretrained:
        OmniVecModel.from_pretrained(args.pretrained)  # a missing or unreadable model fails here, before any work
        args.pretrain_steps = args.pretrain_steps or recorded_steps(Path(args.pretrained))
    pretraining = pretrain_config(args, out / "pretrain-all") if not args.pretrained or args.target_only else None
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, recipe_settings(args, cfg, pretraining))
    cfg.tasks = {t: cfg.tasks[t] for t in args.tasks}
    cfg.stages = [
        StageSpec(tasks=[t], steps=max(2, round(args.steps_scale * next(s.steps for s in cfg.stages if t in s.tasks))))
        for t in args.tasks
    ]
    if args.quick:
        cfg.stages = [dataclasses.replace(s, steps=QUICK["finetune_steps"]) for s in cfg.stages]
        cfg.eval_max_batches = QUICK["eval_max_batches"]
    data = load_task_data(cfg, ["train", "test"])
    modality = {t: data[t][0].modality for t in args.tasks}

    backbones = {
        "pretrained": Path(args.pretrained)
        if args.pretrained
        else pretrained_backbone(pretraining, out / "pretrain-all")
    }
    for m in dict.fromkeys(modality.values()) if args.target_only else []:
        backbones[f"target_only:{m}"] = pretrained_backbone(pretraining, out / f"pretrain-{m}", [m])
    results = Results(out / "results.jsonl")
    settings = ProtocolSettings(epochs=QUICK["probe_epochs"]) if args.quick else ProtocolSettings()

    # Frozen backbones: k-NN and linear probe on every task (a random backbone per seed).
    device = torch.device("cpu") if args.device == "cpu" else None
    for task in tqdm(args.tasks, desc="probes"):
        for init in ("pretrained", "target_only", "random") if args.target_only else ("pretrained", "random"):
            features = None
            for seed in args.seeds:
                if (task, "linear", init, 1.0, seed) in results.done:
                    continue
                if init == "random":
                    torch.manual_seed(seed)
                    model = load_model(None, cfg.model, cfg.model_overrides)
                else:
                    model = OmniVecModel.from_pretrained(
                        backbones[init if init == "pretrained" else f"target_only:{modality[task]}"]
                    )
                if features is None or init == "random":  # the other backbones do not change with the seed
                    features = task_features(model, data[task], FrozenPass(device))
                # the embedding protocols (the attentive probe needs the tokens, not `features`)
                for protocol in [p for p in ("knn", "linear") if not unsupported(model, p, data[task])]:
                    scores = PROTOCOLS[protocol](features, dataclasses.replace(settings, seed=seed))
                    for metric, value in scores.items():
                        results.add(
                            task=task, protocol=protocol, init=init, fraction=1.0, seed=seed, metric=metric, value=value
                        )
                    tqdm.write(f"{task} {protocol} {init} seed {seed}: {json.dumps(scores)}")

    # Fine-tuning: pretrained vs scratch per fraction; target-modality-only pretraining at the smallest.
    runs = [
        (task, init, fraction, seed)
        for task in args.tasks
        for seed in args.seeds
        for fraction in args.fractions
        for init in ("pretrained", "scratch")
    ]
    runs += [
        (task, "target_only", min(args.fractions), seed)
        for task in args.tasks
        for seed in args.seeds
        if args.target_only
    ]
    steps = {s.tasks[0]: s.steps for s in cfg.stages}
    for task, init, fraction, seed in tqdm(runs, desc="fine-tuning runs"):
        if (task, "finetune", init, fraction, seed) in results.done:
            continue
        backbone = {"pretrained": backbones["pretrained"], "scratch": None}.get(
            init, backbones.get(f"target_only:{modality[task]}")
        )
        value = finetune_protocol(
            cfg,
            task,
            backbone,
            fraction,
            seed,
            out / "finetune" / f"{task}-{init}-{fraction:g}-seed{seed}",
            steps[task],
        )
        metric = HEADS.get(cfg.tasks[task].head).main_metric
        results.add(task=task, protocol="finetune", init=init, fraction=fraction, seed=seed, metric=metric, value=value)
        tqdm.write(f"{task} {init} {fraction:.0%} labels seed {seed}: {metric}={value:.3f}")

    summary = summarize_runs(results.records)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    minutes = (time.perf_counter() - started) / 60
    (out / "label_efficiency.md").write_text(
        label_efficiency_report(
            summary,
            {
                "seeds": args.seeds,
                "fractions": args.fractions,
                "pretrain_steps": pretraining.max_steps if pretraining else args.pretrain_steps,
                "steps": {t: s.steps for t, s in ((s.tasks[0], s) for s in cfg.stages)},
                "pretrained": str(backbones["pretrained"]),
                "minutes": round(minutes, 1),
                "quick": args.quick,
                "overrides": {"pretraining": args.pretrain_set, "fine-tuning": args.finetune_set},
            },
        )
    )
    plot_label_efficiency(summary, out / "label_efficiency.png")
    print(
        f"label efficiency: {len(results.records)} results in {minutes:.1f} min -> {out / 'label_efficiency.md'}, "
        f"{out / 'label_efficiency.png'}"
    )
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
