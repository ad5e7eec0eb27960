"""Audio encoder from transformers: Audio Spectrogram Transformer checkpoints
(`pretrained: "hf:MIT/ast-finetuned-audioset-10-10-0.4593"` or a local directory).

omnivec's fbank transform already matches AST's input ([frames, mel], AudioSet statistics); set
`patch_stride` to the checkpoint's stride (10 for the published ones). Clips shorter than
`target_frames` need no padding to AST's length: AST's patch embedding is a convolution, so a short
clip gets its own patches with the first time columns of AST's positions, and the padded patches of
a batch are masked out of AST's attention as out of omnivec's (`AudioEncoder`)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..modalities.audio import AudioConfig, AudioEncoder
from ..modalities.base import ModalityEncoder
from .hf import HFPatchEncoder, checked_config
from .loading import register_encoder


@register_encoder("audio", "hf")
class HFASTEncoder(HFPatchEncoder, AudioEncoder):
    """[B, frames, mel] -> `ASTModel`'s patch tokens [B, L, width] (CLS and distillation tokens attend
    and are dropped), time-major as omnivec's audio tokens."""

    prefix_tokens = ("cls_token", "distillation_token")
    tokenize = AudioEncoder.tokenize

    def __init__(self, cfg: AudioConfig, dim: int):
        if cfg.frame_patches:  # (omnivec_tiny's audio has frame patches of 4 frames)
            raise ConfigError(
                "modalities.audio.frame_patches: AST's patches are square; expected false, got true (with "
                "patch_size and patch_stride set to the checkpoint's, 16 and 10 for the published ones)"
            )
        from transformers import ASTModel

        same = {"patch_size": cfg.patch_size, "patch_stride=frequency_stride": cfg.patch_stride}
        same["patch_stride=time_stride"] = cfg.patch_stride
        sizes = {"num_mel_bins": cfg.num_mel_bins, "max_length": cfg.target_frames}
        config = checked_config(cfg, "audio", ("audio-spectrogram-transformer",), same, **sizes)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = ASTModel(config)
        self.grid = cfg.grid

    def embed_patches(self, values: torch.Tensor) -> torch.Tensor:
        return self.library.embeddings.patch_embeddings(values)  # [B, F'*T', width] frequency-major

    def position_table(self) -> torch.Tensor:
        return self.library.embeddings.position_embeddings[:, self.num_prefix_tokens :]  # [1, F'*T', width]

    def checkpoint_grid(self, config: Any) -> list[int]:
        """Patches along (frequency, time) of an `ASTConfig`."""
        f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        t = (config.max_length - config.patch_size) // config.time_stride + 1
        return [f, t]
