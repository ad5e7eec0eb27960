"""Image encoders from timm: ViTs (patch tokens; masking works) and convolutional backbones
(EfficientNet-B0..B7, CSPDarknet53, ...) whose last feature map becomes the tokens.

`pretrained: "timm:MODEL_NAME"` loads the hub weights timm knows for that name, or the local file
`checkpoint:` names (.safetensors, or .pth/.bin read with weights_only); `library_config:` holds
keyword arguments of `timm.create_model` (e.g. {depth: 6}) for checkpoints of modified architectures.
"""

from __future__ import annotations

from typing import cast

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..backbone import attention_mask, run_block
from ..errors import ConfigError, InputError
from ..masking import Masking
from ..modalities.base import ModalityEncoder, Tokens
from ..modalities.image import ImageConfig, ImageEncoder
from .loading import LibraryEncoder, Source, read_weights, register_encoder


def model_name(cfg: ImageConfig) -> str:
    return cfg.pretrained.partition(":")[2]


def create_timm_model(
    name: str, in_chans: int, image_size: int | None = None, pretrained: bool = False, **kwargs
) -> nn.Module:
    """The timm model `name` without classifier, at `image_size` (None: the model's default);
    `kwargs` (the modality's `library_config`) change its architecture, e.g. {"depth": 6}."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"modalities.image.pretrained: {name!r} is not a timm model name (see timm.list_models())")
    kwargs.update(pretrained=pretrained, num_classes=0, in_chans=in_chans)
    if image_size is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)  # transformers take the input size
    except TypeError:  # convolutional networks take any size
        return timm.create_model(name, **kwargs)


class TimmSource(LibraryEncoder):
    """Where timm encoders read their weights: `checkpoint:` (a local file), else the hub."""

    def source(self) -> Source:
        if self.cfg.checkpoint:
            return Source(read_weights(self.cfg.checkpoint))
        try:  # the hub weights, at the model's default input size
            model = create_timm_model(
                model_name(self.cfg), self.cfg.in_chans, pretrained=True, **self.cfg.library_config
            )
        except (OSError, RuntimeError) as e:
            raise ConfigError(
                f"modalities.image.pretrained: cannot download the weights of "
                f"{model_name(self.cfg)!r} ({e}); set modalities.image.checkpoint to a local file"
            ) from e
        return Source(model.state_dict())


class TimmViTEncoder(TimmSource, ImageEncoder):
    """[B, C, H, W] -> a timm VisionTransformer's patch tokens [B, L, width] (prefix tokens such as
    CLS take part in attention and are dropped at the end); hidden patches are dropped before the blocks."""

    library: VisionTransformer

    def __init__(self, cfg: ImageConfig, dim: int, model: VisionTransformer):
        ModalityEncoder.__init__(self, cfg, dim, width=model.embed_dim)  # the library's patch embedding, not ours
        patch = model.patch_embed.patch_size[0]
        if patch != cfg.patch_size:
            raise ConfigError(
                f"modalities.image.patch_size: expected {patch} (as {model_name(cfg)}), got {cfg.patch_size}"
            )
        self.library = model
        self.num_prefix_tokens = model.num_prefix_tokens
        self.pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens  # prefix slots in pos_embed

    @property
    def num_tokens(self) -> int:
        return self.library.patch_embed.num_patches

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        tokens = self.library.patch_embed(x)  # [B, L, width]
        if self.library.pos_embed is not None:
            tokens = tokens + self.library.pos_embed[:, self.pos_prefix :]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        m, B = self.library, tokens.shape[0]
        prefix_tokens = [t.expand(B, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if prefix_tokens:
            prefix = torch.cat(prefix_tokens, dim=1)  # [B, num_prefix, width]
            if self.pos_prefix and m.pos_embed is not None:  # (timm's pos_embed="none" has no positions)
                prefix = prefix + m.pos_embed[:, : self.pos_prefix]
            tokens = torch.cat([prefix, tokens], dim=1)  # [B, num_prefix + K, width]
        x = m.norm_pre(m.pos_drop(tokens))
        mask = (
            None
            if padding_mask is None
            else attention_mask(nn.functional.pad(padding_mask, (self.num_prefix_tokens, 0), value=True))
        )
        for block in m.blocks:
            x = run_block(block, x, mask, self.grad_checkpointing)
        return super().encode(m.norm(x)[:, self.num_prefix_tokens :], padding_mask)

    def resize(self, key: str, tensor: torch.Tensor, shape: torch.Size, source: Source) -> torch.Tensor | None:
        if key != "pos_embed":
            return None
        return resample_abs_pos_embed(
            tensor, list(self.library.patch_embed.grid_size), num_prefix_tokens=self.pos_prefix
        )


class TimmConvEncoder(TimmSource, ImageEncoder):
    """[B, C, H, W] -> a timm CNN's last feature map [B, width, h, w] as h*w tokens, plus learned
    positions (zero at first, so a freshly loaded encoder returns exactly the library's features).

    Masked pretraining needs patch tokens: a convolution sees every pixel, hidden or not."""

    masked_pretraining = False

    def __init__(self, cfg: ImageConfig, dim: int, model: nn.Module):
        ModalityEncoder.__init__(self, cfg, dim, width=cast(int, model.num_features))  # timm models' feature width
        self.library = model
        was_training = model.training
        with torch.no_grad():
            features = model.eval().forward_features(torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size))
        model.train(was_training)
        if features.ndim != 4 or features.shape[1] != model.num_features:
            raise ConfigError(
                f"modalities.image.pretrained: {model_name(cfg)!r} is neither a timm VisionTransformer "
                f"nor a network with [B, C, h, w] features (got {list(features.shape)})"
            )
        self.grid = tuple(features.shape[-2:])
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        if with_target:
            self.sample_mask(x)
        features = self.library.forward_features(x)  # [B, width, h, w]
        return Tokens(features.flatten(2).transpose(1, 2) + self.pos_embed)  # [B, h*w, width]

    def sample_mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Masking:
        raise InputError(
            f"image: masked pretraining needs patch tokens, and {model_name(self.cfg)} is convolutional; "
            "pretrain the other modalities and fine-tune this one, or use a ViT"
        )


@register_encoder("image", "timm")
def timm_image_encoder(cfg: ImageConfig, dim: int) -> ModalityEncoder:
    """A timm ViT or convolutional network as omnivec's image encoder."""
    try:
        model = create_timm_model(model_name(cfg), cfg.in_chans, cfg.image_size, **cfg.library_config)
    except TypeError as e:
        raise ConfigError(
            f"modalities.image.library_config: {cfg.library_config} does not fit {model_name(cfg)!r} ({e})"
        ) from e
    if isinstance(model, VisionTransformer):
        return TimmViTEncoder(cfg, dim, model)
    return TimmConvEncoder(cfg, dim, model)
