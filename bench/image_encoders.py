"""The image encoder families side by side: fine-tune each through omnivec on the sample digits and
print parameters, top-1, top-5 (test split) and inference images/s on this machine.

    python bench/image_encoders.py [--steps 300] [--image-size 32] [--hub] [--output runs/image-encoders]

Without --hub each library encoder starts from random weights saved to a local checkpoint (this
machine cannot reach a model hub): the table then compares architectures trained from scratch on
1,257 training digits, not the transfer of ImageNet weights. With --hub the timm weights are
downloaded (`pretrained: timm:NAME`, no checkpoint) and the numbers measure transfer.
Writes results.json and results.md to --output.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from omnivec import OmniVecModel
from omnivec.datasets.sources import load_task
from omnivec.finetune_config import FinetuneConfig
from omnivec.finetuning import finetune
from omnivec.modalities.image import read_image
from omnivec.parsing import from_dict

DIGITS = Path(__file__).parents[1] / "data" / "sample" / "digits"

# name -> image modality config (small configurations of each family)
ENCODERS = {
    "omnivec ViT (own patch encoder)": {"patch_size": 4},
    "timm ViT (vit_tiny, 4 layers, 128 wide, patch 4)": {
        "pretrained": "timm:vit_tiny_patch16_224",
        "patch_size": 4,
        "library_config": {"patch_size": 4, "depth": 4, "embed_dim": 128, "num_heads": 2},
    },
    # the same ViT as the shared backbone (its blocks and CLS token; the image modality its patch embedding
    # and positions) instead of an image encoder stacked on omnivec_tiny's random backbone (the row above)
    "backbone from ViT (vit_tiny, 4 layers, 128 wide, patch 4)": {
        "backbone": "timm:vit_tiny_patch16_224",
        "patch_size": 4,
        "library_config": {"patch_size": 4, "depth": 4, "embed_dim": 128, "num_heads": 2},
    },
    "timm EfficientNet-B0": {"pretrained": "timm:efficientnet_b0"},
    "timm CSPDarknet53": {"pretrained": "timm:cspdarknet53"},
}


# --hub: the published architecture (whose weights exist) instead of the small one
HUB = {
    "timm ViT (vit_tiny, 4 layers, 128 wide, patch 4)": (
        "timm ViT (vit_tiny as published, patch 16)",
        {"patch_size": 16},
    ),
    "backbone from ViT (vit_tiny, 4 layers, 128 wide, patch 4)": (
        "backbone from ViT (vit_tiny as published, patch 16)",
        {"patch_size": 16},
    ),
}


def random_checkpoint(image_cfg: dict, image_size: int, directory: Path, key: str = "pretrained") -> dict:
    """Save random weights of the timm model to a local file and point the config at it."""
    name = image_cfg[key].split(":", 1)[1]
    kwargs = dict(image_cfg.get("library_config", {}))
    if "vit" in name:
        kwargs["img_size"] = image_size
    torch.manual_seed(0)
    path = directory / f"{name}.safetensors"
    save_file(timm.create_model(name, num_classes=0, **kwargs).state_dict(), path)
    return {**image_cfg, "checkpoint": str(path)}


def images_per_second(model: OmniVecModel, images: torch.Tensor, batch_size: int = 64, repeats: int = 5) -> float:
    """Median inference throughput of `predict` (encoder, backbone, head) in fp32 on the CPU."""
    model.eval()
    batch = images[:batch_size]
    times = []
    with torch.inference_mode():
        model.predict("digits", batch)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict("digits", batch)
            times.append(time.perf_counter() - start)
    return len(batch) / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--hub", action="store_true", help="download timm's pretrained weights")
    parser.add_argument("--output", default="runs/image-encoders")
    parser.add_argument("--rows", nargs="*", help="only the rows whose label starts with one of these")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    test = load_task(DIGITS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, image_cfg in ENCODERS.items():
            if args.rows and not label.startswith(tuple(args.rows)):
                continue
            key = "backbone" if "backbone" in image_cfg else "pretrained"
            if key in image_cfg and args.hub:
                label, changes = HUB.get(label, (label, {}))
                image_cfg = {k: v for k, v in image_cfg.items() if k != "library_config"} | changes
            elif key in image_cfg:
                image_cfg = random_checkpoint(image_cfg, args.image_size, Path(tmp), key)
            backbone = {}
            if key == "backbone":  # the ViT is the backbone: pretrained, checkpoint and architecture move there
                backbone = {
                    "pretrained": image_cfg.pop("backbone"),
                    "library_config": image_cfg.pop("library_config", {}),
                }
                backbone |= {"checkpoint": image_cfg.pop("checkpoint")} if "checkpoint" in image_cfg else {}
                if "vit" in backbone["pretrained"] and not args.hub:
                    backbone["library_config"]["img_size"] = args.image_size
            run_dir = out / label.split(" (")[0].replace(" ", "_")
            cfg = from_dict(
                FinetuneConfig,
                {
                    "model": "omnivec_base_vit" if backbone else "omnivec_tiny",
                    "model_overrides": {
                        "backbone": backbone,
                        "modalities": {
                            "video": None,
                            "audio": None,
                            "text": None,
                            "point_cloud": None,
                            "image": {"image_size": args.image_size, **image_cfg},
                        },
                    },
                    "tasks": {"digits": {"head": "classification", "data": [str(DIGITS)]}},
                    "stages": [{"tasks": ["digits"], "steps": args.steps}],
                    "batch_size": 32,
                    "lr": 1e-3,
                    "warmup_steps": 20,
                    "weight_decay": 0.05,
                    "num_workers": 1,
                    "log_every": 50,
                    "save_every": 0,
                    "output_dir": str(run_dir),
                    "overwrite": True,
                },
                "",
            )
            started = time.perf_counter()
            result = finetune(cfg)
            train_seconds = time.perf_counter() - started
            model = OmniVecModel.from_pretrained(run_dir / "model")
            transform = model.transforms()["image"]
            images = torch.stack([transform(read_image(row["path"])) for row in test.rows[:64]])
            final = result["final"]["digits"]
            rows.append(
                {
                    "encoder": label,
                    "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                    "encoder_params_M": sum(p.numel() for p in model.encoders["image"].parameters()) / 1e6,
                    "top1": final["top1"],
                    "top5": final["top5"],
                    "test_samples": final["samples"],
                    "img_per_s": images_per_second(model, images),
                    "train_seconds": train_seconds,
                }
            )
    header = (
        f"Digits (sample data, {args.image_size} px, {args.steps} steps, "
        f"{'hub weights' if args.hub else 'random init'}), "
        "omnivec_tiny backbone (128 x 4) unless the ViT is the backbone, "
        f"{torch.get_num_threads()} CPU threads, fp32, batch 64 inference"
    )
    lines = [
        header,
        "",
        "| encoder | params (M, whole model) | image encoder (M) | top-1 | top-5 | img/s | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['encoder']} | {r['params_M']:.2f} | {r['encoder_params_M']:.2f} | {r['top1']:.3f} | "
        f"{r['top5']:.3f} | {r['img_per_s']:.0f} | {r['train_seconds']:.0f} |"
        for r in rows
    ]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
