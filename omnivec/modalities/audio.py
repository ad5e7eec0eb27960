"""Audio modality: Kaldi log-mel fbank (torchaudio) cut into spectrogram patches, AST style."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from timm.layers import trunc_normal_
from torch import nn

from ..config import ModalityConfig, require, require_positive
from ..datasets.readers import Blob, opened
from ..errors import DataError, InputError
from .base import ModalityEncoder, Tokens, register_modality


@dataclass
class AudioConfig(ModalityConfig):
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_frames: int = 1024  # fbank frames per clip (10 ms each): longer clips are cropped, shorter padded
    patch_size: int = 16
    patch_stride: int = 16  # AST uses 10 (overlapping patches); masked pretraining wants 16
    mean: float = -4.2677393  # AST's AudioSet fbank statistics
    std: float = 4.5689974
    mask_ratio: float = 0.8  # AudioMAE

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require_positive(self, prefix, "sample_rate", "num_mel_bins", "target_frames", "patch_size",
                         "patch_stride", "std")
        for key in ("num_mel_bins", "target_frames"):
            value = getattr(self, key)
            require(value >= self.patch_size, f"{prefix}.{key}", f">= patch_size={self.patch_size}", value)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (frequency, time)."""
        f = (self.num_mel_bins - self.patch_size) // self.patch_stride + 1
        t = (self.target_frames - self.patch_size) // self.patch_stride + 1
        return f, t


def read_audio(path: Path | Blob) -> tuple[torch.Tensor, int]:
    """-> (waveform [channels, samples] float32 in [-1, 1], sample rate)."""
    import soundfile as sf

    try:
        if "should be" in sf.info(opened(path)).extra_info:  # libsndfile: chunk sizes beyond the file's end
            raise DataError(f"{path}: truncated audio file (its header promises more data)")
        data, sample_rate = sf.read(opened(path), dtype="float32", always_2d=True)  # [samples, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio has no samples")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: audio holds NaN or Inf samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


MAX_CHANNELS = 16  # a waveform with more rows than this is taken to be [samples, channels]: refused


class AudioTransform:
    """(waveform [channels, samples] or [samples], sample_rate) -> normalised fbank [target_frames, mel]."""

    def __init__(self, cfg: AudioConfig, train: bool = False):
        self.cfg, self.train = cfg, train

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        cfg = self.cfg
        waveform = torch.as_tensor(waveform)
        if not sample_rate or sample_rate <= 0:
            raise InputError(f"audio: expected a positive sample rate, got {sample_rate!r}")
        if waveform.ndim not in (1, 2) or waveform.numel() == 0:
            raise InputError(f"audio: expected a waveform [channels, samples] or [samples], got shape {list(waveform.shape)}")
        if waveform.ndim == 2 and waveform.shape[0] > MAX_CHANNELS:
            raise InputError(f"audio: expected a waveform [channels, samples], got shape {list(waveform.shape)} "
                             "(more than 16 channels: for soundfile's [samples, channels] layout pass waveform.T)")
        if not waveform.is_floating_point():  # integer PCM -> [-1, 1]
            info = torch.iinfo(waveform.dtype)
            waveform = (waveform.double() - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
        waveform = waveform.float()
        waveform = waveform.reshape(1, -1) if waveform.ndim == 1 else waveform.mean(0, keepdim=True)  # mono
        if sample_rate != cfg.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, cfg.sample_rate)
        waveform = waveform - waveform.mean()
        window = int(cfg.sample_rate * 0.025)  # fbank's 25 ms frame
        if waveform.shape[1] < window:  # shorter than one frame: pad so one frame exists
            waveform = nn.functional.pad(waveform, (0, window - waveform.shape[1]))
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform, htk_compat=True, sample_frequency=cfg.sample_rate, use_energy=False,
            window_type="hanning", num_mel_bins=cfg.num_mel_bins, dither=0.0, frame_shift=10,
        )  # [frames, mel]
        extra = fbank.shape[0] - cfg.target_frames
        if extra > 0:
            start = int(torch.randint(extra + 1, ())) if self.train else 0
            fbank = fbank[start:start + cfg.target_frames]
        elif extra < 0:
            fbank = nn.functional.pad(fbank, (0, 0, 0, -extra))
        return (fbank - cfg.mean) / (2 * cfg.std)  # [target_frames, mel]


@register_modality("audio")
class AudioEncoder(ModalityEncoder):
    """[B, frames, mel] fbank -> [B, F'*T', D] spectrogram-patch tokens (frequency-major, as AST)."""

    config_class = AudioConfig
    suffixes = (".wav", ".flac", ".ogg", ".mp3")
    plot_style = "spectrogram"

    def __init__(self, cfg: AudioConfig, dim: int):
        super().__init__(cfg, dim)
        self.patch_embed = nn.Conv2d(1, self.width, kernel_size=cfg.patch_size, stride=cfg.patch_stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        f, t = self.cfg.grid
        return f * t

    @property
    def target_dim(self) -> int:
        return self.cfg.patch_size**2

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        spec = x.transpose(1, 2).unsqueeze(1)  # [B, 1, mel, frames]
        tokens = self.patch_embed(spec).flatten(2).transpose(1, 2) + self.pos_embed  # [B, L, width]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, frames, mel] -> [B, L, p*p] spectrogram patches (frequency-major, as the tokens)."""
        spec = x.transpose(1, 2).unsqueeze(1)  # [B, 1, mel, frames]
        return nn.functional.unfold(spec, self.cfg.patch_size, stride=self.cfg.patch_stride).transpose(1, 2)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, p*p] -> [B, frames, mel] (overlapping patches averaged); frames beyond the last
        whole patch stay zero."""
        cfg = self.cfg
        size = (cfg.num_mel_bins, cfg.target_frames)
        fold = lambda t: nn.functional.fold(t.transpose(1, 2), size, cfg.patch_size, stride=cfg.patch_stride)  # noqa: E731
        cover = fold(torch.ones_like(patches)).clamp(min=1)  # [B, 1, mel, frames] patches over each value
        return (fold(patches) / cover)[:, 0].transpose(1, 2)

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """[n, frames, mel] -> [n, mel, frames] (a spectrogram, low frequencies first)."""
        return x.transpose(1, 2)

    @classmethod
    def read(cls, path: Path) -> tuple[torch.Tensor, int]:
        return read_audio(path)

    def check_input(self, x: torch.Tensor) -> None:
        t, f = self.cfg.target_frames, self.cfg.num_mel_bins
        self._check_tensor(x, (None, t, f), f"[B, {t}, {f}] (fbank frames, mel bins)")

    @classmethod
    def build_transform(cls, cfg: AudioConfig, train: bool = False) -> AudioTransform:
        return AudioTransform(cfg, train)

    @classmethod
    def example_input(cls, cfg: AudioConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, cfg.target_frames, cfg.num_mel_bins, generator=generator)
