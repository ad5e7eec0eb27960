"""Why does masked pretraining not help (issue 16)? Pretrain omnivec_tiny on one task's modality
under a few settings and judge each frozen backbone by k-NN and a linear probe on that task,
beside a randomly initialised backbone, fitted on train and judged on val (`--split test` only to
report a setting already chosen). One seed per setting: a screen, not a finding.

    python recipes/pretrain_ablation.py --task digits --output runs/pretrain-ablation
    python recipes/pretrain_ablation.py --task shapes --variants baseline "200 steps" --blocks 2

Writes OUTPUT/ablation.md and OUTPUT/ablation.json. Run from the repository root.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from omnivec.errors import ConfigError, exit_status
from omnivec.finetune_config import FinetuneConfig
from omnivec.model import OmniVecModel
from omnivec.parsing import require
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.protocols import ProtocolSettings, run_protocols, unsupported
from omnivec.recipe_config import load_recipe_config
from omnivec.run_dir import RUN_CONFIG, as_json, config_changes
from omnivec.tasks import load_task_data
from omnivec.variants import load_model

# setting name -> overrides of configs/pretrain/tiny.yaml (MODALITY: the task's modality)
VARIANTS = {
    "baseline": [],
    "200 steps": ["max_steps=200"],
    "mask 0.5": ["model_overrides.modalities.MODALITY.mask_ratio=0.5"],
    "mask 0.75": ["model_overrides.modalities.MODALITY.mask_ratio=0.75"],
    "patch 4": ["model_overrides.modalities.MODALITY.patch_size=4"],  # omnivec_tiny's default on image, video, audio
    "patch 8": ["model_overrides.modalities.MODALITY.patch_size=8"],  # video's default before issue 26; audio: half
    "lr 1.5e-3": ["lr=1.5e-3"],
    "decoder 64 x 1": ["decoder.dim=64", "decoder.depth=1"],
    "pixel target": ["model_overrides.modalities.MODALITY.norm_pix_loss=false"],
    "3000 steps": ["max_steps=3000"],
    "200 steps, pixel target": ["max_steps=200", "model_overrides.modalities.MODALITY.norm_pix_loss=false"],
}

SCREEN_RUN = ["device=cpu", "overwrite=true", "save_every=0", "eval_every=0"]  # a screen's pretraining run


def check_blocks(blocks: list[int], model: OmniVecModel) -> None:
    """Refuse a `--blocks` count that is not one of the model's first blocks."""
    depth = len(model.backbone.blocks)
    for count in blocks:
        require(0 < count <= depth, "--blocks", f"block counts in 1..{depth} (the backbone's depth)", count)


def first_blocks(model: OmniVecModel, depth: int) -> OmniVecModel:
    """A copy of `model` keeping its first `depth` backbone blocks: its embeddings are that block's
    output (after the final norm, mean-pooled)."""
    model = copy.deepcopy(model)
    model.backbone.blocks = model.backbone.blocks[:depth]
    return model


def shapes(model: OmniVecModel) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape}: two models of one architecture have the same."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def variant_overrides(name: str, modality: str) -> list[str]:
    """Setting `name`'s overrides of the pretrain config for `modality` (audio patches get a stride as
    long as the patch: neither gaps nor overlap)."""
    overrides = [o.replace("MODALITY", modality) for o in VARIANTS[name]]
    strides = [o.replace(".patch_size=", ".patch_stride=") for o in overrides if ".patch_size=" in o]
    return overrides + (strides if modality == "audio" else [])


def variant_config(args: argparse.Namespace, name: str, modality: str, folder: Path) -> PretrainConfig:
    """The pretrain config of setting `name`, on `modality` alone, pretraining into `folder` (validated)."""
    cfg = load_recipe_config(
        PretrainConfig,
        args.pretrain_config,
        [
            f"output_dir={folder}",
            *SCREEN_RUN,
            *variant_overrides(name, modality),
            *([f"seed={args.seed}"] if args.seed is not None else []),
            *(["max_steps=3", "eval_batches=1", "plot_samples=1"] if args.quick else []),
        ],
    )
    require(modality in cfg.data, f"{args.pretrain_config}: data", f"{modality} data (--task's modality)", cfg.data)
    cfg.data = {modality: cfg.data[modality]}
    cfg.weights = {m: w for m, w in cfg.weights.items() if m == modality}
    return cfg


def pretrained_before(cfg: PretrainConfig) -> bool:
    """Whether `cfg.output_dir` holds a finished pretraining run of `cfg` (a rerun reuses it). One
    made with other settings (its `run_config.json`: another seed, step count, ...) is refused
    rather than reported as this setting's."""
    folder = Path(cfg.output_dir)
    if not (folder / "summary.json").is_file():
        return False
    try:
        saved = json.loads((folder / RUN_CONFIG).read_text())["config"]
        changed = config_changes(saved, as_json(cfg))
        if saved["max_steps"] != cfg.max_steps:  # config_changes leaves it to resume; here it makes another model
            changed.insert(0, f"max_steps: {saved['max_steps']!r} there, {cfg.max_steps!r} now")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{folder}: holds a model without a readable {RUN_CONFIG} ({e}); use a new --output") from e
    if changed:
        raise ConfigError(
            f"{folder}: its model was pretrained with other settings ("
            + "; ".join(changed[:4])
            + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
            + "); use a new --output"
        )
    return True


