"""`ModalityEncoder`: what every modality file implements, and how it plugs into the model."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import run_blocks, transformer_blocks
from ..config import ModalityConfig
from ..errors import ConfigError, InputError
from ..masking import Masking, gather_tokens, random_masking
from ..registry import MODALITIES


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[B, L, P] -> each patch standardised over its P values: MAE's normalised-pixel target
    (x - mean) / sqrt(unbiased var + eps), computed with one fused `layer_norm` (biased variance,
    rescaled so the result is MAE's exactly)."""
    P = patches.shape[-1]
    unbias = (P - 1) / P
    return F.layer_norm(patches, (P,), eps=eps * unbias) * unbias**0.5


def register_modality(name: str) -> Callable[[type], type]:
    """Register a `ModalityEncoder` subclass under `name` (its config, transform and encoder)."""

    def add(cls: type) -> type:
        cls.name = name
        return MODALITIES.register(name)(cls)

    return add


@dataclass
class Tokens:
    """What a modality encoder produces for a batch."""

    tokens: torch.Tensor  # [B, L, width] from `tokenize`; [B, K, D] from `forward`
    padding_mask: torch.Tensor | None = None  # [B, L] bool, True = real token
    target: torch.Tensor | None = None  # [B, L, P] reconstruction target of every token (pretraining)
    positions: torch.Tensor | None = None  # [B, L, 3] token coordinates for the decoder (point groups)


class ModalityEncoder(nn.Module):
    """Turns a model-ready batch of one modality into backbone-width tokens.

    Subclasses set `config_class` and implement `tokenize` (batch -> tokens with positions, and
    the reconstruction target on request), `check_input`, `build_transform` (raw sample ->
    model-ready tensor) and `example_input`; they may override the masked-pretraining defaults
    `sample_mask` (random masking at `cfg.mask_ratio`) and `reconstruction_loss` (MSE on the hidden
    tokens). The base class runs the optional modality-specific blocks and the projection.
    """

    name: str
    config_class: type[ModalityConfig] = ModalityConfig
    masked_pretraining = True  # False: its tokens cannot hide input (a convolution sees every pixel)

    def __init__(self, cfg: ModalityConfig, dim: int, width: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.width = width or cfg.width or dim
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

    @property
    def target_dim(self) -> int:
        """Size P of one token's reconstruction target."""
        raise NotImplementedError

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        """Model-ready batch -> tokens [B, L, width] with positions added (+ padding mask, + target)."""
        raise NotImplementedError

    def padding_mask(self, x: Any) -> torch.Tensor | None:
        """[B, L] bool (True = real token) for inputs with padding, else None."""
        return None

    def sample_mask(self, x: Any, generator: torch.Generator | None = None) -> Masking:
        """The tokens to hide for masked pretraining (default: uniform random at `cfg.mask_ratio`)."""
        batch_size = len(x) if isinstance(x, torch.Tensor) else len(next(iter(x.values())))
        device = generator.device if generator is not None else None
        return random_masking(batch_size, self.num_tokens, self.cfg.mask_ratio, self.padding_mask(x),
                              generator=generator, device=device)

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, P] for the N hidden tokens -> mean squared error."""
        return F.mse_loss(pred.float(), target.float())

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

    def forward(self, x: Any, ids_keep: torch.Tensor | None = None, keep_valid: torch.Tensor | None = None,
                with_target: bool = False) -> Tokens:
        """Tokens for the backbone: [B, L, D], or [B, K, D] with `ids_keep` [B, K] (slots where
        `keep_valid` is False become padding). `target` and `positions` stay at full length L."""
        self.check_input(x)
        out = self.tokenize(x, with_target)  # tokens [B, L, width]
        tokens, padding_mask = out.tokens, out.padding_mask
        if ids_keep is not None:  # drop hidden tokens before any block sees them (MAE)
            tokens = gather_tokens(tokens, ids_keep)  # [B, K, width]
            padding_mask = None if padding_mask is None else gather_tokens(padding_mask, ids_keep)
            if keep_valid is not None:
                padding_mask = keep_valid if padding_mask is None else padding_mask & keep_valid
        tokens = self.encode(tokens, padding_mask)  # [B, K, width]
        return replace(out, tokens=self.proj(self.norm(tokens)), padding_mask=padding_mask)  # [B, K, D]

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, K, width] kept tokens -> the modality's own blocks (encoders from other libraries run
        their transformer first, see omnivec/encoders)."""
        return run_blocks(self.blocks, tokens, padding_mask)

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
