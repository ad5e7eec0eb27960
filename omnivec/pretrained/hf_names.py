"""transformers ViT / ViTMAE / DINOv2 tensor names in timm's ViT layout (the one the backbone reader
fills from), and a `ViTMAEForPreTraining` decoder's in the MAE repo's."""

from __future__ import annotations

import re
from typing import Any

import torch

HF_BLOCKS = [  # transformers' layer lists -> timm's (encoder) and the MAE repo's (decoder)
    (r"^(vit\.)?(layers|encoder\.layer)\.(\d+)\.", r"blocks.\3."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder_blocks.\1."),
]
HF_NAMES = [  # transformers ViT / ViTMAE / DINOv2 names -> timm's; ViTMAE's decoder -> the MAE repo's
    (r"^(vit\.)?embeddings\.cls_token$", "cls_token"),
    (r"^(vit\.)?embeddings\.position_embeddings$", "pos_embed"),
    (r"^(vit\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(vit\.)?layernorm\.", "norm."),
    (r"^decoder\.", ""),  # decoder.decoder_embed.weight -> decoder_embed.weight, decoder.mask_token -> mask_token
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.(layernorm_before|norm1)\.", ".norm1."),
    (r"\.(layernorm_after|norm2)\.", ".norm2."),
    (r"\.layer_scale(\d)\.lambda1$", r".ls\1.gamma"),
]


def timm_name(key: str) -> tuple[str, str | None]:
    """A transformers tensor name in timm's layout, and for a query, key or value projection which
    of the three it is (q, k and v join into one `qkv` tensor): `layers.0.attention.k_proj.weight`
    -> (`blocks.0.attn.qkv.weight`, "k")."""
    for pattern, name in HF_BLOCKS:
        key = re.sub(pattern, name, key)
    qkv = re.match(r"^(.*blocks\.\d+)\.attention\.([qkv])_proj\.(weight|bias)$", key)
    if qkv:
        return f"{qkv[1]}.attn.qkv.{qkv[3]}", qkv[2]
    for pattern, name in HF_NAMES:
        key = re.sub(pattern, name, key)
    return key, None


def hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ViT / ViTMAE / DINOv2 state dict in timm's names (q, k, v joined into qkv), a
    `ViTMAEForPreTraining` decoder in the MAE repo's (`decoder_blocks.0.attn.qkv.weight`, ...); other
    tensors (a classifier, DINOv2's mask token) keep their names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        name, part = timm_name(key)
        if part:
            out.setdefault(name, {})[part] = value
        else:
            out[name] = value
    return {k: torch.cat([v["q"], v["k"], v["v"]]) if isinstance(v, dict) else v for k, v in out.items()}
