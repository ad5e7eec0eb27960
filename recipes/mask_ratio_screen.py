"""Choose omnivec_tiny's mask ratio per modality on validation data (issue 26).

Pretrains as the demo's first stage does (--pretrain-config on all its modalities, --steps steps, one seed)
once per setting, a setting being one mask ratio per modality, and judges each frozen backbone by
k-NN and a linear probe on the val split of every classification task of --finetune-config (fitted
on train), beside 3 random backbones. Per modality, the ratio whose backbone has the best mean val
k-NN over that modality's tasks is the choice. The test split is never read. One seed and small val
splits (20 to 30 samples on audio, video and point clouds): a screen, not a finding.

    python recipes/mask_ratio_screen.py --output runs/mask-screen          # about 25 minutes on 2 cores
    python recipes/mask_ratio_screen.py --output /tmp/mask-screen --quick  # 3 steps a setting

Writes OUTPUT/screen.json and OUTPUT/screen.md. A rerun reuses finished settings and refuses a folder
made with other arguments. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pretrain_ablation import SCREEN_RUN

from omnivec.demo_probes import probe_backbones
from omnivec.errors import exit_status
from omnivec.finetune_config import FinetuneConfig
from omnivec.parsing import require
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.protocols import ProtocolSettings
from omnivec.recipe_config import load_recipe_config
from omnivec.run_dir import refuse_other_settings

# setting -> mask ratio per modality: each modality's default (omnivec/modalities/*.py) and one step either side
# (omnivec_tiny's text ratio, 0.7, came from a later text-only screen after text embeddings were normalised, and
# its audio ratio, 0.5, from an audio-only screen after audio moved to frame patches: docs/evaluation.md)
SETTINGS = {
    "low": {"image": 0.6, "video": 0.75, "audio": 0.5, "text": 0.15, "point_cloud": 0.4},
    "mid": {"image": 0.75, "video": 0.9, "audio": 0.65, "text": 0.3, "point_cloud": 0.6},
    "high": {"image": 0.9, "video": 0.95, "audio": 0.8, "text": 0.5, "point_cloud": 0.75},
}
SPLIT = "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="run folder (a rerun reuses its finished settings)")
    p.add_argument("--steps", type=int, default=400, help="steps per setting (default 400, twice the demo's)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help=f"default: all of {list(SETTINGS)}")
    p.add_argument("--pretrain-config", default="configs/pretrain/tiny.yaml")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml", help="the tasks' data")
    p.add_argument("--quick", action="store_true", help="3 steps a setting and 2 probe epochs, to check it runs")
    args = p.parse_args(argv)
    require(args.steps > 0, "--steps", "a positive number of steps", args.steps)
    for name in args.settings:
        require(name in SETTINGS, "--settings", f"settings among {list(SETTINGS)}", name)
    return args


def setting_config(args: argparse.Namespace, name: str, folder: Path) -> PretrainConfig:
    """The pretrain config of setting `name` (its mask ratio on every modality of the data) into `folder`."""
    modalities = load_recipe_config(PretrainConfig, args.pretrain_config, []).data
    return load_recipe_config(
        PretrainConfig,
        args.pretrain_config,
        [
            *(f"model_overrides.modalities.{m}.mask_ratio={SETTINGS[name][m]}" for m in modalities),
            f"output_dir={folder}",
            *SCREEN_RUN,
            f"max_steps={3 if args.quick else args.steps}",
            *(["eval_batches=1", "plot_samples=1"] if args.quick else []),
        ],
    )


def choose(results: dict[str, dict]) -> dict[str, dict]:
    """{modality: {"ratio": chosen, "knn": {setting: mean val k-NN over the modality's tasks}}}."""
    by_modality: dict[str, dict[str, list[float]]] = {}
    for name, record in results.items():
        for row in record["rows"]:
            if row["knn_gap"] is not None:
                by_modality.setdefault(row["modality"], {}).setdefault(name, []).append(row["knn"]["pretrained"])
    chosen = {}
    for modality, scores in by_modality.items():
        means = {name: statistics.fmean(values) for name, values in scores.items()}
        best = max(means, key=means.__getitem__)
        chosen[modality] = {"ratio": SETTINGS[best][modality], "setting": best, "knn": means}
    return chosen


def table(results: dict[str, dict], chosen: dict[str, dict]) -> list[str]:
    """screen.md's rows: per task, each setting's ratio and val k-NN / linear, and the random backbones'."""
    names = list(results)
    lines = [
        "| task | modality | " + " | ".join(f"{n}: ratio, k-NN, linear" for n in names) + " | random k-NN | chosen |",
        "|---|---|" + "---|" * (len(names) + 2),
    ]
    for i, row in enumerate(results[names[0]]["rows"]):
        cells = []
        for name in names:
            r = results[name]["rows"][i]
            knn = f"{r['knn']['pretrained']:.3f}" if "knn" in r else "-"
            cells.append(f"{SETTINGS[name][r['modality']]}, {knn}, {r['linear']['pretrained']:.3f}")
        knn = row.get("knn")
        random = f"{knn['random_mean']:.3f} ± {knn['random_sd']:.3f}" if knn else "-"
        pick = chosen.get(row["modality"], {}).get("ratio", "-")
        lines.append(f"| {row['task']} | {row['modality']} | " + " | ".join(cells) + f" | {random} | {pick} |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out, started = Path(args.output), time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k != "output"} | {"ratios": SETTINGS}
    if (out / "settings.json").is_file():
        refuse_other_settings(out / "settings.json", settings, f"{out}'s backbones")
    ft = load_recipe_config(FinetuneConfig, args.finetune_config, ["device=cpu"])
    configs = {name: setting_config(args, name, out / name) for name in args.settings}  # all checked before any work
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    probe = ProtocolSettings(epochs=2 if args.quick else 90)
    results = {}
    for name, cfg in configs.items():
        folder = Path(cfg.output_dir)
        if not (folder / "probes.json").is_file():
            pretrain(cfg)
            probe_backbones(folder / "model", ft, folder / "probes.json", probe, "cpu", split=SPLIT)
        results[name] = json.loads((folder / "probes.json").read_text())
    chosen = choose(results)
    minutes = (time.perf_counter() - started) / 60
    (out / "screen.json").write_text(json.dumps({"settings": settings, "chosen": chosen, "results": results}, indent=2))
    lines = [
        "# Mask ratio per modality, chosen on val",
        "",
        f"{args.pretrain_config}, {3 if args.quick else args.steps} pretraining steps on all its modalities per "
        f"setting, one seed; frozen backbones fitted on train and scored on {SPLIT} (k-NN top-1, or the linear "
        f"probe's top-1 / mAP), 3 random backbones (seeds 0-2) beside them. {minutes:.1f} minutes on this machine.",
        "",
        *table(results, chosen),
        "",
        "Chosen (best mean val k-NN over the modality's tasks): "
        + ", ".join(f"{m} {c['ratio']} ({c['setting']})" for m, c in chosen.items()),
    ]
    (out / "screen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
