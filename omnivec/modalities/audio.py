"""Audio modality: Kaldi log-mel fbank (torchaudio) cut into AST's square patches or SSAST's frame patches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchaudio
from timm.layers import trunc_normal_
from torch import nn

from ..config import PatchConfig
from ..errors import InputError
from ..masking import Masking, random_masking
from ..parsing import require, require_positive
from .audio_files import AudioAugment, WaveformAugment, read_audio
from .base import ModalityEncoder, Tokens, register_modality


@dataclass
class AudioConfig(PatchConfig):
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_frames: int = 1024  # most fbank frames per clip (10 ms each): longer clips are cropped, shorter kept short
    patch_size: int = 16
    patch_stride: int = 16  # AST uses 10 (overlapping patches); masked pretraining wants 16
    # Patches that span every mel bin (SSAST's frame patches: one token per `patch_size` frames, holding the whole
    # spectrum), instead of AST's square ones. Square patches share one projection across frequency bands, so mean
    # pooling averages the bands together and loses which frequencies sound, what tells speech sounds apart
    # (SSAST: frame patches win on speech tasks, square ones on audio events).
    frame_patches: bool = False
    mean: float = -4.2677393  # AST's AudioSet fbank statistics
    std: float = 4.5689974
    mask_ratio: float = 0.8  # AudioMAE

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require_positive(
            self, prefix, "sample_rate", "num_mel_bins", "target_frames", "patch_size", "patch_stride", "std"
        )
        for key in ("target_frames",) if self.frame_patches else ("num_mel_bins", "target_frames"):
            value = getattr(self, key)
            require(value >= self.patch_size, f"{prefix}.{key}", f">= patch_size={self.patch_size}", value)
        require(
            self.patch_stride <= self.patch_size,
            f"{prefix}.patch_stride",
            f"<= patch_size={self.patch_size} (a longer stride skips frames)",
            self.patch_stride,
        )

    @property
    def kernel(self) -> tuple[int, int]:
        """A patch's (mel bins, frames)."""
        return self.num_mel_bins if self.frame_patches else self.patch_size, self.patch_size

    @property
    def stride(self) -> tuple[int, int]:
        """Patch strides along (frequency, time)."""
        return self.num_mel_bins if self.frame_patches else self.patch_stride, self.patch_stride

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (frequency, time) of a clip of `target_frames` frames."""
        f = (self.num_mel_bins - self.kernel[0]) // self.stride[0] + 1
        t = (self.target_frames - self.patch_size) // self.patch_stride + 1
        return f, t

    @property
    def padding_value(self) -> float:
        """The normalised value of a zero fbank frame: what completes a clip's last patch (AST pads so)."""
        return -self.mean / (2 * self.std)


def time_major(x: torch.Tensor, freq: int) -> torch.Tensor:
    """[B, F'*T', ...] patches in frequency-major order (a convolution's, AST's) -> [B, T'*F', ...]
    time-major: the patches of a clip's first frames come first, so a short clip's are a prefix."""
    return x.unflatten(1, (freq, -1)).transpose(1, 2).flatten(1, 2)


MAX_CHANNELS = 16  # a waveform with more rows than this is taken to be [samples, channels]: refused


