"""Shared by the prepare_*.py scripts: stratified seeded splits and manifest writing."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

SAMPLE = Path(__file__).parent / "sample"
FRACTIONS = {"train": 0.7, "val": 0.15}  # the rest is test


def assign_splits(labels: list[str], seed: int = 0) -> list[str]:
    """A train/val/test split per item, stratified by label and fixed by `seed`."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    splits = [""] * len(labels)
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        n_train = round(len(items) * FRACTIONS["train"])
        n_val = round(len(items) * FRACTIONS["val"])
        for k, i in enumerate(items):
            splits[i] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return splits


def write_manifest(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "manifest.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{folder}: {len(rows)} samples")
