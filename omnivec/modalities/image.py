"""Image modality: ViT patch embedding with learned 2-D positions (timm `PatchEmbed`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.auto_augment import posterize as timm_posterize
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn
from torchvision.transforms import v2

from ..config import AugmentConfig, PatchConfig
from ..errors import DataError, InputError
from ..files import Blob, opened
from ..parsing import require, require_divisor, require_positive
from .base import ModalityEncoder, Tokens, register_modality

DRAFT_SIDE = 1024  # a JPEG decodes reduced while both sides stay >= this: 4x a 224 input, ~290 px in an 8% crop
MAX_PIXELS = 8192 * 8192  # most pixels decoded per image (Pillow refuses over 178 M; 13000^2 RGBA took 3 GB)
PIXELS_SETTING = "OMNIVEC_MAX_IMAGE_PIXELS"  # the environment variable that overrides MAX_PIXELS


@dataclass
class ImageConfig(PatchConfig):
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    mask_ratio: float = 0.75  # MAE

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        validate_pixels(self, prefix)


def validate_pixels(cfg: Any, prefix: str) -> None:
    """The settings of square images cut into patches (an `ImageConfig`, a video's frames): positive
    `image_size`, `patch_size` (a divisor of it) and `in_chans`, and a `mean` and `std` per channel."""
    require_positive(cfg, prefix, "image_size", "patch_size", "in_chans")
    require_divisor(cfg, prefix, "patch_size", "image_size")
    for key in ("mean", "std"):
        value = getattr(cfg, key)
        require(len(value) == cfg.in_chans, f"{prefix}.{key}", f"{cfg.in_chans} values (in_chans)", value)


@dataclass
class ImageAugment(AugmentConfig):
    """Training augmentation of images: timm's `create_transform` per image and timm's `Mixup` on
    the batch. Defaults: MAE's ImageNet fine-tuning recipe (DeiT's, without colour jitter); 0 or ""
    switches one off."""

    crop_scale: tuple[float, ...] = (0.08, 1.0)  # area range of the random resized crop (timm, MAE)
    hflip: float = 0.5  # horizontal flip probability (timm, MAE); 0 for digits, text and other handed images
    rand_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy (MAE); "" off
    random_erasing: float = 0.25  # probability of erasing a random box with noise (timm RandomErasing, MAE)
    mixup: float = 0.8  # Mixup alpha on the batch (timm Mixup, MAE); single-label classification only
    cutmix: float = 1.0  # CutMix alpha (timm Mixup picks mixup or cutmix per batch, even odds)

    def validate(self, prefix: str) -> None:
        require(
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            f"{prefix}.crop_scale",
            "two area fractions 0 < low <= high <= 1",
            self.crop_scale,
        )
        for key in ("hflip", "random_erasing"):
            require(0 <= getattr(self, key) <= 1, f"{prefix}.{key}", "a probability in [0, 1]", getattr(self, key))
        for key in ("mixup", "cutmix"):
            require(getattr(self, key) >= 0, f"{prefix}.{key}", "an alpha >= 0 (0: off)", getattr(self, key))
        if self.rand_augment:
            try:
                rand_augment_transform(self.rand_augment, {})
            except (AssertionError, ValueError, IndexError) as e:
                require(
                    False,
                    f"{prefix}.rand_augment",
                    f"a timm RandAugment policy such as 'rand-m9-mstd0.5-inc1' ({e})",
                    self.rand_augment,
                )

    def batch_mix(self) -> dict[str, float]:
        return {"mixup_alpha": self.mixup, "cutmix_alpha": self.cutmix} if self.mixup or self.cutmix else {}


class ImageTransform:
    """PIL image or uint8 tensor [C, H, W] -> normalised float tensor [in_chans, S, S].

    Training crops at random (area 0.6-1); with `augment`, timm's training transform instead."""

    def __init__(self, cfg: ImageConfig, train: bool = False, augment: ImageAugment | None = None):
        size = cfg.image_size
        self.in_chans, self.augment = cfg.in_chans, augment if train else None
        if self.augment:
            a = self.augment
            self.pipeline = create_transform(
                size,
                is_training=True,
                scale=cast(tuple[float, float], a.crop_scale),  # validated: two fractions
                hflip=a.hflip,
                color_jitter=None,  # type: ignore[arg-type]  # timm types it float | tuple, takes None for off
                auto_augment=a.rand_augment or None,
                interpolation="bicubic",
                mean=cfg.mean,
                std=cfg.std,
                re_prob=a.random_erasing,
                re_mode="pixel",
            )
            for op in (o for t in self.pipeline.transforms if isinstance(t, RandAugment) for o in t.ops):
                if op.name == "PosterizeIncreasing":
                    op.aug_fn = posterize
            return
        resize = (
            [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
            if train
            else [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        )
        self.pipeline = v2.Compose(
            [v2.ToImage(), *resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
        )

    def __call__(self, image) -> torch.Tensor:
        check_image(image, self.in_chans)
        if self.augment and not hasattr(image, "convert"):  # timm's transforms take PIL images
            image = v2.functional.to_pil_image(image)
        if hasattr(image, "convert"):  # PIL: match the configured channels
            image = image.convert("RGB" if self.in_chans == 3 else "L")
        x = self.pipeline(image)  # [C, S, S]
        if x.shape[0] == 1 and self.in_chans == 3:
            x = x.expand(3, -1, -1)
        return x


def check_image(image, in_chans: int) -> None:
    """`InputError` for a tensor that is not [C, H, W] (C 1 or `in_chans`) or [H, W], or for an image
    without pixels (resizing it would divide by zero)."""
    if isinstance(image, torch.Tensor):
        shape = list(image.shape)
        ok = len(shape) in (2, 3) and min(shape[-2:]) >= 1 and (len(shape) == 2 or shape[0] in (1, in_chans))
    elif hasattr(image, "convert"):  # PIL
        shape, ok = [image.height, image.width], image.height >= 1 and image.width >= 1
    else:
        return
    if not ok:
        raise InputError(
            f"image: expected [C, H, W] with C 1 or {in_chans} (or [H, W], or a PIL image), H and W >= 1; "
            f"got shape {shape}"
        )


def posterize(img, bits_to_keep: int, **kwargs):
    """timm's posterize, keeping 0 bits as black, as Pillow < 13 did: Pillow 13 refuses 0, which
    timm's increasing posterize reaches at magnitude 10 (MAE's rand-m9-mstd0.5 in ~2% of draws)."""
    if bits_to_keep <= 0:
        from PIL import Image

        return Image.new(img.mode, img.size)
    return timm_posterize(img, bits_to_keep, **kwargs)


def max_pixels() -> int:
    """The most pixels an image may decode to: $OMNIVEC_MAX_IMAGE_PIXELS when set, else `MAX_PIXELS`."""
    value = os.environ.get(PIXELS_SETTING)
    if value is None:
        return MAX_PIXELS
    if not value.strip().isdigit() or int(value) < 1:
        raise DataError(f"{PIXELS_SETTING}={value!r}: expected a whole number of pixels >= 1")
    return int(value)


def read_image(path: Path | Blob):
    """An image file (or `Blob`) -> a decoded PIL image. A large JPEG is decoded reduced (`Image.draft`:
    1/2, 1/4 or 1/8) while both sides stay >= `DRAFT_SIDE`; an image that would still decode to more
    than `max_pixels()` pixels is a `DataError` naming it, before it is decoded."""
    from PIL import Image

    bound = max_pixels()
    try:
        with Image.open(opened(path)) as image:
            image.draft(None, (DRAFT_SIDE, DRAFT_SIDE))  # JPEG: sets the reduced size; other formats: no-op
            w, h = image.size
            if w * h > bound:
                raise DataError(
                    f"{path}: a {w}x{h} image ({w * h / 1e6:.1f} M pixels) is over the bound of {bound} pixels "
                    f"(set {PIXELS_SETTING} to raise it; default {MAX_PIXELS})"
                )
            image.load()
            if image.width == 0 or image.height == 0:
                raise DataError(f"{path}: image has size {image.size}")
            return image.copy()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised [..., C, H, W] -> [..., H, W, C] in [0, 1] for display."""
    shape = [1] * (x.ndim - 3) + [-1, 1, 1]
    x = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    return x.clamp(0, 1).movedim(-3, -1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p] non-overlapping patches, row-major, each flattened
    (C, p, p) like a convolution weight (`F.unfold`'s layout, with one copy instead of im2col)."""
    B, C, H, W = x.shape
    h, w = H // p, W // p
    return x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)


@register_modality("image")
class ImageEncoder(ModalityEncoder):
    """[B, C, H, W] -> [B, (H/p)*(W/p), D] patch tokens."""

    cfg: ImageConfig
    config_class = ImageConfig
    augment_class = ImageAugment
    transform_class = ImageTransform
    suffixes = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
    plot_style = "image"

    def __init__(self, cfg: ImageConfig, dim: int):
        super().__init__(cfg, dim)
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, self.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, self.width))
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.patch_embed.num_patches

    @property
    def target_dim(self) -> int:
        return self.cfg.in_chans * self.cfg.patch_size**2

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        # The patch projection as one matmul over the patches (the same weights as timm's strided
        # convolution, faster on CPUs); the patches are cut once for tokens and target.
        patches = patchify(x, self.cfg.patch_size)  # [B, L, C*p*p]
        proj = self.patch_embed.proj
        tokens = self.patch_embed.norm(F.linear(patches, proj.weight.flatten(1), proj.bias)) + self.pos_embed
        return Tokens(tokens, target=self.target_of(patches) if with_target else None)  # tokens [B, L, width]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, C*p*p] the pixels of each patch, row-major like the tokens."""
        return patchify(x, self.cfg.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, C*p*p] -> [B, C, H, W]."""
        B, p, s = patches.shape[0], self.cfg.patch_size, self.cfg.image_size
        h = s // p
        return patches.reshape(B, h, h, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, -1, s, s)

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """[n, C, H, W] normalised -> [n, H, W, C] in [0, 1]."""
        return denormalize(x, self.cfg.mean, self.cfg.std)

    @classmethod
    def read(cls, path: Path):
        return read_image(path)

    def check_input(self, x: torch.Tensor) -> None:
        c, s = self.cfg.in_chans, self.cfg.image_size
        self._check_tensor(x, (None, c, s, s), f"[B, {c}, {s}, {s}]")

    @classmethod
    def example_input(cls, cfg: ImageConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, cfg.in_chans, cfg.image_size, cfg.image_size, generator=generator)