class AudioTransform:
    """(waveform [channels, samples] or [samples], sample_rate) -> normalised fbank [frames, mel],
    frames <= target_frames: a shorter clip stays short (`collate` pads a batch and says which frames
    are real). Training crops a random window of a longer clip; `augment` adds its waveform and
    SpecAugment steps."""

    def __init__(self, cfg: AudioConfig, train: bool = False, augment: AudioAugment | None = None):
        self.cfg, self.train = cfg, train
        augment = augment if train else None
        self.waveform_augment = WaveformAugment(augment, cfg.sample_rate) if augment else None
        masks = [torchaudio.transforms.FrequencyMasking(augment.freq_mask)] if augment and augment.freq_mask else []
        masks += [torchaudio.transforms.TimeMasking(augment.time_mask)] if augment and augment.time_mask else []
        self.spec_augment = nn.Sequential(*masks) if masks else None

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        cfg = self.cfg
        waveform = torch.as_tensor(waveform)
        if not sample_rate or sample_rate <= 0:
            raise InputError(f"audio: expected a positive sample rate, got {sample_rate!r}")
        if waveform.ndim not in (1, 2) or waveform.numel() == 0:
            raise InputError(
                f"audio: expected a waveform [channels, samples] or [samples], got shape {list(waveform.shape)}"
            )
        if waveform.ndim == 2 and waveform.shape[0] > MAX_CHANNELS:
            raise InputError(
                f"audio: expected a waveform [channels, samples], got shape {list(waveform.shape)} "
                "(more than 16 channels: for soundfile's [samples, channels] layout pass waveform.T)"
            )
        if not waveform.is_floating_point():  # integer PCM -> [-1, 1]
            info = torch.iinfo(waveform.dtype)
            waveform = (waveform.double() - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
        waveform = waveform.float()
        waveform = waveform.reshape(1, -1) if waveform.ndim == 1 else waveform.mean(0, keepdim=True)  # mono
        if sample_rate != cfg.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, cfg.sample_rate)
        if self.waveform_augment is not None:
            waveform = self.waveform_augment(waveform)
        waveform = waveform - waveform.mean()
        window = int(cfg.sample_rate * 0.025)  # fbank's 25 ms frame
        if waveform.shape[1] < window:  # shorter than one frame: pad so one frame exists
            waveform = nn.functional.pad(waveform, (0, window - waveform.shape[1]))
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform,
            htk_compat=True,
            sample_frequency=cfg.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=cfg.num_mel_bins,
            dither=0.0,
            frame_shift=10,
        )  # [frames, mel]
        extra = fbank.shape[0] - cfg.target_frames
        if extra > 0:
            start = int(torch.randint(extra + 1, ())) if self.train else 0
            fbank = fbank[start : start + cfg.target_frames]
        fbank = (fbank - cfg.mean) / (2 * cfg.std)  # [frames <= target_frames, mel]
        if self.spec_augment is not None:  # masked values: 0, the data set's mean
            fbank = self.spec_augment(fbank.T).T  # masks over [mel, frames]
        return fbank


