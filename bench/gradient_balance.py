"""How hard each modality pulls on the shared backbone in mixed pretraining: the L2 norm of one
modality's pretraining-loss gradient over the backbone's parameters (and over every parameter),
mean of a few training batches of the sample data, at initialisation or for a saved model (whose
decoders then start fresh). `schedule: all` sums the modalities' losses, so these norms say which
modality's gradient dominates the summed one (`weights` scales them).

    python bench/gradient_balance.py                          # configs/pretrain/tiny.yaml, at init
    python bench/gradient_balance.py --model runs/demo/pretrain/model
    python bench/gradient_balance.py --batches 1 --modalities audio    # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from omnivec.datasets.loaders import build_loaders, modality_tasks
from omnivec.mae import MaskedPretrainer
from omnivec.model import OmniVecModel
from omnivec.pretraining import PretrainConfig, build_model_for, objectives_of
from omnivec.recipe_config import load_recipe_config

ROOT = Path(__file__).resolve().parents[1]


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of the gradients held by `params` (those without one count as zero)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/pretrain/tiny.yaml")
    parser.add_argument("--model", type=Path, help="a saved model folder instead of the config's new model")
    parser.add_argument("--batches", type=int, default=3, help="training batches per modality")
    parser.add_argument("--modalities", nargs="+", help="these of the config's modalities only (default: all)")
    args = parser.parse_args()
    cfg = load_recipe_config(PretrainConfig, args.config, ["num_workers=0"])
    unknown = set(args.modalities or []) - set(cfg.data)
    if unknown:
        parser.error(f"--modalities: {sorted(unknown)} not in the config's data {sorted(cfg.data)}")
    cfg.data = {m: paths for m, paths in cfg.data.items() if m in (args.modalities or cfg.data)}
    torch.manual_seed(cfg.seed)
    model = OmniVecModel.from_pretrained(args.model) if args.model else build_model_for(cfg)
    pretrainer = MaskedPretrainer(
        model, cfg.decoder, cfg.seed, cfg.pack, objectives=objectives_of(cfg), latent=cfg.latent
    )
    pretrainer.train()
    backbone = list(pretrainer.model.backbone.parameters())
    every = [p for p in pretrainer.parameters() if p.requires_grad]
    loaders = build_loaders(modality_tasks(cfg.data), pretrainer.model, "train", cfg, train=True)
    print(f"gradient norm of one modality's loss, mean of {args.batches} batches of {cfg.batch_size}")
    print("| modality | backbone | all parameters |\n|---|---:|---:|")
    for modality, loader in loaders.items():
        norms = []
        for step, batch in zip(range(args.batches), loader):
            pretrainer.zero_grad()
            pretrainer({modality: batch}, step=step)[modality].backward()
            norms.append((grad_norm(backbone), grad_norm(every)))
        mean = [sum(n[i] for n in norms) / len(norms) for i in range(2)]
        print(f"| {modality} | {mean[0]:.3f} | {mean[1]:.3f} |")


if __name__ == "__main__":
    main()
