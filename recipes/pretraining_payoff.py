"""Does pretraining pay off within a CPU hour (issue 26)? One command, one wall-clock budget:

  - pretrain omnivec_tiny (--pretrain-config) with each objective {mae, latent}, on all the config's
    data and on each task's modality alone, for each seed, saving the backbone at --points evenly
    spaced steps (with the pretraining seconds each was reached at);
  - probe each saved backbone, and a random backbone per seed (the floor: each run's own step 0),
    with k-NN and a linear probe on every classification task of --finetune-config: fitted on the
    train split, the objective chosen on val, every table on test;
  - write OUTPUT/payoff.json (every run and its probes), payoff.md (the better objective against
    random; latent's time to MAE's final k-NN; all the data against the modality alone) and
    payoff.png (k-NN against pretraining minutes).

The budget is planned up front: a few timed steps of each run kind, the random backbones' probe
times, then steps per run so that the grid fits --minutes (the all-data runs of each objective get
the same seconds; a modality-alone run gets the steps of its objective's all-data run). A rerun
reuses the plan and every finished run, and refuses other settings, naming the difference. Run
from the repository root:

    python recipes/pretraining_payoff.py --output runs/payoff                       # 60 minutes
    python recipes/pretraining_payoff.py --output /tmp/payoff --quick --seeds 0 --tasks digits shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from payoff_report import plot, probe_backbone, report, summarize
from tqdm.auto import tqdm

from omnivec.errors import ConfigError, DataError, ModelError, TrainingError
from omnivec.finetune_config import FinetuneConfig
from omnivec.model import OmniVecModel
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.protocols import ProtocolSettings
from omnivec.recipe_config import load_recipe_config
from omnivec.run_dir import as_json, changes_summary, config_changes
from omnivec.tasks import load_task_data
from omnivec.variants import load_model

OBJECTIVES = ["mae", "latent"]
SET_BY_RECIPE = ("output_dir", "max_steps", "seed", "objective", "objectives", "save_every", "keep_checkpoints")
SET_BY_RECIPE += ("log_every", "eval_every", "overwrite", "resume", "device")
FIXED = ["eval_every=0", "eval_batches=1", "plot_samples=1"]  # the reconstruction loss is not what is judged
TIMING_STEPS = 5  # steps of each timing run; the first (loader start) counts as overhead
QUICK = {"steps": 2, "points": 2, "probe_epochs": 2}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every other refusal
        raise ConfigError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder (a rerun continues it)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the whole grid (default 60)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="pretraining and random-backbone seeds")
    p.add_argument("--tasks", nargs="+", help="classification tasks of --finetune-config (default: all of them)")
    p.add_argument(
        "--points", type=int, default=2, help="backbones saved and probed per run, evenly spaced (2: half and end)"
    )
    p.add_argument("--pretrain-config", default="configs/pretrain/tiny.yaml")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml", help="the tasks' data")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="pretrain overrides")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"])
    p.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps a run, to check it runs (no timing)")
    args = p.parse_args(argv)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise ConfigError(f"--minutes: expected a positive number of minutes, got {args.minutes}")
    if args.points < 1:
        raise ConfigError(f"--points: expected at least 1 backbone per run, got {args.points}")
    if len(set(args.seeds)) < len(args.seeds) or not all(0 <= s < 2**32 for s in args.seeds):
        raise ConfigError(f"--seeds: expected distinct ints in [0, 2**32), got {args.seeds}")
    for override in args.set:
        if override.partition("=")[0] in SET_BY_RECIPE:
            raise ConfigError(f"--set {override}: the recipe sets {', '.join(SET_BY_RECIPE)} itself")
    args.points = QUICK["points"] if args.quick else args.points
    return args


def load_tasks(args: argparse.Namespace, cfg: PretrainConfig) -> dict:
    """{task: its train/val/test data} for --tasks (default: every classification task), each task's
    modality in the pretraining data."""
    ft = load_recipe_config(FinetuneConfig, args.finetune_config, ["device=cpu"])
    unknown = sorted(set(args.tasks or []) - set(ft.tasks))
    if unknown:
        raise ConfigError(f"--tasks: {unknown} are not tasks of {args.finetune_config} ({sorted(ft.tasks)})")
    ft.tasks = {t: ft.tasks[t] for t in args.tasks or ft.tasks}
    data = load_task_data(ft, ["train", "val", "test"])
    for task, datasets in list(data.items()):
        kind, modality = datasets[0].target_kind, datasets[0].modality
        if kind is None or not kind.has_classes:
            if args.tasks:
                raise ConfigError(f"--tasks: {task} is not a classification task (target {datasets[0].target!r})")
            del data[task]
        elif modality not in cfg.data:
            raise ConfigError(f"--tasks: {task} is {modality}, which the pretraining data lacks ({sorted(cfg.data)})")
    return data


def run_config(cfg: PretrainConfig, objective: str, scope: str, seed: int, steps: int, points: int, folder: Path):
    """The config of one run: `scope` "all" (the config's data) or one modality alone."""
    every = steps // points
    run = dataclasses.replace(
        cfg,
        objective=objective,
        seed=seed,
        max_steps=steps,
        save_every=every if points > 1 else 0,
        keep_checkpoints=points,
        log_every=math.gcd(every, 10),
        output_dir=str(folder),
        overwrite=True,
    )
    if scope != "all":
        run.data = {scope: cfg.data[scope]}
        run.weights = {m: w for m, w in cfg.weights.items() if m == scope}
    return run


def reuse(path: Path, settings: dict, what: str) -> dict | None:
    """The record at `path` when it was made with `settings`; None when there is none; refused otherwise."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    changed = config_changes(record["settings"], settings)
    if changed:
        raise ConfigError(
            f"{path}: {what} was made with other settings ({changes_summary(changed)}); "
            "rerun with those, or use a new --output"
        )
    return record


def logged_seconds(folder: Path) -> dict[int, float]:
    """{step: seconds in the training loop} from a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["elapsed_s"] for r in lines if "elapsed_s" in r}


