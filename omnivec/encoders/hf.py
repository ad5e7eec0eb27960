"""What the transformers families share: the checkpoint's config and weights, read once."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModalityConfig
from ..errors import ConfigError
from .loading import Source


def hf_source(cfg: ModalityConfig) -> str:
    """The hub id or local directory in `hf:SOURCE`."""
    return cfg.pretrained.partition(":")[2]


def library_config(cfg: ModalityConfig, modality: str, **sizes: Any):
    """The transformers config of `cfg.pretrained` with omnivec's input `sizes` applied.

    It is read from the checkpoint once and kept in `cfg.library_config`, so a saved omnivec model
    rebuilds the architecture offline."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if cfg.library_config:
        data = dict(cfg.library_config)
        config = CONFIG_MAPPING[data["model_type"]].from_dict(data)
    else:
        try:
            config = AutoConfig.from_pretrained(hf_source(cfg))
        except (OSError, ValueError) as e:
            raise ConfigError(f"modalities.{modality}.pretrained: cannot read {hf_source(cfg)!r} ({e})") from e
    for key, value in sizes.items():
        setattr(config, key, value)
    cfg.library_config = config.to_dict()
    return config


def require_same(modality: str, key: str, ours: Any, theirs: Any, source: str) -> None:
    """The omnivec setting `key` must equal the checkpoint's architecture."""
    if ours != theirs:
        raise ConfigError(f"modalities.{modality}.{key}: expected {theirs!r} (as in {source}), got {ours!r}")


def require_type(modality: str, config: Any, model_types: tuple[str, ...], source: str) -> None:
    """The checkpoint must be one of the architectures this encoder drives."""
    if config.model_type not in model_types:
        raise ConfigError(f"modalities.{modality}.pretrained: expected a checkpoint of type {' or '.join(model_types)}, "
                          f"{source} is {config.model_type!r}")


def load_source(cfg: ModalityConfig, modality: str) -> Source:
    """The checkpoint's base-model weights (prefixes like `vit.` stripped, heads dropped by transformers)."""
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(hf_source(cfg), output_loading_info=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"modalities.{modality}.pretrained: cannot load {hf_source(cfg)!r} ({e})") from e
    return Source(model.state_dict(), set(info["missing_keys"]), sorted(info["unexpected_keys"]), model.config)


def run_layers(model: nn.Module, prefix: torch.Tensor, tokens: torch.Tensor,
               padding_mask: torch.Tensor | None) -> torch.Tensor:
    """transformers' ViT and AST after their embeddings: prefix tokens [B, n, width] (CLS, ...,
    positions added) joined to the kept patch tokens [B, K, width], dropout, `model.layers` with the
    prefix always attended, the final LayerNorm -> the patch tokens' outputs [B, K, width]."""
    from transformers.masking_utils import create_bidirectional_mask

    n = prefix.shape[1]
    x = model.embeddings.dropout(torch.cat([prefix, tokens], dim=1))  # [B, n + K, width]
    if padding_mask is not None:
        padding_mask = nn.functional.pad(padding_mask, (n, 0), value=True)
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=padding_mask)
    for layer in model.layers:
        x = layer(x, mask)
    return model.layernorm(x)[:, n:]
