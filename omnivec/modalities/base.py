"""`ModalityEncoder`: what every modality file implements, and how it plugs into the model."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..backbone import run_blocks, transformer_blocks
from ..config import ModalityConfig
from ..errors import ConfigError, InputError
from ..masking import gather_tokens
from ..registry import MODALITIES


def register_modality(name: str) -> Callable[[type], type]:
    """Register a `ModalityEncoder` subclass under `name` (its config, transform and encoder)."""

    def add(cls: type) -> type:
        cls.name = name
        return MODALITIES.register(name)(cls)

    return add


class ModalityEncoder(nn.Module):
    """Turns a model-ready batch of one modality into backbone-width tokens.

    Subclasses set `config_class` and implement `tokenize` (batch -> tokens with positions),
    `check_input`, `build_transform` (raw sample -> model-ready tensor) and `example_input`.
    The base class runs the optional modality-specific blocks and the projection to the backbone.
    """

    name: str
    config_class: type[ModalityConfig] = ModalityConfig

    def __init__(self, cfg: ModalityConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width or dim
        num_heads = cfg.num_heads or max(1, self.width // 64)
        if self.width % num_heads:
            raise ConfigError(
                f"modalities.{self.name}.num_heads: expected a divisor of the width {self.width}, got {num_heads}"
            )
        self.blocks = transformer_blocks(self.width, cfg.depth, num_heads)
        self.norm = nn.LayerNorm(self.width) if cfg.depth else nn.Identity()
        self.proj = nn.Linear(self.width, dim) if self.width != dim else nn.Identity()

    @property
    def num_tokens(self) -> int:
        """Tokens per sample before padding or masking (the longest, for variable-length inputs)."""
        raise NotImplementedError

    def tokenize(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-ready batch -> (tokens [B, L, width] with positions added, padding mask [B, L] or None)."""
        raise NotImplementedError

    def check_input(self, x: Any) -> None:
        """Raise `InputError` naming the modality and the expected shape when `x` does not fit."""
        raise NotImplementedError

    @classmethod
    def build_transform(cls, cfg: ModalityConfig, train: bool = False) -> Callable[..., Any]:
        """The per-sample transform from a decoded file to the model-ready tensor."""
        raise NotImplementedError

    @classmethod
    def example_input(cls, cfg: ModalityConfig, batch_size: int, generator: torch.Generator) -> Any:
        """A random model-ready batch of `batch_size` samples."""
        raise NotImplementedError

    def forward(self, x: Any, ids_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens for the backbone: [B, L, D] (or [B, K, D] with `ids_keep` [B, K]) and the padding mask."""
        self.check_input(x)
        tokens, padding_mask = self.tokenize(x)  # [B, L, width], [B, L] | None
        if ids_keep is not None:  # drop hidden tokens before any block sees them (MAE)
            tokens = gather_tokens(tokens, ids_keep)  # [B, K, width]
            padding_mask = None if padding_mask is None else gather_tokens(padding_mask, ids_keep)
        tokens = run_blocks(self.blocks, tokens, padding_mask)
        return self.proj(self.norm(tokens)), padding_mask  # [B, K, D]

    def _fail(self, expected: str, got: Any) -> None:
        raise InputError(f"{self.name}: expected {expected}, got {got}")

    def _check_tensor(self, x: Any, expected_shape: tuple, description: str) -> None:
        """Check a float tensor's shape; `None` in `expected_shape` is any size (the batch)."""
        if not isinstance(x, torch.Tensor):
            self._fail(f"a tensor {description}", type(x).__name__)
        shape_ok = x.ndim == len(expected_shape) and all(e is None or e == s for e, s in zip(expected_shape, x.shape))
        if not shape_ok:
            self._fail(f"a tensor {description}", f"shape {list(x.shape)}")
        if not x.is_floating_point():
            self._fail(f"a floating-point tensor {description}", f"dtype {x.dtype}")
