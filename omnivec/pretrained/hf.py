"""What the transformers families share: the checkpoint's config and weights, read once, and the
patch-encoder path of ViT and AST."""

from __future__ import annotations

import pickle
from functools import partial
from typing import Any

import torch
import torch.utils.checkpoint
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..config import ModalityConfig
from ..errors import ConfigError
from ..modalities.base import Tokens
from .loading import LibraryEncoder, Source, refused_pickle


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


def hf_from_pretrained(model_class: Any, source: str, key: str) -> tuple[nn.Module, dict[str, Any]]:
    """`model_class.from_pretrained(source)` and its loading info. A checkpoint tensor whose shape
    differs from the config's is left initialised and listed in `info["mismatched_keys"]` (name,
    checkpoint shape, model shape) for omnivec's report; files that cannot be read fail as a
    `ConfigError` naming `key` and `source`, a pickled file with code in it is refused."""
    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
    except pickle.UnpicklingError as e:  # a pytorch_model.bin with code in it
        raise refused_pickle(f"{key}: {source}", e) from e
    except SafetensorError as e:  # an empty, truncated or foreign model.safetensors
        raise ConfigError(
            f"{key}: cannot load {source!r}: its weights are not a readable safetensors file ({e})"
        ) from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot load {source!r} ({e})") from e


def checked_config(
    cfg: ModalityConfig, modality: str, model_types: tuple[str, ...], same: dict[str, Any], **sizes: Any
):
    """`library_config`, refused unless the checkpoint is one of `model_types` and each omnivec
    setting `same[key]` equals the checkpoint's (`key` may be "setting=attribute", as
    "in_chans=num_channels", when the names differ)."""
    config = library_config(cfg, modality, **sizes)
    require_type(modality, config, model_types, cfg.pretrained)
    for key, ours in same.items():
        name, _, attribute = key.partition("=")
        require_same(modality, name, ours, getattr(config, attribute or name), cfg.pretrained)
    return config


def require_same(modality: str, key: str, ours: Any, theirs: Any, source: str) -> None:
    """The omnivec setting `key` must equal the checkpoint's architecture."""
    if ours != theirs:
        raise ConfigError(f"modalities.{modality}.{key}: expected {theirs!r} (as in {source}), got {ours!r}")


def require_type(modality: str, config: Any, model_types: tuple[str, ...], source: str) -> None:
    """The checkpoint must be one of the architectures this encoder drives."""
    if config.model_type not in model_types:
        raise ConfigError(
            f"modalities.{modality}.pretrained: expected a checkpoint of type {' or '.join(model_types)}, "
            f"{source} is {config.model_type!r}"
        )


def run_layers(
    model: nn.Module, prefix: torch.Tensor, tokens: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
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


class HFEncoder(LibraryEncoder):
    """Mixin for the transformers families: the weights come from the `hf:SOURCE` checkpoint."""

    def source(self) -> Source:
        """The checkpoint's base-model weights (prefixes like `vit.` stripped, heads dropped by transformers)."""
        from transformers import AutoModel

        model, info = hf_from_pretrained(AutoModel, hf_source(self.cfg), f"modalities.{self.name}.pretrained")
        mismatched = {k: f"{list(a)} -> {list(b)}" for k, a, b in info["mismatched_keys"]}
        return Source(
            model.state_dict(), set(info["missing_keys"]), sorted(info["unexpected_keys"]), model.config, mismatched
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The library's layers too: transformers checkpoints each module whose `gradient_checkpointing`
        is set, with its `_gradient_checkpointing_func` (here non-reentrant), as its
        `gradient_checkpointing_enable` sets them."""
        super().set_grad_checkpointing(enable)
        for module in self.library.modules():
            if hasattr(module, "gradient_checkpointing"):  # (torch types Module attributes as Tensor | Module)
                module.gradient_checkpointing = enable  # type: ignore[assignment]
                module._gradient_checkpointing_func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)  # type: ignore[assignment]


class HFPatchEncoder(HFEncoder):
    """transformers' ViT and AST: patch tokens plus learned positions [B, L, width]; the prefix tokens
    (CLS, ...) attend with them in the layers and are dropped at the end; hidden patches are dropped
    before the layers.

    Subclasses name the embeddings' `prefix_tokens` in order, set `grid` (patches of the configured
    input) and implement `checkpoint_grid` (patches of the checkpoint's input)."""

    prefix_tokens: tuple[str, ...]
    grid: tuple[int, int]

    @property
    def num_prefix_tokens(self) -> int:
        return len(self.prefix_tokens)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def checkpoint_grid(self, config: Any) -> list[int]:
        """Patches of the input the checkpoint `config` was trained at."""
        raise NotImplementedError

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        emb = self.library.embeddings
        tokens = emb.patch_embeddings(x) + emb.position_embeddings[:, self.num_prefix_tokens :]  # [B, L, width]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        emb, B = self.library.embeddings, tokens.shape[0]
        prefix = torch.cat([getattr(emb, name).expand(B, -1, -1) for name in self.prefix_tokens], dim=1)
        prefix = prefix + emb.position_embeddings[:, : self.num_prefix_tokens]  # [B, n, width]
        return super().encode(run_layers(self.library, prefix, tokens, padding_mask), padding_mask)

    def resize(self, key: str, tensor: torch.Tensor, shape: torch.Size, source: Source) -> torch.Tensor | None:
        if key != "embeddings.position_embeddings":
            return None
        return resample_abs_pos_embed(
            tensor, list(self.grid), self.checkpoint_grid(source.config), num_prefix_tokens=self.num_prefix_tokens
        )
