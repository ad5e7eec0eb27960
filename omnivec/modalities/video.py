"""Video modality: tubelet embedding (Conv3d, VideoMAE style) with learned space-time positions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import AugmentConfig, PatchConfig
from ..errors import InputError
from ..masking import Masking, keep_count, tube_masking
from ..parsing import require, require_divisor, require_positive
from .base import ModalityEncoder, Tokens, register_modality
from .image import denormalize, validate_pixels
from .video_files import VideoFile, read_frame_folder


@dataclass
class VideoConfig(PatchConfig):
    num_frames: int = 16
    image_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    mask_ratio: float = 0.9  # VideoMAE tube masking

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        validate_pixels(self, prefix)  # of each frame
        require_positive(self, prefix, "num_frames", "tubelet_size")
        require_divisor(self, prefix, "tubelet_size", "num_frames")


@dataclass
class VideoAugment(AugmentConfig):
    """Training augmentation of clips, VideoMAE's fine-tuning recipe: RandAugment with the same ops
    on every frame of a clip and scale jitter (one random resized crop for all frames), both
    torchvision v2 transforms on a `Video`. 0 ops switches RandAugment off."""

    rand_augment_ops: int = 4  # RandAugment ops per clip (VideoMAE: rand-m7-n4); 0 off
    rand_augment_magnitude: int = 7  # their magnitude, 0-30 (VideoMAE: 7)
    crop_scale: tuple[float, ...] = (0.08, 1.0)  # area range of the crop (VideoMAE; without augment: 0.7-1)

    def validate(self, prefix: str) -> None:
        require(self.rand_augment_ops >= 0, f"{prefix}.rand_augment_ops", "an int >= 0 (0: off)", self.rand_augment_ops)
        require(
            0 <= self.rand_augment_magnitude <= 30,
            f"{prefix}.rand_augment_magnitude",
            "an int in [0, 30]",
            self.rand_augment_magnitude,
        )
        require(
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            f"{prefix}.crop_scale",
            "two area fractions 0 < low <= high <= 1",
            self.crop_scale,
        )


class VideoTransform:
    """uint8 frames [T, H, W, C] (as decoders return them) or [T, C, H, W] -> float [frames, C, S, S].

    Picks `num_frames` frames spread uniformly over the clip (with a random offset when training); a
    clip with fewer frames gives each of them once, its last repeated to fill the last tubelet
    (`collate` pads a batch and says which frames are real). Training crops at random, with
    `augment` as it says.
    """

    def __init__(self, cfg: VideoConfig, train: bool = False, augment: VideoAugment | None = None):
        self.num_frames, self.in_chans, self.train = cfg.num_frames, cfg.in_chans, train
        self.tubelet_size = cfg.tubelet_size
        size = cfg.image_size
        augment = augment if train else None
        spatial = (
            [v2.RandomResizedCrop(size, scale=augment.crop_scale if augment else (0.7, 1.0), antialias=True)]
            if train
            else [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        )
        if augment and augment.rand_augment_ops:  # one draw of ops per clip: every frame alike
            spatial.append(v2.RandAugment(augment.rand_augment_ops, augment.rand_augment_magnitude))
        self.pipeline = v2.Compose([*spatial, v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)])

    def frame_indices(self, total: int) -> torch.Tensor:
        """Which of a clip's `total` frames to take: `num_frames` spread over it, or every one of a
        shorter clip (whole tubelets: the last frame repeated)."""
        if total < self.num_frames:
            return torch.arange(-(-total // self.tubelet_size) * self.tubelet_size).clamp(max=total - 1)
        step = total / self.num_frames
        offset = torch.rand(()).item() * step if self.train else step / 2
        return (torch.arange(self.num_frames) * step + offset).long().clamp(max=total - 1)

    def __call__(self, frames: torch.Tensor | VideoFile) -> torch.Tensor:
        if isinstance(frames, VideoFile):  # decode only the frames sampled
            frames = frames.frames(self.frame_indices(len(frames)).tolist())  # [frames, H, W, 3]
        else:
            frames = torch.as_tensor(frames)
            if frames.ndim not in (3, 4) or frames.shape[0] == 0:
                raise InputError(
                    f"video: expected frames [T >= 1, H, W, C], [T, C, H, W] or grey [T, H, W], "
                    f"got shape {list(frames.shape)}"
                )
            frames = frames[self.frame_indices(frames.shape[0])]  # [frames <= num_frames, ...]
        if frames.ndim == 3:  # grey [T, H, W]
            frames = frames[:, None]
        if frames.shape[-1] in (1, 3) and frames.shape[1] not in (1, 3):
            frames = frames.permute(0, 3, 1, 2)  # [T, H, W, C] -> [T, C, H, W]
        if frames.shape[1] == 1 and self.in_chans == 3:
            frames = frames.expand(-1, 3, -1, -1)
        return self.pipeline(tv_tensors.Video(frames)).as_subclass(torch.Tensor)  # one crop for all frames


@register_modality("video")
class VideoEncoder(ModalityEncoder):
    """Clips [B, T, C, H, W] (every frame real, T <= num_frames, whole tubelets) or
    {"pixel_values": [B, T, C, H, W], "attention_mask": [B, T]} (as `collate` pads a batch) ->
    [B, (T/t)*(H/p)*(W/p), D] tubelet tokens (time-major order: a short clip's tokens are a prefix,
    and use the first positions).

    A tubelet is real when it holds at least one real frame; the others are padding: never kept nor
    hidden by tube masking, never attended to, never pooled. Padded frames are set to zero (the
    normalised mean), so padding never changes an output."""

    config_class = VideoConfig
    augment_class = VideoAugment
    transform_class = VideoTransform
    suffixes = (".mp4", ".webm", ".avi", ".mkv", ".mov")
    plot_style = "image"

    def __init__(self, cfg: VideoConfig, dim: int):
        super().__init__(cfg, dim)
        t, p = cfg.tubelet_size, cfg.patch_size
        self.grid = (cfg.num_frames // t, cfg.image_size // p, cfg.image_size // p)
        self.patch_embed = nn.Conv3d(cfg.in_chans, self.width, kernel_size=(t, p, p), stride=(t, p, p))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def target_dim(self) -> int:
        return self.cfg.tubelet_size * self.cfg.in_chans * self.cfg.patch_size**2

    def frames(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-ready batch -> (clips [B, T, C, H, W] with padded frames zero; frame mask [B, T],
        True = real, or None when every frame is real)."""
        if not isinstance(x, Mapping):
            return x, None
        values, mask = x["pixel_values"], x.get("attention_mask")
        if mask is None:
            return values, None
        mask = mask.bool()  # [B, T]
        return torch.where(mask[:, :, None, None, None], values, torch.zeros((), dtype=values.dtype)), mask

    def step_mask(self, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Frame mask [B, T] -> [B, T/t]: a time step (tubelet) is real when it holds a real frame."""
        return None if frame_mask is None else frame_mask.unflatten(1, (-1, self.cfg.tubelet_size)).any(-1)

    def padding_mask(self, x: Any) -> torch.Tensor | None:
        steps = self.step_mask(self.frames(x)[1])
        return None if steps is None else steps.repeat_interleave(self.grid[1] * self.grid[2], dim=1)  # [B, L]

    def visible_tokens(self) -> int:
        """Tube masking keeps the same share of the spatial places at every time step."""
        t, h, w = self.grid
        return t * int(keep_count(torch.tensor(h * w), self.cfg.mask_ratio))

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        # The tubelet projection as one matmul over the tubelets (the Conv3d's weights, reordered to
        # the tubelets' (tt, C, p, p) layout); the tubelets are cut once for tokens and target.
        tubes = self.patchify(x)  # [B, L, tt*C*p*p]
        weight = self.patch_embed.weight.transpose(1, 2).flatten(1)  # [width, C, tt, p, p] -> [width, tt*C*p*p]
        tokens = (
            nn.functional.linear(tubes, weight, self.patch_embed.bias) + self.pos_embed[:, : tubes.shape[1]]
        )  # [B, L, width]
        return Tokens(tokens, self.padding_mask(x), target=self.target_of(tubes) if with_target else None)

    def patchify(self, x: Any) -> torch.Tensor:
        """Model-ready batch -> [B, L, tt*C*p*p] the pixels of each tubelet, time-major as the tokens."""
        v = self.frames(x)[0]  # [B, T, C, H, W]
        B, C = v.shape[0], v.shape[2]
        (_, h, w), tt, p = self.grid, self.cfg.tubelet_size, self.cfg.patch_size
        t = v.shape[1] // tt
        tubes = v.reshape(B, t, tt, C, h, p, w, p).permute(0, 1, 4, 6, 2, 3, 5, 7)  # [B, t, h, w, tt, C, p, p]
        return tubes.reshape(B, t * h * w, -1)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, tt*C*p*p] -> [B, T, C, H, W]."""
        B = patches.shape[0]
        (_, h, w), tt, p = self.grid, self.cfg.tubelet_size, self.cfg.patch_size
        t = patches.shape[1] // (h * w)
        v = patches.reshape(B, t, h, w, tt, -1, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)  # [B, t, tt, C, h, p, w, p]
        return v.reshape(B, t * tt, -1, h * p, w * p)

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """[n, T, C, H, W] normalised -> [n, H, 4 * W, C]: four frames side by side, in [0, 1]."""
        n, T, C, H, W = x.shape
        frames = denormalize(x[:, torch.linspace(0, T - 1, 4).long()], self.cfg.mean, self.cfg.std)  # [n, 4, H, W, C]
        return frames.permute(0, 2, 1, 3, 4).reshape(n, H, 4 * W, C)

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Video files, and folders of frame images."""
        return path.is_dir() or super().claims(path)

    @classmethod
    def read(cls, path: Path) -> torch.Tensor | VideoFile:
        """A video file -> a `VideoFile` (decoded lazily by the transform); a folder -> its frames [T, H, W, 3]."""
        return read_frame_folder(path) if path.is_dir() else VideoFile(path)

    @classmethod
    def materialize(cls, raw: torch.Tensor | VideoFile) -> torch.Tensor:
        """A `VideoFile` -> all its frames [T, H, W, 3] (the transform then picks the frames it would decode)."""
        return raw.frames(range(len(raw))) if isinstance(raw, VideoFile) else raw

    @classmethod
    def decoded_bytes(cls, raw: torch.Tensor | VideoFile) -> int:
        """A `VideoFile`'s frames as uint8 RGB, from its frame count and size (nothing decoded)."""
        return len(raw) * raw.height * raw.width * 3 if isinstance(raw, VideoFile) else super().decoded_bytes(raw)

    @classmethod
    def verify(cls, path: Path) -> None:
        if path.is_dir():
            read_frame_folder(path)
        else:
            VideoFile.verify(path)

    def sample_mask(self, x: Any, generator: torch.Generator | None = None) -> Masking:
        """Tube masking (VideoMAE): the same patches hidden in every real frame, padding never."""
        values, frame_mask = self.frames(x)
        device = generator.device if generator is not None else None
        grid = (values.shape[1] // self.cfg.tubelet_size, *self.grid[1:])
        return tube_masking(
            len(values),
            grid,
            self.cfg.mask_ratio,
            generator=generator,
            device=device,
            padding_mask=self.step_mask(frame_mask),
        )

    def check_input(self, x: Any) -> None:
        t, c, s, tt = self.cfg.num_frames, self.cfg.in_chans, self.cfg.image_size, self.cfg.tubelet_size
        shape = (
            f"[B, T, {c}, {s}, {s}] (frames, channels, height, width; T <= {t} (modalities.video.num_frames), "
            f"a multiple of tubelet_size={tt})"
        )
        values = x.get("pixel_values") if isinstance(x, Mapping) else x
        if isinstance(x, Mapping) and values is None:
            self._fail(f"pixel_values {shape} in the dict (and attention_mask [B, T])", f"keys {sorted(x)}")
        what = f"pixel_values {shape}" if isinstance(x, Mapping) else f"{shape} or {{'pixel_values', 'attention_mask'}}"
        self._check_tensor(values, (None, None, c, s, s), what)
        self._check_length(values.shape[1], t, what)
        if values.shape[1] % tt:
            self._fail(f"whole tubelets, {what}", f"{values.shape[1]} frames")
        if isinstance(x, Mapping) and x.get("attention_mask") is not None:
            self._check_mask(x["attention_mask"], values.shape[:2], "clip")

    @classmethod
    def collate(cls, inputs: list[torch.Tensor], cfg: VideoConfig | None = None) -> Any:
        """Clips [T_i, C, H, W] -> [B, T, C, H, W] when all are as long, else {"pixel_values":
        [B, max T_i, C, H, W] right-padded with zero frames, "attention_mask": [B, max T_i] (1 = real frame)}."""
        lengths = torch.tensor([len(x) for x in inputs])
        if (lengths == lengths[0]).all():
            return torch.stack(inputs)
        values = nn.utils.rnn.pad_sequence(inputs, batch_first=True)  # [B, T, C, H, W]
        mask = (torch.arange(values.shape[1])[None] < lengths[:, None]).long()  # [B, T]
        return {"pixel_values": values, "attention_mask": mask}

    @classmethod
    def example_input(cls, cfg: VideoConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Random full-length clips [B, num_frames, C, S, S] (`collate` makes padded batches)."""
        shape = (batch_size, cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size)
        return torch.randn(*shape, generator=generator)
