"""Audio files and augmentation: decoding a clip (soundfile) and the training augmentation of its
waveform (speed, telephone band, shift, gain, noise); the audio modality (audio.py) uses both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn

from ..config import AugmentConfig
from ..errors import DataError
from ..files import Blob, opened
from ..parsing import require


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


@dataclass
class AudioAugment(AugmentConfig):
    """Training augmentation of audio clips: on the waveform speed perturbation, telephone
    band-limiting, a time shift, a random gain and background noise; on the normalised fbank
    SpecAugment (torchaudio frequency and time masking, as AST and AudioMAE). Defaults: AST /
    AudioMAE's AudioSet fine-tuning for SpecAugment and the shift (AST's +-10-frame roll), Kaldi's
    three-way speed perturbation, and mild gain and noise; band-limiting, aimed at telephone
    recordings, is off. 0 or an empty list switches one off."""

    speed: tuple[float, ...] = (
        0.9,
        1.0,
        1.1,
    )  # speed factors, one drawn per clip (torchaudio SpeedPerturbation; Kaldi)
    band_limit: float = 0.0  # probability of resampling through 8 kHz (telephone band: nothing above 4 kHz)
    time_shift: float = 0.1  # roll the waveform by up to this many seconds either way (AST, AudioMAE)
    gain_db: float = 6.0  # random gain, uniform in +-gain_db decibels (torchaudio gain)
    noise_snr_db: tuple[float, ...] = (20.0, 40.0)  # white noise at an SNR drawn from this range (torchaudio add_noise)
    freq_mask: int = 48  # SpecAugment: up to this many mel bins masked (AST, AudioMAE: 48 of 128)
    time_mask: int = (
        192  # SpecAugment: up to this many frames masked (AST, AudioMAE: 192 of 1024; AST speech commands: 48 of 128)
    )

    def validate(self, prefix: str) -> None:
        require(all(f > 0 for f in self.speed), f"{prefix}.speed", "positive speed factors ([] off)", self.speed)
        require(0 <= self.band_limit <= 1, f"{prefix}.band_limit", "a probability in [0, 1]", self.band_limit)
        require(
            len(self.noise_snr_db) in (0, 2) and list(self.noise_snr_db) == sorted(self.noise_snr_db),
            f"{prefix}.noise_snr_db",
            "[] (off) or [low, high] decibels",
            self.noise_snr_db,
        )
        for key in ("time_shift", "gain_db", "freq_mask", "time_mask"):
            require(getattr(self, key) >= 0, f"{prefix}.{key}", "a number >= 0 (0: off)", getattr(self, key))


class WaveformAugment:
    """`AudioAugment`'s waveform part: [1, samples] at `sample_rate` -> [1, samples'] (speed changes the length)."""

    TELEPHONE_RATE = 8000

    def __init__(self, augment: AudioAugment, sample_rate: int):
        self.augment, self.sample_rate = augment, sample_rate
        self.speed = (
            torchaudio.transforms.SpeedPerturbation(sample_rate, list(augment.speed)) if augment.speed else None
        )
        self.band = (
            nn.Sequential(
                torchaudio.transforms.Resample(sample_rate, self.TELEPHONE_RATE),
                torchaudio.transforms.Resample(self.TELEPHONE_RATE, sample_rate),
            )
            if augment.band_limit
            else None
        )

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        a, F = self.augment, torchaudio.functional
        if self.speed is not None:
            waveform = self.speed(waveform)[0]
        if self.band is not None and float(torch.rand(())) < a.band_limit:
            waveform = self.band(waveform)
        if a.time_shift:
            most = int(a.time_shift * self.sample_rate)
            waveform = waveform.roll(int(torch.randint(-most, most + 1, ())), dims=-1)
        if a.gain_db:
            waveform = F.gain(waveform, float(torch.empty(()).uniform_(-a.gain_db, a.gain_db)))
        if a.noise_snr_db and waveform.abs().amax() > 0:  # (silence has no SNR)
            snr = torch.empty(1).uniform_(*a.noise_snr_db)
            waveform = F.add_noise(waveform, torch.randn_like(waveform), snr)
        return waveform
