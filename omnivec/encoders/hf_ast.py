"""Audio encoder from transformers: Audio Spectrogram Transformer checkpoints
(`pretrained: "hf:MIT/ast-finetuned-audioset-10-10-0.4593"` or a local directory).

omnivec's fbank transform already matches AST's input ([frames, mel], AudioSet statistics); set
`patch_stride` to the checkpoint's stride (10 for the published ones)."""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed

from ..modalities.audio import AudioConfig, AudioEncoder
from ..modalities.base import ModalityEncoder, Tokens
from . import register_encoder
from .hf import library_config, load_source, require_same, require_type, run_layers
from .loading import LibraryEncoder, Source


def ast_grid(config) -> list[int]:
    """Patches along (frequency, time) of an `ASTConfig`."""
    f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    t = (config.max_length - config.patch_size) // config.time_stride + 1
    return [f, t]


@register_encoder("audio", "hf")
class HFASTEncoder(LibraryEncoder, AudioEncoder):
    """[B, frames, mel] -> `ASTModel`'s patch tokens [B, L, width] (CLS and distillation tokens attend
    and are dropped); hidden patches are dropped before the transformer."""

    def __init__(self, cfg: AudioConfig, dim: int):
        from transformers import ASTModel

        config = library_config(cfg, "audio", num_mel_bins=cfg.num_mel_bins, max_length=cfg.target_frames)
        require_type("audio", config, ("audio-spectrogram-transformer",), cfg.pretrained)
        require_same("audio", "patch_size", cfg.patch_size, config.patch_size, cfg.pretrained)
        require_same("audio", "patch_stride", cfg.patch_stride, config.frequency_stride, cfg.pretrained)
        require_same("audio", "patch_stride", cfg.patch_stride, config.time_stride, cfg.pretrained)
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        self.library = ASTModel(config)

    def source(self) -> Source:
        return load_source(self.cfg, "audio")

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        emb = self.library.embeddings
        tokens = emb.patch_embeddings(x) + emb.position_embeddings[:, 2:]  # [B, L, width]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        emb, B = self.library.embeddings, tokens.shape[0]
        prefix = torch.cat([emb.cls_token.expand(B, -1, -1), emb.distillation_token.expand(B, -1, -1)], dim=1)
        prefix = prefix + emb.position_embeddings[:, :2]  # [B, 2, width] CLS and distillation tokens
        return super().encode(run_layers(self.library, prefix, tokens, padding_mask), padding_mask)

    def resize(self, key: str, tensor: torch.Tensor, shape: torch.Size, source: Source) -> torch.Tensor | None:
        if key != "embeddings.position_embeddings":
            return None
        return resample_abs_pos_embed(tensor, list(self.cfg.grid), ast_grid(source.config), num_prefix_tokens=2)
