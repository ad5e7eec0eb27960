"""Why does masked pretraining not help (issue 16)? Pretrain omnivec_tiny on one task's modality
under a few settings and judge each frozen backbone by k-NN and a linear probe on that task,
beside a randomly initialised backbone. One seed per setting: a screen, not a finding.

    python recipes/pretrain_ablation.py --task digits --output runs/pretrain-ablation
    python recipes/pretrain_ablation.py --task shapes --variants baseline "200 steps" --blocks 2

Writes OUTPUT/ablation.md and OUTPUT/ablation.json. Run from the repository root.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from omnivec.finetune_config import FinetuneConfig
from omnivec.model import OmniVecModel
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.protocols import ProtocolSettings, run_protocols
from omnivec.recipe_config import load_recipe_config
from omnivec.tasks import load_task_data
from omnivec.variants import load_model

# setting name -> overrides of configs/pretrain/tiny.yaml (MODALITY: the task's modality)
VARIANTS = {
    "baseline": [],
    "200 steps": ["max_steps=200"],
    "mask 0.5": ["model_overrides.modalities.MODALITY.mask_ratio=0.5"],
    "mask 0.75": ["model_overrides.modalities.MODALITY.mask_ratio=0.75"],
    "patch 4": ["model_overrides.modalities.MODALITY.patch_size=4"],  # audio: 16x the tokens; image, video: default
    "patch 8": ["model_overrides.modalities.MODALITY.patch_size=8"],  # video: the default before issue 26
    "lr 1.5e-3": ["lr=1.5e-3"],
    "decoder 64 x 1": ["decoder.dim=64", "decoder.depth=1"],
    "pixel target": ["model_overrides.modalities.MODALITY.norm_pix_loss=false"],
    "3000 steps": ["max_steps=3000"],
    "200 steps, pixel target": ["max_steps=200", "model_overrides.modalities.MODALITY.norm_pix_loss=false"],
}


def first_blocks(model: OmniVecModel, depth: int) -> OmniVecModel:
    """A copy of `model` keeping its first `depth` backbone blocks: its embeddings are that block's
    output (after the final norm, mean-pooled)."""
    model = copy.deepcopy(model)
    model.backbone.blocks = model.backbone.blocks[:depth]
    return model


def shapes(model: OmniVecModel) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape}: two models of one architecture have the same."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> Path:
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
    p.add_argument("--quick", action="store_true", help="3 pretraining steps and 2 probe epochs, to check it runs")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ft = load_recipe_config(FinetuneConfig, args.finetune_config, ["device=cpu"])
    ft.tasks = {args.task: ft.tasks[args.task]}
    data = load_task_data(ft, ["train", "test"])
    modality = data[args.task][0].modality
    results = {}
    torch.manual_seed(0)
    models = {"random init": load_model(None, ft.model, ft.model_overrides)}
    for name in args.variants:
        folder = out / name.replace(" ", "_")
        overrides = [o.replace("MODALITY", modality) for o in VARIANTS[name]]
        cfg = load_recipe_config(
            PretrainConfig,
            args.pretrain_config,
            [
                f"output_dir={folder}",
                "device=cpu",
                "overwrite=true",
                "save_every=0",
                "eval_every=0",
                *overrides,
                *([f"seed={args.seed}"] if args.seed is not None else []),
                *(["max_steps=3", "eval_batches=1", "plot_samples=1"] if args.quick else []),
            ],
        )
        cfg.data = {modality: cfg.data[modality]}
        cfg.weights = {m: w for m, w in cfg.weights.items() if m == modality}
        if not (folder / "summary.json").is_file():  # a rerun reuses what was pretrained
            pretrain(cfg)
        summary = json.loads((folder / "summary.json").read_text())
        results[name] = {"overrides": overrides, "val_loss": summary["modalities"][modality]["val_end"]}
        models[name] = load_model(str(folder / "model"), cfg.model)
        if shapes(models[name]) != shapes(models["random init"]):  # e.g. another patch size: its own random twin
            torch.manual_seed(0)
            models[f"random init, {name}"] = load_model(None, cfg.model, cfg.model_overrides)
    for name, model in list(models.items()):
        for depth in args.blocks:
            models[f"{name}, block {depth}"] = first_blocks(model, depth)
    for name, model in models.items():
        metrics, _ = run_protocols(model, data, ["knn", "linear"], ProtocolSettings(epochs=2 if args.quick else 90))
        results.setdefault(name, {}).update({p: metrics[p].get(args.task, {}) for p in metrics})
    minutes = (time.perf_counter() - started) / 60
    steps = 3 if args.quick else load_recipe_config(PretrainConfig, args.pretrain_config, []).max_steps
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# Pretraining ablation on {args.task} ({modality})",
        "",
        f"omnivec_tiny pretrained on {modality} alone from {args.pretrain_config} ({steps} steps unless "
        f"said), one seed{'' if args.seed is None else f' ({args.seed})'}; frozen backbone judged on the test split: "
        "weighted k-NN (k=20) and a linear probe. "
        f"{minutes:.1f} minutes on this machine.",
        "",
        "| setting | overrides | final val loss | k-NN top-1 | linear top-1 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        overrides = " ".join(r.get("overrides", [])) or "-"
        loss = f"{r['val_loss']:.3f}" if "val_loss" in r else "-"
        knn, linear = r["knn"].get("top1", float("nan")), r["linear"].get("top1", r["linear"].get("mAP", float("nan")))
        lines.append(f"| {name} | {overrides} | {loss} | {knn:.3f} | {linear:.3f} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
