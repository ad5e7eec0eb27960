"""Why does masked pretraining not help (issue 16)? Pretrain omnivec_tiny on one task's modality
under a few settings and judge each frozen backbone by k-NN and a linear probe on that task,
beside a randomly initialised backbone. One seed per setting: a screen, not a finding.

    python recipes/pretrain_ablation.py --task digits --output runs/pretrain-ablation
    python recipes/pretrain_ablation.py --task shapes --variants baseline "1000 steps"

Writes OUTPUT/ablation.md and OUTPUT/ablation.json. Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omnivec.config import load_recipe_config
from omnivec.model import load_model
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.protocols import ProtocolSettings, run_protocols
from omnivec.tasks import FinetuneConfig, load_task_data

# setting name -> overrides of configs/pretrain/tiny.yaml (MODALITY: the task's modality)
VARIANTS = {
    "baseline": [],
    "1000 steps": ["max_steps=1000"],
    "mask 0.5": ["model_overrides.modalities.MODALITY.mask_ratio=0.5"],
    "lr 5e-4": ["lr=5e-4"],
    "decoder 128 x 2": ["decoder.dim=128", "decoder.depth=2"],
}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="digits", help="a classification task of --finetune-config")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"default: all of {list(VARIANTS)}")
    p.add_argument("--output", default="runs/pretrain-ablation")
    p.add_argument("--pretrain-config", default="configs/pretrain/tiny.yaml")
    p.add_argument("--finetune-config", default="configs/finetune/sample_sequential.yaml")
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
        cfg = load_recipe_config(PretrainConfig, args.pretrain_config, [
            f"output_dir={folder}", "device=cpu", "overwrite=true", "save_every=0", "eval_every=0", *overrides])
        cfg.data = {modality: cfg.data[modality]}
        cfg.weights = {m: w for m, w in cfg.weights.items() if m == modality}
        summary = pretrain(cfg)
        results[name] = {"overrides": overrides, "val_loss": summary["modalities"][modality]["val_end"]}
        models[name] = load_model(str(folder / "model"), cfg.model)
    for name, model in models.items():
        metrics, _ = run_protocols(model, data, ["knn", "linear"], ProtocolSettings())
        results.setdefault(name, {}).update({p: metrics[p].get(args.task, {}) for p in metrics})
    minutes = (time.perf_counter() - started) / 60
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Pretraining ablation on {args.task} ({modality})", "",
             f"omnivec_tiny pretrained on {modality} alone from {args.pretrain_config} (200 steps unless said), one "
             f"seed; frozen backbone judged on the test split: weighted k-NN (k=20) and a linear probe. "
             f"{minutes:.1f} minutes on this machine.", "",
             "| setting | overrides | final val loss | k-NN top-1 | linear top-1 |", "|---|---|---:|---:|---:|"]
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
