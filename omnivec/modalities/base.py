"""`ModalityEncoder`: what every modality file implements, and how it plugs into the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import run_blocks, transformer_blocks
from ..config import AugmentConfig, ModalityConfig
from ..errors import ConfigError, InputError
from ..files import nbytes
from ..masking import Masking, gather_tokens, keep_count, random_masking
from ..registry import MODALITIES


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[B, L, P] -> each patch standardised over its P values: MAE's normalised-pixel target
    (x - mean) / sqrt(unbiased var + eps), computed with one fused `layer_norm` (biased variance,
    rescaled so the result is MAE's exactly)."""
    P = patches.shape[-1]
    unbias = (P - 1) / P
    return F.layer_norm(patches, (P,), eps=eps * unbias) * unbias**0.5


def fill_hidden(
    raw: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, standardised: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """raw: [n, L, P] true patches, pred: [N, P] predictions of the N hidden ones -> (patches with the
    hidden ones blank (NaN), patches with the hidden ones predicted); `standardised` predictions
    (norm_pix_loss) are rescaled with the true patch's statistics, as in MAE's figures."""
    hidden = raw[mask]
    recon = raw.clone()
    if standardised:
        pred = pred * (hidden.var(-1, keepdim=True) + 1e-6).sqrt() + hidden.mean(-1, keepdim=True)
    recon[mask] = pred
    blank = raw.clone()
    blank[mask] = float("nan")
    return blank, recon


def cast_floats(x: Any, dtype: torch.dtype) -> Any:
    """A model-ready batch (a tensor or a dict of tensors) with its floating-point tensors in `dtype`."""
    if isinstance(x, Mapping):
        return {k: cast_floats(v, dtype) for k, v in x.items()}
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    return x


def register_modality(name: str) -> Callable[[type], type]:
    """Register a `ModalityEncoder` subclass under `name` (its config, transform and encoder)."""

    def add(cls: type) -> type:
        cls.name = name
        return MODALITIES.register(name)(cls)

    return add


@dataclass
class Tokens:
    """What a modality encoder produces for a batch."""

    tokens: torch.Tensor  # [B, L, width] from `tokenize`; [B, K, width] from `tokenize_kept`; [B, K, D] from `forward`
    padding_mask: torch.Tensor | None = None  # [B, L] bool, True = real token
    target: torch.Tensor | None = None  # [B, L, P] reconstruction target of every token (pretraining)
    positions: torch.Tensor | None = None  # [B, L, 3] token coordinates for the decoder (point groups)


class ModalityEncoder(nn.Module):
    """Turns a model-ready batch of one modality into backbone-width tokens.

    A modality class owns everything about its kind of data; generic code asks it, never names it:

    - files: `suffixes` and `read(path)` (decoded raw sample, `DataError` naming a bad file),
      `verify(path)` (decodes completely, for data check), `claims(path)` (which files and folders
      are its own);
    - inline samples (a data column that holds the sample itself, as `text` does): `inline_column`,
      `parse_inline` (a cell -> the row's value), `read_inline` (-> the raw sample, `DataError` for an
      unusable one) and `inline_member` (the sample as a file `read` decodes, for shards);
    - samples: `build_transform(cfg, train, augment)` (raw sample -> model-ready tensor; `augment`, an
      `augment_class`, adds training augmentation; default: `transform_class(cfg, train, augment)`),
      `collate(inputs, cfg)` (samples -> batch, padding included), `example_input`, `check_input`;
    - tokens: `tokenize` (batch -> tokens with positions, and the reconstruction target on request),
      `tokenize_kept` (only the tokens masked pretraining keeps; default: `tokenize` all, then gather:
      a modality whose tokens cost real work each, like point groups, computes only the kept ones);
    - masked pretraining: `sample_mask` (default: random at `cfg.mask_ratio`), `reconstruction_loss`
      (default: MSE on the hidden tokens), `decoder_position_dim` (0: the decoder learns a position
      per token; n: tokens come with [B, L, n] coordinates, `Tokens.positions`);
    - figures: `patchify` / `unpatchify` (the target and the reconstruction figures use the same
      ones, as MAE does), `display` and `plot_style` (None: no reconstruction figure);
    - assets saved beside the weights: `save_assets` / `load_assets` (a tokenizer).

    The base class runs the optional modality-specific blocks and the projection;
    `set_grad_checkpointing` makes its blocks recompute their activations in the backward pass.
    """

    name: str
    config_class: type[ModalityConfig] = ModalityConfig
    augment_class: type[AugmentConfig] = AugmentConfig  # its training augmentation switches (none: text)
    transform_class: Callable[..., Callable[..., Any]] | None = None  # `build_transform` makes it (cfg, train, augment)
    masked_pretraining = True  # False: its tokens cannot hide input (a convolution sees every pixel)
    suffixes: tuple[str, ...] = ()  # file types `read` decodes
    decoder_position_dim = 0  # > 0: the masked decoder places tokens by `Tokens.positions` [B, L, n]
    plot_style: str | None = None  # reconstruction figures: "image", "spectrogram", "points" or None
    inline_column: str | None = None  # a data column holding the sample itself (text), beside `path`

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
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of the modality's blocks in the backward pass (`run_block`)."""
        self.grad_checkpointing = enable

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

    def tokenize_kept(self, x: Any, ids_keep: torch.Tensor, with_target: bool = False) -> Tokens:
        """Like `tokenize`, but tokens [B, K, width] and padding mask [B, K] only at `ids_keep` [B, K];
        target and positions stay at full length L (the decoder sees every token)."""
        out = self.tokenize(x, with_target)  # tokens [B, L, width]
        padding_mask = None if out.padding_mask is None else gather_tokens(out.padding_mask, ids_keep)
        return replace(out, tokens=gather_tokens(out.tokens, ids_keep), padding_mask=padding_mask)  # [B, K, width]

    def padding_mask(self, x: Any) -> torch.Tensor | None:
        """[B, L] bool (True = real token) for inputs with padding, else None."""
        return None

    def visible_tokens(self) -> int:
        """Tokens a full-length sample keeps in masked pretraining (at `cfg.mask_ratio`)."""
        return int(keep_count(torch.tensor(self.num_tokens), self.cfg.mask_ratio))

    def sample_mask(self, x: Any, generator: torch.Generator | None = None) -> Masking:
        """The tokens to hide for masked pretraining (default: uniform random at `cfg.mask_ratio`)."""
        batch_size = len(x) if isinstance(x, torch.Tensor) else len(next(iter(x.values())))
        device = generator.device if generator is not None else None
        return random_masking(
            batch_size, self.num_tokens, self.cfg.mask_ratio, self.padding_mask(x), generator=generator, device=device
        )

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, P] for the N hidden tokens -> mean squared error."""
        return F.mse_loss(pred.float(), target.float())

    def check_input(self, x: Any) -> None:
        """Raise `InputError` naming the modality and the expected shape when `x` does not fit."""
        raise NotImplementedError

    @classmethod
    def claims(cls, path: Path) -> bool:
        """True when `path` is a file (or folder) of this modality (a missing file is judged by its name)."""
        return not path.is_dir() and path.suffix.lower() in cls.suffixes

    @classmethod
    def read(cls, path: Path) -> Any:
        """Decode one file into the raw sample `build_transform` takes (`DataError` naming the file)."""
        raise NotImplementedError

    @classmethod
    def materialize(cls, raw: Any) -> Any:
        """A raw sample as `read` returns it -> one holding all its decoded data, which the transform takes
        as it takes `read`'s (what a loader's sample cache keeps); default: `raw` itself."""
        return raw

    @classmethod
    def decoded_bytes(cls, raw: Any) -> int:
        """The bytes `materialize(raw)` will hold, known before decoding it (a sample cache's budget)."""
        return nbytes(raw)

    @classmethod
    def parse_inline(cls, value: Any, where: str) -> Any:
        """An `inline_column` cell (JSON, CSV, a dataset's column) -> the value a row holds."""
        raise NotImplementedError

    @classmethod
    def read_inline(cls, value: Any, where: str) -> Any:
        """A row's inline value -> the raw sample `build_transform` takes (`DataError` naming `where`)."""
        return value

    @classmethod
    def inline_member(cls, value: Any) -> tuple[str, bytes]:
        """An inline value as (suffix, bytes) of a file `read` decodes (a shard member)."""
        raise NotImplementedError

    @classmethod
    def verify(cls, path: Path) -> None:
        """Check that a file decodes completely (`omnivec data check`); default: `read` it."""
        cls.read(path)

    @classmethod
    def collate(cls, inputs: list[Any], cfg: ModalityConfig | None = None) -> Any:
        """Model-ready samples -> one batch (stacked; variable-length modalities pad)."""
        return torch.stack(inputs)

    @classmethod
    def save_assets(cls, cfg: ModalityConfig, directory: Path) -> list[str]:
        """Write the files the model needs beside its weights (a tokenizer) into `directory`; their names."""
        return []

    @classmethod
    def load_assets(cls, cfg: ModalityConfig, directory: Path) -> None:
        """Point `cfg` at the assets `save_assets` wrote into the model folder `directory`."""

    def patchify(self, x: Any) -> torch.Tensor:
        """Model-ready batch -> [B, L, P] the raw values under each token (token order)."""
        raise NotImplementedError

    def patch_target(self, x: Any) -> torch.Tensor:
        """[B, L, P] the reconstruction target of a patch modality (`PatchConfig`): `target_of` its patches."""
        return self.target_of(self.patchify(x))

    def target_of(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, P] raw patches -> the reconstruction target: each standardised over its P values
        (MAE's norm_pix_loss) unless the modality's `norm_pix_loss` is false."""
        return normalize_patches(patches) if self.cfg.norm_pix_loss else patches

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, P] -> the batch's layout again (inverse of `patchify`)."""
        raise NotImplementedError

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """A batch -> per sample what a figure shows ([n, H, W, C] pixels in [0, 1], [n, mel, frames], ...)."""
        return x

    def reconstruction_panels(self, x: Any, result: dict[str, Any]) -> list[torch.Tensor]:
        """(input, what the encoder saw (hidden tokens blank), reconstruction) for `display`, from a
        `MaskedPretrainer.reconstruct` result (pred [N, P] of the hidden tokens, mask [n, L])."""
        raw = self.patchify(x)  # [n, L, P]
        blank, recon = fill_hidden(raw, result["pred"], result["mask"], self.cfg.norm_pix_loss)
        return [self.display(self.unpatchify(p)) for p in (raw, blank, recon)]

    @classmethod
    def build_transform(
        cls, cfg: ModalityConfig, train: bool = False, augment: AugmentConfig | None = None
    ) -> Callable[..., Any]:
        """The per-sample transform from a decoded file to the model-ready tensor; `augment` (an
        `augment_class`) adds its augmentation when `train`, and is ignored otherwise. Default:
        `transform_class(cfg, train, augment)`."""
        if cls.transform_class is None:
            raise NotImplementedError
        return cls.transform_class(cfg, train, augment)

    @classmethod
    def example_input(cls, cfg: ModalityConfig, batch_size: int, generator: torch.Generator) -> Any:
        """A random model-ready batch of `batch_size` samples."""
        raise NotImplementedError

    def forward(
        self,
        x: Any,
        ids_keep: torch.Tensor | None = None,
        keep_valid: torch.Tensor | None = None,
        with_target: bool = False,
    ) -> Tokens:
        """Tokens for the backbone: [B, L, D], or [B, K, D] with `ids_keep` [B, K] (slots where
        `keep_valid` is False become padding). `target` and `positions` stay at full length L."""
        self.check_input(x)
        x = cast_floats(x, self.proj_dtype)  # float64, fp16
        if ids_keep is None:
            out = self.tokenize(x, with_target)  # tokens [B, L, width]
            padding_mask = out.padding_mask
        else:  # drop hidden tokens before any block sees them (MAE)
            out = self.tokenize_kept(x, ids_keep, with_target)  # tokens [B, K, width]
            padding_mask = out.padding_mask
            if keep_valid is not None:
                padding_mask = keep_valid if padding_mask is None else padding_mask & keep_valid
        tokens = self.encode(out.tokens, padding_mask)  # [B, K, width]
        return replace(out, tokens=self.proj(self.norm(tokens)), padding_mask=padding_mask)  # [B, K, D]

    @property
    def proj_dtype(self) -> torch.dtype:
        """The dtype of the weights, which floating inputs are cast to."""
        return next(self.parameters()).dtype

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, K, width] kept tokens -> the modality's own blocks (encoders from other libraries run
        their transformer first, see omnivec/encoders)."""
        return run_blocks(self.blocks, tokens, padding_mask, self.grad_checkpointing)

    def _fail(self, expected: str, got: Any) -> NoReturn:
        raise InputError(f"{self.name}: expected {expected}, got {got}")

    def _check_tensor(self, x: Any, expected_shape: tuple, description: str) -> None:
        """Check a float tensor's shape; `None` in `expected_shape` is any size (the batch)."""
        if not isinstance(x, torch.Tensor):
            self._fail(f"a tensor {description}", type(x).__name__)
        shape_ok = x.ndim == len(expected_shape) and all(e is None or e == s for e, s in zip(expected_shape, x.shape))
        if not shape_ok:
            self._fail(f"a tensor {description}", f"shape {list(x.shape)}")
        if x.shape[0] == 0:
            self._fail(f"a batch of at least one sample {description}", "an empty batch")
        if not x.is_floating_point():
            self._fail(f"a floating-point tensor {description}", f"dtype {x.dtype}")

    def _check_length(self, length: int, most: int, description: str) -> None:
        """A variable length (frames of a clip) must be 1 to `most`."""
        if not 1 <= length <= most:
            self._fail(f"a tensor {description}", f"length {length}")

    def _check_mask(self, mask: Any, shape: torch.Size, sample: str) -> None:
        """An `attention_mask` [B, T] (1 or True = real frame) with a real frame in every `sample`."""
        expected = f"attention_mask {list(shape)} of 0/1 (1 = real frame)"
        if not isinstance(mask, torch.Tensor) or mask.shape != shape:
            self._fail(expected, f"shape {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__)
        if mask.is_floating_point():
            self._fail(expected, f"dtype {mask.dtype}")
        empty = (mask == 0).all(1)  # [B]
        if bool(empty.any()):  # a host sync, as text's check
            self._fail(
                f"at least one real frame per {sample} (attention_mask 1)", f"none in row {int(empty.nonzero()[0])}"
            )
