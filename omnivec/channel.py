"""A telephone-channel copy of an audio dataset: each clip of some splits resampled through 8 kHz
(nothing left above 4 kHz), with white noise at a fixed SNR added in that band as a recording at
8 kHz would have it, and back to the clip's own rate; written as 16-bit WAV files with a
`manifest.jsonl` (same targets and splits), so every command reads it. The noise comes from one
seeded generator, in manifest order: the copy is byte-identical on rerun. A proxy for a speaker
recorded over a phone line (recipes/channel_robustness.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm.auto import tqdm

from .datasets import TaskData
from .errors import DataError
from .modalities.audio_files import read_audio

TELEPHONE_RATE = 8000  # narrowband telephony: nothing above 4 kHz survives the channel


def telephone(
    waveform: torch.Tensor, sample_rate: int, snr_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[channels, samples] at `sample_rate` -> the same shape after an 8 kHz channel: resampled to
    8 kHz, white noise (drawn from `generator`) added at `snr_db` over the whole clip
    (torchaudio `add_noise`; a silent clip stays silent), resampled back and cut to its length."""
    F = torchaudio.functional
    narrow = F.resample(waveform, sample_rate, TELEPHONE_RATE)  # [C, S * 8000 / rate]
    noise = torch.randn(narrow.shape, generator=generator)  # [C, S']
    noisy = F.add_noise(narrow, noise, torch.full(narrow.shape[:-1], float(snr_db)))
    return F.resample(noisy, TELEPHONE_RATE, sample_rate)[..., : waveform.shape[-1]]  # [C, <= S]


def channel_copy(
    task: TaskData, out: Path, splits: Sequence[str] = ("val", "test"), snr_db: float = 20.0, seed: int = 0
) -> Path:
    """Write the `splits` rows of audio dataset `task` through `telephone` to `out` (clips/ and
    manifest.jsonl, the manifest last) -> the manifest's path. Rows keep their target and split;
    samples are clamped to [-1, 1] for the 16-bit WAV."""
    if task.stream is not None or task.modality != "audio":
        raise DataError(f"{task.source}: a channel copy needs an audio dataset with a manifest or folder of files")
    rows = [r for r in task.rows if r.get("split") in splits]
    if not rows:
        raise DataError(f"{task.source}: no rows in the splits {list(splits)}")
    (out / "clips").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for i, row in enumerate(tqdm(rows, desc=f"channel copy of {task.name}", leave=False)):
        waveform, rate = read_audio(row["path"])  # [C, S]
        degraded = telephone(waveform, rate, snr_db, generator).clamp(-1.0, 1.0)
        name = f"clips/{i:05d}_{Path(row['path']).stem}.wav"
        sf.write(out / name, np.ascontiguousarray(degraded.T.numpy()), rate, subtype="PCM_16", format="WAV")
        record = {"path": name, "split": row["split"]}
        if task.target is not None and task.target in row:
            record[task.target] = row[task.target]
        lines.append(json.dumps(record) + "\n")
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(lines))
    return manifest
