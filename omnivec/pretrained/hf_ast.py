"""Audio encoder from transformers: Audio Spectrogram Transformer checkpoints
(`pretrained: "hf:MIT/ast-finetuned-audioset-10-10-0.4593"` or a local directory).

omnivec's fbank transform already matches AST's input ([frames, mel], AudioSet statistics); set
`patch_stride` to the checkpoint's stride (10 for the published ones)."""

from __future__ import annotations

from typing import Any

from ..modalities.audio import AudioConfig, AudioEncoder
from ..modalities.base import ModalityEncoder
from .hf import HFPatchEncoder, library_config, require_same, require_type
from .loading import register_encoder


@register_encoder("audio", "hf")
class HFASTEncoder(HFPatchEncoder, AudioEncoder):
    """[B, frames, mel] -> `ASTModel`'s patch tokens [B, L, width] (CLS and distillation tokens attend
    and are dropped)."""

    prefix_tokens = ("cls_token", "distillation_token")

    def __init__(self, cfg: AudioConfig, dim: int):
        from transformers import ASTModel

        config = library_config(cfg, "audio", num_mel_bins=cfg.num_mel_bins, max_length=cfg.target_frames)
        require_type("audio", config, ("audio-spectrogram-transformer",), cfg.pretrained)
        require_same("audio", "patch_size", cfg.patch_size, config.patch_size, cfg.pretrained)
        require_same("audio", "patch_stride", cfg.patch_stride, config.frequency_stride, cfg.pretrained)
        require_same("audio", "patch_stride", cfg.patch_stride, config.time_stride, cfg.pretrained)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = ASTModel(config)
        self.grid = cfg.grid

    def checkpoint_grid(self, config: Any) -> list[int]:
        """Patches along (frequency, time) of an `ASTConfig`."""
        f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        t = (config.max_length - config.patch_size) // config.time_stride + 1
        return [f, t]
