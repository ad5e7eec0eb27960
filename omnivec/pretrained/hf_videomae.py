"""Video encoder from transformers: VideoMAE checkpoints (`pretrained: "hf:MCG-NJU/videomae-base"` or a
local directory). Tubelets and their order match omnivec's video encoder; VideoMAE's positions are
fixed sinusoids, rebuilt for the configured frames and size, so nothing needs resizing."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..modalities.base import ModalityEncoder, Tokens
from ..modalities.video import VideoConfig, VideoEncoder
from .hf import HFEncoder, library_config, require_same, require_type
from .loading import register_encoder


@register_encoder("video", "hf")
class HFVideoMAEEncoder(HFEncoder, VideoEncoder):
    """[B, T, C, H, W] -> `VideoMAEModel`'s tubelet tokens [B, L, width]; hidden tubes are dropped
    before the transformer (tube masking works as with omnivec's own video encoder)."""

    def __init__(self, cfg: VideoConfig, dim: int):
        from transformers import VideoMAEModel

        config = library_config(cfg, "video", num_frames=cfg.num_frames, image_size=cfg.image_size)
        require_type("video", config, ("videomae",), cfg.pretrained)
        require_same("video", "patch_size", cfg.patch_size, config.patch_size, cfg.pretrained)
        require_same("video", "tubelet_size", cfg.tubelet_size, config.tubelet_size, cfg.pretrained)
        require_same("video", "in_chans", cfg.in_chans, config.num_channels, cfg.pretrained)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = VideoMAEModel(config)
        t, p = cfg.tubelet_size, cfg.patch_size
        self.grid = (cfg.num_frames // t, cfg.image_size // p, cfg.image_size // p)

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        tokens = self.library.embeddings(x, bool_masked_pos=None)  # [B, L, width] tubelets + positions
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            raise InputError("video: transformers' VideoMAE takes no padding mask")
        x = self.library.encoder(tokens).last_hidden_state
        if self.library.layernorm is not None:
            x = self.library.layernorm(x)
        return super().encode(x, padding_mask)
