"""Image encoder from transformers: any ViT checkpoint (`pretrained: "hf:google/vit-base-patch16-224"`
or a local directory); patch tokens, masking works."""

from __future__ import annotations

from typing import Any

from ..modalities.base import ModalityEncoder
from ..modalities.image import ImageConfig, ImageEncoder
from .hf import HFPatchEncoder, checked_config
from .loading import register_encoder


@register_encoder("image", "hf")
class HFViTEncoder(HFPatchEncoder, ImageEncoder):
    """[B, C, H, W] -> `ViTModel`'s patch tokens [B, L, width] (its CLS token attends and is dropped)."""

    prefix_tokens = ("cls_token",)

    def __init__(self, cfg: ImageConfig, dim: int):
        from transformers import ViTModel

        same = {"patch_size": cfg.patch_size, "in_chans=num_channels": cfg.in_chans}
        config = checked_config(cfg, "image", ("vit",), same, image_size=cfg.image_size)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = ViTModel(config, add_pooling_layer=False)
        self.grid = (cfg.image_size // cfg.patch_size,) * 2

    def checkpoint_grid(self, config: Any) -> list[int]:
        return [config.image_size // config.patch_size] * 2
