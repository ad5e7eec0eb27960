"""Audio samples: spoken digits synthesised offline with Debian's espeak-ng (`apt-get install espeak-ng`).

- spoken_digits: "zero" .. "nine" (10 classes), 16 voices (accents x voice variants), random speed
  and pitch; 16 kHz mono FLAC; keyword classification. Split by voice (`voice_split`): the test
  and val voices are never heard in training.
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
from common import SAMPLE, write_manifest

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "f2"]
RATE = 16000
HELD_OUT = ACCENTS[-2:]  # accents never heard in training


def voice_split(accent: str, variant: str) -> str:
    """12 train / 2 val / 2 test voices: the last two accents are held out of training; of their
    four voices, test gets the first accent's first variant and the second accent's second one."""
    if accent not in HELD_OUT:
        return "train"
    return "test" if HELD_OUT.index(accent) == VARIANTS.index(variant) else "val"


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng -> float32 mono waveform at 16 kHz, leading/trailing silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
        check=True,
        capture_output=True,
    ).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    data = torchaudio.functional.resample(torch.from_numpy(data), rate, RATE).numpy()
    loud = np.flatnonzero(np.abs(data) > 0.01)
    return data[max(loud[0] - 800, 0) : loud[-1] + 800]


def main() -> None:
    rng = random.Random(0)
    out = SAMPLE / "spoken_digits"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    items = [(w, a, v) for w in WORDS for a in ACCENTS for v in VARIANTS]
    rows, clips = [], []
    for i, (word, accent, variant) in enumerate(items):
        speed, pitch = rng.randint(120, 200), rng.randint(25, 75)
        voice, split = f"{accent}+{variant}", voice_split(accent, variant)
        audio = speak(word, voice, speed, pitch)
        path = f"clips/{i:03d}_{word}.flac"
        sf.write(out / path, audio, RATE, subtype="PCM_16")
        rows.append({"path": path, "label": word, "split": split, "voice": voice})
        clips.append((audio, word, split, voice))
    write_manifest(out, rows)

    out = SAMPLE / "spoken_mix"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, split in enumerate(["train"] * 42 + ["val"] * 9 + ["test"] * 9):
        pool = [c for c in clips if c[2] == split]
        chosen = rng.sample(pool, rng.choice([2, 3]))
        while len({c[1] for c in chosen}) < len(chosen):  # distinct words
            chosen = rng.sample(pool, len(chosen))
        mix = np.zeros(RATE * 5 // 4, dtype=np.float32)  # 1.25 s
        for audio, *_ in chosen:
            audio = audio[: len(mix)]
            start = rng.randint(0, len(mix) - len(audio))
            mix[start : start + len(audio)] += audio
        mix /= max(1.0, float(np.abs(mix).max()) / 0.9)
        path = f"clips/{i:03d}.flac"
        sf.write(out / path, mix, RATE, subtype="PCM_16")
        rows.append(
            {
                "path": path,
                "labels": sorted(c[1] for c in chosen),
                "split": split,
                "voices": sorted({c[3] for c in chosen}),
            }
        )
    write_manifest(out, rows)


if __name__ == "__main__":
    main()