def score(metrics: dict) -> str:
    """A table cell: top-1, mAP (a multi-label task) or why the protocol was skipped."""
    if "skipped" in metrics:
        return f"skipped: {metrics['skipped']}"
    return f"mAP {metrics['mAP']:.3f}" if "mAP" in metrics else f"{metrics['top1']:.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="digits", help="a classification task of --finetune-config")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"default: all of {list(VARIANTS)}")
    p.add_argument(
        "--blocks",
        nargs="*",
        type=int,
        default=[],
        help="also probe each model's features after only these first backbone blocks",
    )
    p.add_argument("--output", default="runs/pretrain-ablation")
    p.add_argument("--pretrain-config", default="configs/pretrain/tiny.yaml")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml")
    p.add_argument("--seed", type=int, help="the pretraining seed (default: the pretrain config's)")
    p.add_argument(
        "--split",
        default="val",
        help="where the frozen backbones are judged (default val: choose settings there; test only to report one)",
    )
    p.add_argument("--quick", action="store_true", help="3 pretraining steps and 2 probe epochs, to check it runs")
    args = p.parse_args(argv)
    for name in args.variants:
        require(name in VARIANTS, "--variants", f"settings among {list(VARIANTS)}", name)
    require(args.seed is None or 0 <= args.seed < 2**32, "--seed", "an int in [0, 2**32)", args.seed)
    require(args.split in ("val", "test"), "--split", "val (to choose a setting) or test", args.split)
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = Path(args.output)
    started = time.perf_counter()
    ft = load_recipe_config(FinetuneConfig, args.finetune_config, ["device=cpu"])
    require(args.task in ft.tasks, "--task", f"a task of {args.finetune_config} ({', '.join(ft.tasks)})", args.task)
    ft.tasks = {args.task: ft.tasks[args.task]}
    data = load_task_data(ft, ["train", args.split])  # fitted on train, judged on --split
    modality = data[args.task][0].modality
    results = {}
    torch.manual_seed(0)
    models = {"random init": load_model(None, ft.model, ft.model_overrides)}
    why = unsupported(models["random init"], "linear", data[args.task])
    if why:
        raise ConfigError(f"--task {args.task}: {why}; expected a classification task")
    check_blocks(args.blocks, models["random init"])
    configs = {name: variant_config(args, name, modality, out / name.replace(" ", "_")) for name in args.variants}
    reused = {name: pretrained_before(cfg) for name, cfg in configs.items()}  # before any work
    out.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        folder = Path(cfg.output_dir)
        if not reused[name]:
            pretrain(cfg)
        summary = json.loads((folder / "summary.json").read_text())
        results[name] = {
            "overrides": variant_overrides(name, modality),
            "val_loss": summary["modalities"][modality]["val_end"],
        }
        models[name] = load_model(str(folder / "model"), cfg.model)
        check_blocks(args.blocks, models[name])
        if shapes(models[name]) != shapes(models["random init"]):  # e.g. another patch size: its own random twin
            torch.manual_seed(0)
            models[f"random init, {name}"] = load_model(None, cfg.model, cfg.model_overrides)
    for name, model in list(models.items()):
        for depth in args.blocks:
            models[f"{name}, block {depth}"] = first_blocks(model, depth)
    for name, model in models.items():
        metrics, skipped = run_protocols(
            model, data, ["knn", "linear"], ProtocolSettings(epochs=2 if args.quick else 90), test_split=args.split
        )  # k-NN skips a multi-label task
        results.setdefault(name, {}).update(
            {
                p: metrics[p].get(args.task) or {"skipped": skipped[f"{p}/{args.task}"].partition(":")[0]}
                for p in metrics
            }
        )
    minutes = (time.perf_counter() - started) / 60
    steps = 3 if args.quick else load_recipe_config(PretrainConfig, args.pretrain_config, []).max_steps
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# Pretraining ablation on {args.task} ({modality})",
        "",
        f"omnivec_tiny pretrained on {modality} alone from {args.pretrain_config} ({steps} steps unless "
        f"said), one seed{'' if args.seed is None else f' ({args.seed})'}; "
        f"frozen backbone judged on the {args.split} split: "
        "weighted k-NN (k=20) and a linear probe. "
        f"{minutes:.1f} minutes on this machine.",
        "",
        "| setting | overrides | final val loss | k-NN top-1 | linear top-1 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        overrides = " ".join(r.get("overrides", [])) or "-"
        loss = f"{r['val_loss']:.3f}" if "val_loss" in r else "-"
        lines.append(f"| {name} | {overrides} | {loss} | {score(r['knn'])} | {score(r['linear'])} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(exit_status(main))