def measure(cfg: PretrainConfig, scopes: list[str], out: Path) -> dict[str, dict[str, dict]]:
    """A few timed steps of each objective on each scope -> {objective: {scope: {step_s, overhead_s}}}:
    seconds per step after the first, and the rest of a run's wall-clock (loaders, model, first step, saving)."""
    timings: dict[str, dict[str, dict]] = {}
    for objective in tqdm(OBJECTIVES, desc="timing"):
        for scope in scopes:
            folder = out / "timing" / f"{objective}-{scope}"
            started = time.perf_counter()
            pretrain(dataclasses.replace(run_config(cfg, objective, scope, 0, TIMING_STEPS, 1, folder), log_every=1))
            wall, seconds = time.perf_counter() - started, logged_seconds(folder)
            step = (seconds[TIMING_STEPS] - seconds[1]) / (TIMING_STEPS - 1)
            timings.setdefault(objective, {})[scope] = {"step_s": step, "overhead_s": wall - step * (TIMING_STEPS - 1)}
    shutil.rmtree(out / "timing")
    return timings


def plan_steps(
    budget_s: float,
    timings: dict,
    probe_s: dict[str, float],
    scope_tasks: dict[str, list[str]],
    seeds: int,
    points: int,
) -> tuple[dict[str, int], float]:
    """Steps per run of each objective so that the grid fits `budget_s`: each objective's all-data runs
    get the same seconds, a modality-alone run the steps of its objective's all-data run; fixed costs
    are each run's overhead and its `points` probes (`probe_s` per task) -> ({objective: steps}, expected seconds)."""
    runs = [(o, s) for o in timings for s in scope_tasks]
    fixed = seeds * sum(timings[o][s]["overhead_s"] + points * sum(probe_s[t] for t in scope_tasks[s]) for o, s in runs)
    per_second = seeds * sum(timings[o][s]["step_s"] / timings[o]["all"]["step_s"] for o, s in runs)
    seconds = max(budget_s - fixed, 0.0) / per_second  # of each all-data run
    steps = {o: int(seconds / timings[o]["all"]["step_s"]) // points * points for o in timings}
    return steps, fixed + seeds * sum(steps[o] * timings[o][s]["step_s"] for o, s in runs)


def make_plan(args, cfg, out, scope_tasks, probe_s, started) -> dict:
    """The steps of every run: fixed by --quick, else measured and fitted to --minutes."""
    if args.quick:
        steps, timings = {o: QUICK["steps"] for o in OBJECTIVES}, None
        summary = f"--quick: {QUICK['steps']} steps a run, {args.points} backbones each (not timed)"
        return {"steps": steps, "timings": timings, "expected_minutes": None, "summary": summary}
    timings = measure(cfg, list(scope_tasks), out)
    budget = args.minutes * 60 - (time.perf_counter() - started)
    steps, expected = plan_steps(budget, timings, probe_s, scope_tasks, len(args.seeds), args.points)
    if min(steps.values()) < args.points:
        raise ConfigError(
            f"--minutes {args.minutes:g}: the runs' fixed costs (loaders, saving, {args.points} probes each) leave "
            f"{steps} steps per run, fewer than --points {args.points}: raise --minutes, or lower --seeds or --points"
        )
    expected += time.perf_counter() - started
    runs = len(args.seeds) * len(OBJECTIVES) * len(scope_tasks)
    summary = (
        f"{runs} runs ({len(OBJECTIVES)} objectives x {len(scope_tasks)} data x {len(args.seeds)} seeds), "
        + ", ".join(f"{o} {s} steps" for o, s in steps.items())
        + f" a run, {args.points} backbones each, planned to take {expected / 60:.1f} of {args.minutes:g} minutes"
    )
    return {"steps": steps, "timings": timings, "expected_minutes": expected / 60, "summary": summary}


def print_plan(plan: dict, scope_tasks: dict) -> None:
    tqdm.write(f"plan: {plan['summary']}")
    for objective, by_scope in (plan["timings"] or {}).items():
        for scope, t in by_scope.items():
            tqdm.write(
                f"  {objective:6s} {scope:11s} {plan['steps'][objective]:6d} steps x {t['step_s']:.2f} s "
                f"+ {t['overhead_s']:.0f} s = {(plan['steps'][objective] * t['step_s'] + t['overhead_s']) / 60:.1f} "
                f"min a run; probes: {', '.join(scope_tasks[scope])}"
            )


def pretrain_and_probe(run_cfg, scope: str, points: int, data, settings, device, folder: Path, run_settings) -> dict:
    """Pretrain one run, probe each of its saved backbones, drop the checkpoints (the final model
    stays in `folder`/model) and write `folder`/result.json."""
    started = time.perf_counter()
    pretrain(run_cfg)
    wall, seconds = time.perf_counter() - started, logged_seconds(folder)
    marks = [run_cfg.max_steps * (i + 1) // points for i in range(points)]
    record = {
        "objective": run_cfg.objective,
        "data": scope,
        "seed": run_cfg.seed,
        "steps": run_cfg.max_steps,
        "seconds": seconds[run_cfg.max_steps],
        "wall_s": wall,
        "points": [],
    }
    for step in marks:
        model = OmniVecModel.from_pretrained(folder / "checkpoints" / f"step_{step:08d}" / "model")
        probes, _ = probe_backbone(model, data, settings, device)
        record["points"].append({"step": step, "seconds": seconds[step], "probes": probes})
    shutil.rmtree(folder / "checkpoints")
    (folder / "result.json").write_text(json.dumps(record | {"settings": run_settings}, indent=2))
    return record


def main(argv: list[str] | None = None) -> Path:
    started = time.perf_counter()
    args = parse_args(argv)
    cfg = load_recipe_config(PretrainConfig, args.pretrain_config, [*FIXED, f"device={args.device}", *args.set])
    data = load_tasks(args, cfg)
    modality = {t: d[0].modality for t, d in data.items()}
    scope_tasks = {"all": list(data)} | {
        m: [t for t in data if modality[t] == m] for m in dict.fromkeys(modality.values())
    }
    settings = ProtocolSettings(epochs=QUICK["probe_epochs"]) if args.quick else ProtocolSettings()
    base = {k: v for k, v in as_json(cfg).items() if k != "output_dir"}
    recipe = {"minutes": args.minutes, "seeds": args.seeds, "tasks": list(data), "points": args.points}
    recipe |= {"objectives": OBJECTIVES, "quick": args.quick, "device": args.device}
    grid_settings = {"recipe": recipe, "pretraining": base, "probes": dataclasses.asdict(settings)}
    out = Path(args.output)
    plan = reuse(
        out / "plan.json", grid_settings, "the grid's plan"
    )  # refused before any work when the settings differ
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu")

    random, probe_s = [], {}
    random_settings = {"model": cfg.model, "model_overrides": cfg.model_overrides, "probes": grid_settings["probes"]}
    for seed in tqdm(args.seeds, desc="random backbones"):
        path = out / "random" / f"seed{seed}.json"
        record = reuse(path, random_settings | {"tasks": list(data)}, "this random backbone's probes")
        if record is None:
            torch.manual_seed(seed)  # as `pretrain` does before building the model: each run's step 0
            probes, seconds = probe_backbone(load_model(None, cfg.model, cfg.model_overrides), data, settings, device)
            record = {"seed": seed, "probes": probes, "probe_seconds": seconds}
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(record | {"settings": random_settings | {"tasks": list(data)}}, indent=2))
        random.append(record)
        probe_s = {t: max(probe_s.get(t, 0.0), s) for t, s in record["probe_seconds"].items()}

    planned = plan is None
    plan = plan and {k: v for k, v in plan.items() if k != "settings"}
    plan = make_plan(args, cfg, out, scope_tasks, probe_s, started) if planned else plan
    print_plan(plan, scope_tasks)
    grid = [(seed, o, scope) for seed in args.seeds for o in OBJECTIVES for scope in scope_tasks]
    runs, todo = {}, {}
    for seed, objective, scope in grid:  # every finished run checked before any work
        folder = out / "runs" / f"{objective}-{scope}-seed{seed}"
        run_cfg = run_config(cfg, objective, scope, seed, plan["steps"][objective], args.points, folder)
        run_settings = {"pretraining": {k: v for k, v in as_json(run_cfg).items() if k != "output_dir"}}
        run_settings |= {"points": args.points, "probes": grid_settings["probes"], "tasks": scope_tasks[scope]}
        runs[folder] = reuse(folder / "result.json", run_settings, "this run")
        if runs[folder] is None:
            todo[folder] = (run_cfg, scope, run_settings)
    if planned:  # (after the checks: a refused plan is not kept)
        (out / "plan.json").write_text(json.dumps(plan | {"settings": grid_settings}, indent=2))
    for folder, (run_cfg, scope, run_settings) in tqdm(todo.items(), desc="runs"):
        tasks = {t: data[t] for t in scope_tasks[scope]}
        runs[folder] = pretrain_and_probe(run_cfg, scope, args.points, tasks, settings, device, folder, run_settings)

    minutes = (time.perf_counter() - started) / 60
    tasks = {t: {"modality": modality[t], "multi_label": d[0].target_kind.multi_label} for t, d in data.items()}
    payoff = {"settings": grid_settings, "plan": plan, "minutes": minutes, "tasks": tasks, "random": random}
    payoff["runs"] = [{k: v for k, v in r.items() if k != "settings"} for r in runs.values()]
    payoff["tables"] = tables = summarize(payoff)
    (out / "payoff.json").write_text(json.dumps(payoff, indent=2))
    (out / "payoff.md").write_text(report(payoff, tables))
    plot(payoff, out / "payoff.png")
    first = {}  # each task's first protocol: k-NN, or the linear probe of a multi-label task
    for row in tables["vs_random"]:
        first.setdefault(row["task"], row)
    print(
        f"payoff: {len(runs)} runs and {len(random)} random backbones, {minutes:.1f} minutes (this call); the better "
        f"objective is > 2 sd above random on {sum(r['beats'] for r in first.values())} of {len(tasks)} tasks "
        f"(k-NN; linear for multi-label); "
        f"{out / 'payoff.md'}, payoff.json, payoff.png"
    )
    return out


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError, ModelError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
