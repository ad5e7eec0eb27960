"""The registered model variants (`omnivec_tiny`, `omnivec_small`, `omnivec_base`, ...) and the
doors in: `build_model`, `model_config`, `load_model`, `list_models`, `example_inputs`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .config import OmniVecConfig
from .model import OmniVecModel
from .recipe_config import merge
from .registry import MODALITIES, MODELS


def register_model(fn: Callable[[], dict]) -> Callable[[], dict]:
    """Register a variant: a function returning its config as a plain dict (timm's `@register_model`)."""
    return MODELS.register(fn.__name__)(fn)


@register_model
def omnivec_tiny() -> dict:
    """128-wide, 4-layer backbone on small inputs: trains in minutes on a laptop CPU."""
    return {
        "backbone": {"dim": 128, "depth": 4, "num_heads": 4},
        "modalities": {
            "image": {"image_size": 32, "patch_size": 4},
            # the decoder runs half of the 232 hidden tubelets in training (VideoMAE V2's decoder masking): it cost
            # more than the rest of the video step (docs/pretraining.md)
            "video": {"num_frames": 8, "image_size": 32, "patch_size": 4, "tubelet_size": 2, "decoder_mask_ratio": 0.5},
            # Audio in frame patches (all 64 mel bins x 4 frames, SSAST's): mean-pooled 16 x 16 patches averaged
            # the frequency bands together: spoken-digit k-NN 0.40 on val, with frame patches 0.75; mask 0.5, not
            # AudioMAE's 0.8, chosen on val for frame patches (0.35 / 0.5 / 0.65 / 0.8: k-NN 0.85 / 0.85 / 0.75 /
            # 0.80, docs/evaluation.md). Text 0.7, not BERT's 0.15, chosen on val after its embeddings were
            # normalised (docs/evaluation.md); the other modalities' defaults won their screens (docs/pretraining.md)
            "audio": {
                "num_mel_bins": 64,
                "target_frames": 128,
                "frame_patches": True,
                "patch_size": 4,
                "patch_stride": 4,
                "mask_ratio": 0.5,
            },
            "text": {"tokenizer": "bytes", "vocab_size": 261, "max_length": 256, "embed_norm": True, "mask_ratio": 0.7},
            "point_cloud": {"num_points": 512, "num_groups": 32, "group_size": 16, "pointnet_dims": [64, 128, 256]},
        },
    }


def _full_size(dim: int, depth: int, num_heads: int) -> dict:
    return {
        "backbone": {"dim": dim, "depth": depth, "num_heads": num_heads},
        "modalities": {
            "image": {"image_size": 224, "patch_size": 16},
            "video": {"num_frames": 16, "image_size": 224, "patch_size": 16, "tubelet_size": 2},
            "audio": {"num_mel_bins": 128, "target_frames": 1024},
            "text": {"tokenizer": "bert-base-uncased", "vocab_size": 30522, "max_length": 512, "embed_norm": True},
            "point_cloud": {"num_points": 1024, "num_groups": 64, "group_size": 32},
        },
    }


@register_model
def omnivec_base_vit() -> dict:
    """The backbone is MAE's ViT-B/16 (timm `vit_base_patch16_224.mae`): its blocks, CLS token, patch
    embedding and positions; the other modalities' tokenizers project into its 768-wide tokens.
    Swap in any ViT with `backbone.pretrained` ("timm:vit_base_patch14_dinov2", "hf:facebook/vit-mae-base")."""
    full = _full_size(768, 12, 12)
    return {"backbone": {"pretrained": "timm:vit_base_patch16_224.mae"}, "modalities": full["modalities"]}


@register_model
def omnivec_small() -> dict:
    """ViT-S sized backbone (384 wide, 12 layers) on full-size inputs."""
    return _full_size(384, 12, 6)


@register_model
def omnivec_base() -> dict:
    """ViT-B sized backbone (768 wide, 12 layers, about 85M parameters) on full-size inputs."""
    return _full_size(768, 12, 12)


def list_models() -> list[str]:
    """Names of the registered variants."""
    return MODELS.names()


def model_config(name: str, **overrides: Any) -> OmniVecConfig:
    """The validated config of variant `name` with `overrides` merged in (nested dicts or dotted keys)."""
    data = merge(MODELS.get(name)(), overrides)
    data["variant"] = name
    return OmniVecConfig.from_dict(data)


def load_model(init: str | os.PathLike | None, name: str, overrides: Mapping[str, Any] | None = None) -> OmniVecModel:
    """What a recipe starts from: the saved model folder (or hub id) `init`, else variant `name`
    with `overrides`, newly initialised."""
    return OmniVecModel.from_pretrained(init) if init else OmniVecModel(model_config(name, **(overrides or {})))


def build_model(name: str, **overrides: Any) -> OmniVecModel:
    """Build a registered variant, e.g. `build_model("omnivec_tiny", backbone={"depth": 2})`;
    `modalities={"video": None}` drops a modality."""
    return OmniVecModel(model_config(name, **overrides))


def example_inputs(config: OmniVecConfig, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """A random model-ready batch for every modality of `config` (docs, tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    return {m: MODALITIES.get(m).example_input(cfg, batch_size, generator) for m, cfg in config.modalities.items()}
