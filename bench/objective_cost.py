"""What a pretraining step costs per objective, per modality: forward and backward of one training
batch of the sample data under `objective: mae`, `objective: latent` (4 masks a sample, the default,
and 1), and the latent teacher's pass alone, on the same batches (data loading not timed).

    python bench/objective_cost.py                       # configs/pretrain/tiny.yaml, 6 timed batches each
    python bench/objective_cost.py --batches 2 --modalities audio   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from omnivec.datasets.loaders import build_loaders, modality_tasks
from omnivec.mae import MaskedPretrainer
from omnivec.pretraining import PretrainConfig, build_model_for, objectives_of
from omnivec.recipe_config import load_recipe_config

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "mae": [],
    "latent, 4 masks": ["objective=latent"],
    "latent, 1 mask": ["objective=latent", "latent.num_masks=1"],
}
WARMUP = 2


def pretrainer(config: Path, overrides: list[str]) -> MaskedPretrainer:
    """The config's model and decoders as `omnivec pretrain` builds them, seed 0, in training mode."""
    cfg = load_recipe_config(PretrainConfig, config, ["num_workers=0", *overrides])
    torch.manual_seed(0)
    pt = MaskedPretrainer(
        build_model_for(cfg), cfg.decoder, cfg.seed, cfg.pack, objectives=objectives_of(cfg), latent=cfg.latent
    )
    return pt.train()


def seconds(fn, batches: list) -> float:
    """Mean seconds of `fn(step, batch)` over `batches` after `WARMUP` untimed calls."""
    for step, batch in enumerate(batches[:WARMUP]):
        fn(step, batch)
    start = time.perf_counter()
    for step, batch in enumerate(batches[WARMUP:]):
        fn(step, batch)
    return (time.perf_counter() - start) / len(batches[WARMUP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/pretrain/tiny.yaml")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per modality (after 2 untimed)")
    parser.add_argument("--modalities", nargs="+", default=["image", "video", "audio", "text", "point_cloud"])
    args = parser.parse_args()
    cfg = load_recipe_config(PretrainConfig, args.config, ["num_workers=0"])
    mae = pretrainer(args.config, SETTINGS["mae"])
    loaders = build_loaders(
        modality_tasks({m: cfg.data[m] for m in args.modalities}), mae.model, "train", cfg, train=True
    )
    batches = {m: [b for _, b in zip(range(args.batches + WARMUP), loaders[m])] for m in args.modalities}
    cost: dict[tuple[str, str], float] = {}
    for name, overrides in SETTINGS.items():
        pt = mae if name == "mae" else pretrainer(args.config, overrides)
        for m in args.modalities:

            def step(i: int, batch: dict, m: str = m, pt: MaskedPretrainer = pt) -> None:
                pt({m: batch}, step=i)[m].backward()
                pt.zero_grad()

            cost[name, m] = seconds(step, batches[m])
            if name == "latent, 4 masks":
                with torch.no_grad():
                    cost["teacher pass", m] = seconds(
                        lambda i, b, m=m, pt=pt: pt.latent.targets(m, b["input"]), batches[m]
                    )
    columns = [*SETTINGS, "teacher pass"]
    print(
        f"forward and backward of one batch of {cfg.batch_size} ({args.config.name}, {torch.get_num_threads()} threads)"
    )
    print("| modality | " + " | ".join(columns) + " | latent, 4 masks / mae |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for m in [*args.modalities, "all"]:
        row = {c: sum(cost[c, k] for k in args.modalities) if m == "all" else cost[c, m] for c in columns}
        cells = " | ".join(f"{row[c]:.3f} s" for c in columns)
        print(f"| {m} | {cells} | {row['latent, 4 masks'] / row['mae']:.1f}x |")


if __name__ == "__main__":
    main()
