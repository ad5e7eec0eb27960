"""Summarization head: a small transformer decoder (transformers' `BertLMHeadModel` with
cross-attention) reading the backbone's text tokens; teacher forcing for training, transformers'
`generate` (greedy or beam search) for output; ROUGE-1/2/L."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError
from ..metrics import rouge
from ..parsing import require, require_divisor, require_positive
from ..targets import SUMMARY
from .base import TaskHead, register_head


@dataclass
class SummarizationHeadConfig(HeadConfig):
    type: str = "summarization"
    tokenizer: str = ""  # "": the model's text tokenizer (saved with it; bytes for a head built alone), or its own
    vocab_size: int = 261
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    max_target_length: int = 128  # summary tokens seen in training
    max_new_tokens: int = 128  # generation stops here or at the end-of-sequence token
    num_beams: int = 1  # 1: greedy
    no_repeat_ngram_size: int = 3
    dropout: float = 0.1

    def validate(self, prefix: str) -> None:
        require_positive(
            self, prefix, "vocab_size", "dim", "depth", "num_heads", "max_target_length", "max_new_tokens", "num_beams"
        )
        require_divisor(self, prefix, "num_heads", "dim")
        require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "a float in [0, 1)", self.dropout)


@register_head("summarization")
class SummarizationHead(TaskHead):
    """Backbone text tokens [B, L, D] -> summaries (lists of str) by a cross-attending decoder."""

    config_class = SummarizationHeadConfig
    target = SUMMARY
    output = "sequences"
    main_metric = "rougeL"

    def __init__(self, cfg: SummarizationHeadConfig, dim: int):
        super().__init__()
        from transformers import BertConfig, BertLMHeadModel

        self.cfg = cfg
        self.proj = nn.Linear(dim, cfg.dim)
        tok = self.tokenizer
        self.bos, self.eos, self.pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.decoder = BertLMHeadModel(
            BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.dim,
                num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.num_heads,
                intermediate_size=4 * cfg.dim,
                max_position_embeddings=max(cfg.max_target_length, cfg.max_new_tokens + 1),
                hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.dropout,
                is_decoder=True,
                add_cross_attention=True,
                tie_word_embeddings=False,
                pad_token_id=self.pad,
                bos_token_id=self.bos,
                eos_token_id=self.eos,
            )
        )
        self.decoder.loss_type = "ForCausalLM"  # next-token cross-entropy (transformers guesses from the class name)

    @property
    def tokenizer(self):
        from ..modalities.text import BYTES, load_tokenizer

        return load_tokenizer(self.cfg.tokenizer or BYTES)  # a head built alone: the built-in byte tokenizer

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> None:
        raise TypeError("the summarization head generates text: use predict(), or loss() with targets")

    def _memory(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        mask = (
            torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if padding_mask is None else padding_mask.long()
        )
        return {"encoder_hidden_states": self.proj(x), "encoder_attention_mask": mask}

    def loss(self, x: torch.Tensor, padding_mask: torch.Tensor | None, target: list[str]) -> torch.Tensor:
        """Teacher forcing: cross-entropy of each summary token given the previous ones and the text."""
        enc = self.tokenizer(
            list(target), truncation=True, max_length=self.cfg.max_target_length, padding=True, return_tensors="pt"
        ).to(x.device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # no loss on padding
        out = self.decoder(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            labels=labels,
            **self._memory(x, padding_mask),
        )
        return out.loss

    @torch.no_grad()
    def generate(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **overrides) -> torch.Tensor:
        """Token ids [B, <= 1 + max_new_tokens], starting with the start token, ending at EOS or the limit.

        Keys and values are cached (`use_cache=False` in `overrides` recomputes them every step): the
        decoder's own in a growing cache, the cross-attention ones of the text tokens once, in an
        `EncoderDecoderCache` (transformers would give a decoder-only model a self-attention cache only)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        start = torch.full((x.shape[0], 1), self.bos, dtype=torch.long, device=x.device)
        options = (
            dict(
                max_new_tokens=self.cfg.max_new_tokens,
                num_beams=self.cfg.num_beams,
                do_sample=False,
                no_repeat_ngram_size=self.cfg.no_repeat_ngram_size,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                use_cache=True,
            )
            | overrides
        )
        if options["use_cache"]:
            config = self.decoder.config
            options["cache"] = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        return self.decoder.generate(input_ids=start, **self._memory(x, padding_mask), **options)

    def predict(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[str]:
        return self.tokenizer.batch_decode(self.generate(x, padding_mask), skip_special_tokens=True)

    @classmethod
    def from_data(cls, classes: list[str], model_config, task: str) -> dict:
        """The decoder writes in the text modality's vocabulary."""
        text = model_config.modalities.get("text")
        if text is None:
            raise ConfigError(f"tasks.{task}: a {cls.name} head needs a model with a text encoder")
        return {"vocab_size": text.vocab_size}

    @classmethod
    def bind(cls, cfg: SummarizationHeadConfig, model_config) -> SummarizationHeadConfig:
        """No tokenizer of its own: the text modality's (inside the model folder once saved)."""
        text = model_config.modalities.get("text")
        if cfg.tokenizer or text is None:
            return cfg
        return dataclasses.replace(cfg, tokenizer=text.tokenizer)

    @staticmethod
    def gather(batches: list[list[str]]) -> list[str]:
        return [s for batch in batches for s in batch]

    def metrics(self, predictions: list[str], targets: list[str]) -> dict[str, float]:
        return rouge(predictions, targets)

    def details(self, predictions: list[str], targets: list[str]) -> dict:
        """Three generated summaries beside their references."""
        return {"examples": [{"prediction": p, "reference": t} for p, t in list(zip(predictions, targets))[:3]]}

    @classmethod
    def baseline(cls, rows: list[dict], classes: list[str]) -> dict:
        """Lead-1: the text's first sentence as its summary (none for streamed data: no rows in memory)."""
        if not rows:
            return {}
        lead = [re.split(r"(?<=[.!?])\s+", r["text"].strip(), maxsplit=1)[0] for r in rows]
        return {"lead-1": rouge(lead, [r[cls.target.column] for r in rows])}
