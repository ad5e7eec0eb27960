"""Video encoder from transformers: VideoMAE checkpoints (`pretrained: "hf:MCG-NJU/videomae-base"` or a
local directory). Tubelets and their order match omnivec's video encoder; VideoMAE's positions are
fixed sinusoids, rebuilt for the configured frames and size, so nothing needs resizing.

VideoMAE takes clips of `num_frames`: transformers' VideoMAE layers take no attention mask, so a
shorter clip is padded to that length with its last real frame repeated (a still), the same however
the batch is padded. VideoMAE's layers attend
to these padded tubelets; from its output on (omnivec blocks, backbone, pooling, masked targets)
they are padding, as with omnivec's own video encoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modalities.base import ModalityEncoder, Tokens
from ..modalities.video import VideoConfig, VideoEncoder
from .hf import HFEncoder, checked_config
from .loading import register_encoder


@register_encoder("video", "hf")
class HFVideoMAEEncoder(HFEncoder, VideoEncoder):
    """[B, T, C, H, W] -> `VideoMAEModel`'s tubelet tokens [B, L, width]; hidden tubes are dropped
    before the transformer (tube masking works as with omnivec's own video encoder)."""

    def __init__(self, cfg: VideoConfig, dim: int):
        from transformers import VideoMAEModel

        same = {"patch_size": cfg.patch_size, "tubelet_size": cfg.tubelet_size, "in_chans=num_channels": cfg.in_chans}
        sizes = {"num_frames": cfg.num_frames, "image_size": cfg.image_size}
        config = checked_config(cfg, "video", ("videomae",), same, **sizes)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = VideoMAEModel(config)
        t, p = cfg.tubelet_size, cfg.patch_size
        self.grid = (cfg.num_frames // t, cfg.image_size // p, cfg.image_size // p)

    def frames(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clips padded to `num_frames` with each one's last real frame: ([B, num_frames, C, H, W],
        frame mask [B, num_frames] or None when every frame is real)."""
        values, mask = super().frames(x)  # [B, T, C, H, W]
        B, T = values.shape[:2]
        extra = self.cfg.num_frames - T
        if mask is None and not extra:
            return values, None
        real = torch.ones(B, T, dtype=torch.bool, device=values.device) if mask is None else mask
        real = nn.functional.pad(real, (0, extra))  # [B, N]
        steps = torch.arange(real.shape[1], device=values.device)
        last = (steps * real).amax(1)  # [B] the last real frame
        index = torch.minimum(steps[None], last[:, None])  # [B, N] padded frames after it: that frame
        values = nn.functional.pad(values, (0, 0, 0, 0, 0, 0, 0, extra))  # [B, N, C, H, W]
        return values[torch.arange(B, device=values.device)[:, None], index], real

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        values = self.frames(x)[0]
        tokens = self.library.embeddings(values, bool_masked_pos=None)  # [B, L, width] tubelets + positions
        return Tokens(tokens, self.padding_mask(x), target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.library.encoder(tokens).last_hidden_state  # every tubelet attends (no attention mask)
        if self.library.layernorm is not None:
            x = self.library.layernorm(x)
        return super().encode(x, padding_mask)
