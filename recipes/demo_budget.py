"""How many pretraining steps should `omnivec demo` spend (issue 26)? Pretrain exactly as the demo's
first stage does (omnivec/demo.py, `pretrain_backbone`) once per --steps value and --seeds seed, and
judge each frozen backbone as the demo's probe section does (k-NN and a linear probe on every
classification task, beside 3 random backbones, seeds 0-2), but fitted on train and scored on val:
the test split is never read. Few pretraining seeds and val splits of 20 to 30 samples on audio,
video and point clouds: a screen for a budget, not a finding.

    python recipes/demo_budget.py --output runs/demo-budget --steps 440 880   # about 19 minutes on 2 cores (2026-12-07)
    python recipes/demo_budget.py --output runs/demo-budget --steps 440 880 --seeds 0 1 2   # 57 minutes then
    python recipes/demo_budget.py --output /tmp/demo-budget --steps 3 --quick

(Both timed before the 3 random backbones were probed once per invocation instead of once per run.)
Writes OUTPUT/budget.json and OUTPUT/budget.md. A rerun reuses every finished run (a step count and
a seed) and refuses a folder made with other settings: the arguments, the two configs' contents,
the random seeds, the probe's epochs and the device. Run from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from omnivec.demo import FINETUNE_CONFIG, PRETRAIN_CONFIG, PROBE_EPOCHS, finetune_config, pretrain_backbone
from omnivec.demo_probes import RANDOM_SEEDS, probe_backbones
from omnivec.errors import exit_status
from omnivec.parsing import require
from omnivec.pretraining import PretrainConfig
from omnivec.protocols import ProtocolSettings
from omnivec.recipe_config import load_recipe_config
from omnivec.run_dir import refuse_other_settings

SPLIT = "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder (a rerun reuses its finished runs)")
    p.add_argument("--steps", nargs="+", type=int, required=True, help="pretraining step counts to compare")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="pretraining seeds (default: the demo's, 0)")
    p.add_argument("--pretrain-config", default=PRETRAIN_CONFIG, help="default: the demo's")
    p.add_argument("--finetune-config", default=FINETUNE_CONFIG, help="the tasks' data (default: the demo's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"], help="as `omnivec demo --device`")
    p.add_argument(
        "--quick", action="store_true", help="the demo's --quick probes (10 linear epochs), to check it runs"
    )
    args = p.parse_args(argv)
    for steps in args.steps:
        require(steps > 0, "--steps", "positive numbers of steps", steps)
    require(len(set(args.steps)) == len(args.steps), "--steps", "distinct step counts", args.steps)
    require(len(set(args.seeds)) == len(args.seeds), "--seeds", "distinct seeds", args.seeds)
    return args


def table(results: dict[int, dict[int, dict]]) -> list[str]:
    """budget.md's rows: per task, each step count's val k-NN per seed (and how many seeds clear the
    2-sd line) and linear probe per seed, beside the random backbones' (the same for every run)."""
    runs = [r for by_seed in results.values() for r in by_seed.values()]
    lines = [
        "| task | modality | random k-NN | "
        + " | ".join(f"{n} steps: k-NN (seeds > 2 sd), linear" for n in results)
        + " | random linear |",
        "|---|---|---|" + "---|" * (len(results) + 1),
    ]
    for i, row in enumerate(runs[0]["record"]["rows"]):
        knn, cells = row.get("knn"), []
        for by_seed in results.values():
            rows = [r["record"]["rows"][i] for r in by_seed.values()]
            linear = " / ".join(f"{r['linear']['pretrained']:.3f}" for r in rows)
            if knn:
                values = " / ".join(f"{r['knn']['pretrained']:.3f}" for r in rows)
                cells.append(f"{values} ({sum(r['above_2sd'] for r in rows)} of {len(rows)}), {linear}")
            else:
                cells.append(f"-, {linear}")
        random = f"{knn['random_mean']:.3f} ± {knn['random_sd']:.3f}" if knn else "-"
        linear = f"{row['linear']['random_mean']:.3f} ± {row['linear']['random_sd']:.3f}"
        lines.append(f"| {row['task']} | {row['modality']} | {random} | " + " | ".join(cells) + f" | {linear} |")
    return lines