@register_modality("audio")
class AudioEncoder(ModalityEncoder):
    """fbank [B, T, mel] (every frame real, T <= target_frames) or {"input_values": [B, T, mel],
    "attention_mask": [B, T]} (as `collate` pads a batch) -> [B, T'*F', D] spectrogram-patch tokens
    in time-major order (a short clip's tokens are a prefix, and use the first positions).

    A batch is cut into whole patches: a clip whose last frames do not fill a patch is completed with
    `padding_value`. A patch is real when it covers at least one real frame; the others are padding:
    never kept nor hidden by masking, never attended to, never pooled. Padded frames inside a real
    patch are set to `padding_value`, so padding never changes an output."""

    config_class = AudioConfig
    augment_class = AudioAugment
    transform_class = AudioTransform
    suffixes = (".wav", ".flac", ".ogg", ".mp3")
    plot_style = "spectrogram"

    def __init__(self, cfg: AudioConfig, dim: int):
        super().__init__(cfg, dim)
        self.patch_embed = nn.Conv2d(1, self.width, kernel_size=cfg.kernel, stride=cfg.stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))  # frequency-major, as AST's
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        f, t = self.cfg.grid
        return f * t

    @property
    def target_dim(self) -> int:
        return self.cfg.kernel[0] * self.cfg.kernel[1]

    def frames(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-ready batch -> (fbank [B, T, mel] cut or completed to whole patches (at most
        `target_frames`' patches), padded frames set to `padding_value`; frame mask [B, T], True = real,
        or None when every frame is real)."""
        values, mask = (x["input_values"], x.get("attention_mask")) if isinstance(x, Mapping) else (x, None)
        cfg = self.cfg
        p, s = cfg.patch_size, cfg.patch_stride
        patches = min(-(-max(values.shape[1] - p, 0) // s) + 1, cfg.grid[1])  # along time, the last one completed
        length = (patches - 1) * s + p
        extra = length - values.shape[1]
        if extra > 0:
            values = nn.functional.pad(values, (0, 0, 0, extra), value=cfg.padding_value)  # [B, length, mel]
            mask = None if mask is None else nn.functional.pad(mask, (0, extra))
        values = values[:, :length]
        if mask is not None:
            mask = mask[:, :length].bool()  # [B, length]
            values = torch.where(mask[..., None], values, torch.tensor(cfg.padding_value, dtype=values.dtype))
        return values, mask

    def patch_mask(self, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Frame mask [B, T] -> token mask [B, T'*F'] (time-major): a patch is real when it covers a real frame."""
        if frame_mask is None:
            return None
        real = frame_mask.unfold(1, self.cfg.patch_size, self.cfg.patch_stride).any(-1)  # [B, T']
        return real.repeat_interleave(self.cfg.grid[0], dim=1)  # [B, T'*F']

    def padding_mask(self, x: Any) -> torch.Tensor | None:
        return self.patch_mask(self.frames(x)[1])

    def embed_patches(self, values: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, mel] -> patch embeddings [B, F'*T', width], frequency-major."""
        spec = values.transpose(1, 2).unsqueeze(1)  # [B, 1, mel, T]
        return self.patch_embed(spec).flatten(2).transpose(1, 2)

    def position_table(self) -> torch.Tensor:
        """[1, F'*T', width] the positions of a `target_frames` clip, frequency-major."""
        return self.pos_embed

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        values, frame_mask = self.frames(x)  # [B, T, mel]
        f = self.cfg.grid[0]
        tokens = time_major(self.embed_patches(values), f)  # [B, L, width]
        tokens = tokens + time_major(self.position_table(), f)[:, : tokens.shape[1]]  # the first T' columns
        return Tokens(tokens, self.patch_mask(frame_mask), target=self.patch_target(values) if with_target else None)

    def sample_mask(self, x: Any, generator: torch.Generator | None = None) -> Masking:
        """Hide `mask_ratio` of each clip's real patches (AudioMAE's random masking), never padding."""
        values, frame_mask = self.frames(x)
        length = values.shape[1]
        tokens = ((length - self.cfg.patch_size) // self.cfg.patch_stride + 1) * self.cfg.grid[0]
        device = generator.device if generator is not None else None
        return random_masking(
            len(values), tokens, self.cfg.mask_ratio, self.patch_mask(frame_mask), generator=generator, device=device
        )

    def patchify(self, x: Any) -> torch.Tensor:
        """Model-ready batch -> [B, L, pf*p] spectrogram patches (time-major, as the tokens)."""
        spec = self.frames(x)[0].transpose(1, 2).unsqueeze(1)  # [B, 1, mel, T]
        patches = nn.functional.unfold(spec, self.cfg.kernel, stride=self.cfg.stride)  # [B, pf*p, F'*T']
        return time_major(patches.transpose(1, 2), self.cfg.grid[0])

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, pf*p] time-major -> [B, T, mel], the frames the patches cover (overlapping patches averaged)."""
        cfg = self.cfg
        f = cfg.grid[0]
        size = (cfg.num_mel_bins, (patches.shape[1] // f - 1) * cfg.patch_stride + cfg.patch_size)
        patches = patches.unflatten(1, (-1, f)).transpose(1, 2).flatten(1, 2)  # frequency-major, as fold takes them
        fold = lambda t: nn.functional.fold(t.transpose(1, 2), size, cfg.kernel, stride=cfg.stride)  # noqa: E731
        cover = fold(torch.ones_like(patches)).clamp(min=1)  # [B, 1, mel, T] patches over each value
        return (fold(patches) / cover)[:, 0].transpose(1, 2)

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """[n, frames, mel] -> [n, mel, frames] (a spectrogram, low frequencies first)."""
        return x.transpose(1, 2)

    @classmethod
    def read(cls, path: Path) -> tuple[torch.Tensor, int]:
        return read_audio(path)

    def check_input(self, x: Any) -> None:
        t, f = self.cfg.target_frames, self.cfg.num_mel_bins
        shape = f"[B, T, {f}] (fbank frames, mel bins; 1 <= T <= {t}, modalities.audio.target_frames)"
        if not isinstance(x, Mapping):
            self._check_tensor(x, (None, None, f), f"{shape} or {{'input_values', 'attention_mask'}}")
            self._check_length(x.shape[1], t, shape)
            return
        values, mask = x.get("input_values"), x.get("attention_mask")
        if values is None:
            self._fail(f"input_values {shape} in the dict (and attention_mask [B, T])", f"keys {sorted(x)}")
        self._check_tensor(values, (None, None, f), f"input_values {shape}")
        self._check_length(values.shape[1], t, f"input_values {shape}")
        if mask is not None:
            self._check_mask(mask, values.shape[:2], "clip")

    @classmethod
    def collate(cls, inputs: list[torch.Tensor], cfg: AudioConfig | None = None) -> Any:
        """fbanks [T_i, mel] -> [B, T, mel] when all are as long, else {"input_values": [B, max T_i, mel]
        right-padded (with `padding_value`), "attention_mask": [B, max T_i] (1 = real frame)}."""
        lengths = torch.tensor([len(x) for x in inputs])
        if (lengths == lengths[0]).all():
            return torch.stack(inputs)
        value = (cfg or AudioConfig()).padding_value
        values = nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=value)  # [B, T, mel]
        mask = (torch.arange(values.shape[1])[None] < lengths[:, None]).long()  # [B, T]
        return {"input_values": values, "attention_mask": mask}

    @classmethod
    def example_input(cls, cfg: AudioConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Random full-length fbanks [B, target_frames, mel] (`collate` makes padded batches)."""
        return torch.randn(batch_size, cfg.target_frames, cfg.num_mel_bins, generator=generator)
