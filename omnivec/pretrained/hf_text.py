"""Text encoder from transformers: BERT-layout encoders (BERT, RoBERTa, MiniLM, ELECTRA, XLM-R, ...)
with their tokenizer (`pretrained: "hf:bert-base-uncased"` or a local directory). The text config's
`tokenizer` defaults to the same checkpoint and `vocab_size` is taken from it."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..modalities.base import ModalityEncoder, Tokens
from ..modalities.text import TextConfig, TextEncoder
from .hf import HFEncoder, library_config
from .loading import register_encoder


@register_encoder("text", "hf")
class HFTextEncoder(HFEncoder, TextEncoder):
    """{"input_ids", "attention_mask"} -> the encoder's last hidden states [B, L, width]; masked
    pretraining drops hidden tokens after the embeddings (which carry their positions)."""

    def __init__(self, cfg: TextConfig, dim: int):
        from transformers import AutoModel

        config = library_config(cfg, "text")
        limit = getattr(config, "max_position_embeddings", cfg.max_length)
        if cfg.max_length > limit:
            raise ConfigError(
                f"modalities.text.max_length: expected at most {limit} (the positions of "
                f"{cfg.pretrained}), got {cfg.max_length}"
            )
        cfg.vocab_size = config.vocab_size
        ModalityEncoder.__init__(self, cfg, dim, width=config.hidden_size)
        try:
            self.library = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # a model without a pooler
            self.library = AutoModel.from_config(config)
        if not (hasattr(self.library, "embeddings") and hasattr(self.library, "encoder")) or config.is_decoder:
            raise ConfigError(
                f"modalities.text.pretrained: expected a BERT-layout encoder (embeddings + encoder: "
                f"BERT, RoBERTa, MiniLM, ELECTRA, ...), {cfg.pretrained} is {config.model_type!r}"
            )

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        ids = self._unpack(x)[0]  # [B, L]
        tokens = self.library.embeddings(input_ids=ids)  # [B, L, width] words + positions + token types
        return Tokens(tokens, self.padding_mask(x), target=ids.unsqueeze(-1) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.library.config, inputs_embeds=tokens, attention_mask=padding_mask)
        x = self.library.encoder(tokens, attention_mask=mask).last_hidden_state  # [B, K, width]
        return super().encode(x, padding_mask)
