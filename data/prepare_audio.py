"""Audio samples: spoken digits synthesised offline with Debian's espeak-ng (`apt-get install espeak-ng`).

- spoken_digits: "zero" .. "nine" (10 classes), 16 voices (accents x voice variants), random speed
  and pitch; 16 kHz mono FLAC; keyword classification.
- spoken_mix: 2 or 3 spoken digits of the same split overlaid in one clip; multi-label (AudioSet style).

    python data/prepare_audio.py   # writes data/sample/spoken_digits/ and data/sample/spoken_mix/
"""
import io
import random
import subprocess

import numpy as np
import soundfile as sf
import torch
import torchaudio

from common import SAMPLE, assign_splits, write_manifest

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "f2"]
RATE = 16000


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng -> float32 mono waveform at 16 kHz, leading/trailing silence trimmed."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         check=True, capture_output=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    data = torchaudio.functional.resample(torch.from_numpy(data), rate, RATE).numpy()
    loud = np.flatnonzero(np.abs(data) > 0.01)
    return data[max(loud[0] - 800, 0): loud[-1] + 800]


def main() -> None:
    rng = random.Random(0)
    out = SAMPLE / "spoken_digits"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    items = [(w, f"{a}+{v}") for w in WORDS for a in ACCENTS for v in VARIANTS]
    labels = [w for w, _ in items]
    splits = assign_splits(labels)
    rows, clips = [], []
    for i, ((word, voice), split) in enumerate(zip(items, splits)):
        speed, pitch = rng.randint(120, 200), rng.randint(25, 75)
        audio = speak(word, voice, speed, pitch)
        path = f"clips/{i:03d}_{word}.flac"
        sf.write(out / path, audio, RATE, subtype="PCM_16")
        rows.append({"path": path, "label": word, "split": split})
        clips.append((audio, word, split))
    write_manifest(out, rows)

    out = SAMPLE / "spoken_mix"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, split in enumerate(["train"] * 42 + ["val"] * 9 + ["test"] * 9):
        pool = [c for c in clips if c[2] == split]
        chosen = rng.sample(pool, rng.choice([2, 3]))
        while len({w for _, w, _ in chosen}) < len(chosen):  # distinct words
            chosen = rng.sample(pool, len(chosen))
        mix = np.zeros(RATE * 5 // 4, dtype=np.float32)  # 1.25 s
        for audio, _, _ in chosen:
            audio = audio[: len(mix)]
            start = rng.randint(0, len(mix) - len(audio))
            mix[start:start + len(audio)] += audio
        mix /= max(1.0, float(np.abs(mix).max()) / 0.9)
        path = f"clips/{i:03d}.flac"
        sf.write(out / path, mix, RATE, subtype="PCM_16")
        rows.append({"path": path, "labels": sorted(w for _, w, _ in chosen), "split": split})
    write_manifest(out, rows)


if __name__ == "__main__":
    main()