def summary(steps: int, by_seed: dict[int, dict]) -> str:
    """One step count's line: pretraining seconds and the modalities above random by > 2 sd, per seed."""
    seconds = " / ".join(f"{r['pretrain_seconds']:.0f}" for r in by_seed.values())
    above = {s: [m for m, ok in r["record"]["modalities_above"].items() if ok] for s, r in by_seed.items()}
    total = len(next(iter(by_seed.values()))["record"]["modalities_above"])
    per_seed = "; ".join(f"seed {s}: {len(a)} of {total} ({', '.join(a)})" for s, a in above.items())
    return (
        f"- {steps} steps ({seconds} s of pretraining, as each run measured it): "
        f"k-NN above random by > 2 sd, {per_seed}"
    )


def run_settings(args: argparse.Namespace, root: Path) -> dict:
    """What the folder's backbones and probes depend on besides --steps and --seeds: the arguments,
    the configs' contents (sha256), the random backbones' seeds, the probe's epochs and the device."""
    digests = {
        f"{name}_sha256": hashlib.sha256((root / path).read_bytes()).hexdigest()
        for name, path in (("pretrain_config", args.pretrain_config), ("finetune_config", args.finetune_config))
    }
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu"
    return (
        {k: v for k, v in vars(args).items() if k not in ("output", "steps", "seeds")}
        | digests
        | {"split": SPLIT, "random_seeds": list(RANDOM_SEEDS), "probe_epochs": PROBE_EPOCHS[args.quick]}
        | {"device_used": device}
    )


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out, root = Path(args.output), Path.cwd()
    load_recipe_config(PretrainConfig, root / args.pretrain_config, [])  # checked before any work
    ft = finetune_config(root, args.device, 1.0, config=args.finetune_config)  # the tasks' data; no fine-tuning is run
    settings = run_settings(args, root)
    if (out / "settings.json").is_file():
        refuse_other_settings(out / "settings.json", settings, f"{out}'s backbones")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    probe = ProtocolSettings(epochs=PROBE_EPOCHS[args.quick])
    probe_device = torch.device("cpu") if args.device == "cpu" else None  # None: the probes' own choice, as the demo
    results: dict[int, dict[int, dict]] = {}
    randoms: dict[tuple[int, str], dict] = {}  # the random backbones' probes, the same for every run: computed once
    for steps in args.steps:
        for seed in args.seeds:
            folder = out / f"steps-{steps}-seed-{seed}"
            if not (folder / "result.json").is_file():
                started = time.perf_counter()
                model = pretrain_backbone(
                    root, folder / "pretrain", steps, args.device, args.quick, args.pretrain_config, [f"seed={seed}"]
                )
                seconds = time.perf_counter() - started
                record = probe_backbones(
                    model, ft, folder / "probes.json", probe, probe_device, split=SPLIT, random_cache=randoms
                )
                result = {"pretrain_seconds": seconds, "record": record}
                (folder / "result.json").write_text(json.dumps(result, indent=2))
            results.setdefault(steps, {})[seed] = json.loads((folder / "result.json").read_text())
    (out / "budget.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    lines = [
        "# The demo's pretraining budget, judged on val",
        "",
        f"{args.pretrain_config} as `omnivec demo` runs it, pretraining seeds {', '.join(map(str, args.seeds))}; "
        f"frozen backbones fitted on train and scored on {SPLIT} (k-NN top-1, linear top-1 or mAP; a cell lists "
        "the seeds' values) beside 3 random backbones (seeds 0-2, mean ± sd).",
        "",
        *table(results),
        "",
        *(summary(steps, by_seed) for steps, by_seed in results.items()),
    ]
    (out / "budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
