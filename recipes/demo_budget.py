"""How many pretraining steps should `omnivec demo` spend (issue 26)? Pretrain exactly as the demo's
first stage does (omnivec/demo.py, `pretrain_backbone`) once per --steps value, and judge each frozen
backbone as the demo's probe section does (k-NN and a linear probe on every classification task,
beside 3 random backbones, seeds 0-2), but fitted on train and scored on val: the test split is never
read. One pretraining seed and val splits of 20 to 30 samples on audio, video and point clouds: a
screen for a budget, not a finding.

    python recipes/demo_budget.py --output runs/demo-budget --steps 440 880   # about 35 minutes on 2 cores
    python recipes/demo_budget.py --output /tmp/demo-budget --steps 3 --quick

Writes OUTPUT/budget.json and OUTPUT/budget.md. A rerun reuses finished step counts and refuses a
folder made with other arguments. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omnivec.demo import FINETUNE_CONFIG, PRETRAIN_CONFIG, PROBE_EPOCHS, finetune_config, pretrain_backbone
from omnivec.demo_probes import probe_backbones
from omnivec.errors import exit_status
from omnivec.parsing import require
from omnivec.protocols import ProtocolSettings
from omnivec.run_dir import refuse_other_settings

SPLIT = "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder (a rerun reuses its finished step counts)")
    p.add_argument("--steps", nargs="+", type=int, required=True, help="pretraining step counts to compare")
    p.add_argument("--pretrain-config", default=PRETRAIN_CONFIG, help="default: the demo's")
    p.add_argument("--finetune-config", default=FINETUNE_CONFIG, help="the tasks' data (default: the demo's)")
    p.add_argument(
        "--quick", action="store_true", help="the demo's --quick probes (10 linear epochs), to check it runs"
    )
    args = p.parse_args(argv)
    for steps in args.steps:
        require(steps > 0, "--steps", "positive numbers of steps", steps)
    require(len(set(args.steps)) == len(args.steps), "--steps", "distinct step counts", args.steps)
    return args


def table(results: dict[int, dict]) -> list[str]:
    """budget.md's rows: per task, each step count's val k-NN (gap to the random mean, above 2 sd) and linear probe."""
    counts = list(results)
    first = results[counts[0]]["record"]["rows"]
    lines = [
        "| task | modality | random k-NN | "
        + " | ".join(f"{n} steps: k-NN (gap, > 2 sd), linear" for n in counts)
        + " | random linear |",
        "|---|---|---|" + "---|" * (len(counts) + 1),
    ]
    for i, row in enumerate(first):
        knn = row.get("knn")
        cells = []
        for n in counts:
            r = results[n]["record"]["rows"][i]
            verdict = (
                f"{r['knn']['pretrained']:.3f} ({r['knn_gap']:+.3f}, {'yes' if r['above_2sd'] else 'no'})"
                if knn
                else "-"
            )
            cells.append(f"{verdict}, {r['linear']['pretrained']:.3f}")
        random = f"{knn['random_mean']:.3f} ± {knn['random_sd']:.3f}" if knn else "-"
        linear = f"{row['linear']['random_mean']:.3f} ± {row['linear']['random_sd']:.3f}"
        lines.append(f"| {row['task']} | {row['modality']} | {random} | " + " | ".join(cells) + f" | {linear} |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out, root = Path(args.output), Path.cwd()
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "steps")} | {"split": SPLIT}
    if (out / "settings.json").is_file():
        refuse_other_settings(out / "settings.json", settings, f"{out}'s backbones")
    ft = finetune_config(root, "cpu", 1.0, config=args.finetune_config)  # the tasks' data; no fine-tuning is run
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    probe = ProtocolSettings(epochs=PROBE_EPOCHS[args.quick])
    results = {}
    for steps in args.steps:
        folder = out / f"steps-{steps}"
        if not (folder / "result.json").is_file():
            started = time.perf_counter()
            model = pretrain_backbone(root, folder / "pretrain", steps, "cpu", args.quick, args.pretrain_config)
            seconds = time.perf_counter() - started
            record = probe_backbones(model, ft, folder / "probes.json", probe, "cpu", split=SPLIT)
            (folder / "result.json").write_text(json.dumps({"pretrain_seconds": seconds, "record": record}, indent=2))
        results[steps] = json.loads((folder / "result.json").read_text())
    (out / "budget.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    above = {n: [m for m, ok in r["record"]["modalities_above"].items() if ok] for n, r in results.items()}
    lines = [
        "# The demo's pretraining budget, judged on val",
        "",
        f"{args.pretrain_config} as `omnivec demo` runs it, one seed; frozen backbones fitted on train and "
        f"scored on {SPLIT} (k-NN top-1, linear top-1 or mAP) beside 3 random backbones (seeds 0-2, mean ± sd).",
        "",
        *table(results),
        "",
        *(
            f"- {n} steps ({r['pretrain_seconds']:.0f} s of pretraining on this machine): k-NN above random by "
            f"> 2 sd on {len(above[n])} of {len(r['record']['modalities_above'])} modalities ({', '.join(above[n])})"
            for n, r in results.items()
        ),
    ]
    (out / "budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
