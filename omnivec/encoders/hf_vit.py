"""Image encoder from transformers: any ViT checkpoint (`pretrained: "hf:google/vit-base-patch16-224"`
or a local directory); patch tokens, masking works."""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed

from ..modalities.base import ModalityEncoder, Tokens
from ..modalities.image import ImageConfig, ImageEncoder
from . import register_encoder
from .hf import library_config, load_source, require_same, require_type, run_layers
from .loading import LibraryEncoder, Source


@register_encoder("image", "hf")
class HFViTEncoder(LibraryEncoder, ImageEncoder):
    """[B, C, H, W] -> `ViTModel`'s patch tokens [B, L, width] (its CLS token attends and is dropped)."""

    def __init__(self, cfg: ImageConfig, dim: int):
        from transformers import ViTModel

        config = library_config(cfg, "image", image_size=cfg.image_size)
        require_type("image", config, ("vit",), cfg.pretrained)
        require_same("image", "patch_size", cfg.patch_size, config.patch_size, cfg.pretrained)
        require_same("image", "in_chans", cfg.in_chans, config.num_channels, cfg.pretrained)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = ViTModel(config, add_pooling_layer=False)
        self.grid = cfg.image_size // cfg.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    def source(self) -> Source:
        return load_source(self.cfg, "image")

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        emb = self.library.embeddings
        tokens = emb.patch_embeddings(x) + emb.position_embeddings[:, 1:]  # [B, L, width]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        emb = self.library.embeddings
        cls = emb.cls_token.expand(tokens.shape[0], -1, -1) + emb.position_embeddings[:, :1]  # [B, 1, width]
        return super().encode(run_layers(self.library, cls, tokens, padding_mask), padding_mask)

    def resize(self, key: str, tensor: torch.Tensor, shape: torch.Size, source: Source) -> torch.Tensor | None:
        if key != "embeddings.position_embeddings":
            return None
        return resample_abs_pos_embed(tensor, [self.grid, self.grid], num_prefix_tokens=1)
