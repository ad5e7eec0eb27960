"""Data loading speed: samples/s of one DataLoader worker for each modality, read from files
(manifests) and from WebDataset shards, through `omnivec_base`'s training transforms, and the
workers a GPU step at a given throughput needs.

    python bench/loader.py [--samples 200] [--gpu-samples-per-s image=1180 ...]

One worker's rate is measured in the main process (num_workers=0: the work one worker does).
The default GPU throughput is the README's H200 figure for `omnivec_base` masked image
pretraining in bf16 (1,180 images/s at batch 256); pass others per modality.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import omnivec
from omnivec.datasets import find_tasks
from omnivec.datasets.loaders import task_loader
from omnivec.datasets.shard_writer import write_shards

SAMPLE = Path(__file__).parents[1] / "data" / "sample"
DATASETS = {
    "image": "digits",
    "audio": "spoken_digits",
    "video": "moving_digits",
    "point_cloud": "shapes",
    "text": "acl_summaries",
}
GPU_SAMPLES_PER_S = {"image": 1180.0}  # README: omnivec_base masked image pretraining, one H200, bf16


def rate(loader, samples: int) -> float:
    """Samples per second over the first `samples` samples of `loader` (after one warm-up batch)."""
    it = iter(loader)
    next(it)
    seen, start = 0, time.perf_counter()
    for batch in it:
        seen += len(batch["index"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="samples timed per modality and source")
    parser.add_argument("--model", default="omnivec_base", help="the variant whose transforms are used")
    parser.add_argument("--gpu-samples-per-s", nargs="*", default=[], help="MODALITY=RATE of a GPU training step")
    args = parser.parse_args()
    gpu = {**GPU_SAMPLES_PER_S, **{k: float(v) for k, v in (a.split("=") for a in args.gpu_samples_per_s)}}
    torch.set_num_threads(1)  # one worker's share of the machine
    text = {"tokenizer": str(SAMPLE / "tokenizer"), "vocab_size": 4000}  # offline: the sample tokenizer
    model = omnivec.build_model(args.model, modalities={"text": text})
    print("| modality | files samples/s/worker | shards samples/s/worker | GPU samples/s | workers needed |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for modality, name in DATASETS.items():
            if modality not in model.encoders:
                continue
            files = find_tasks(SAMPLE / name)
            write_shards([SAMPLE / name], Path(tmp) / name, "50MB")
            shards = find_tasks(Path(tmp) / name)
            rates = [
                rate(task_loader(model, tasks, "train", 8, 0, train=True), args.samples) for tasks in (files, shards)
            ]
            need = f"{math.ceil(gpu[modality] / min(rates))}" if modality in gpu else "n/a"
            print(f"| {modality} | {rates[0]:.0f} | {rates[1]:.0f} | {gpu.get(modality, 'n/a')} | {need} |", flush=True)


if __name__ == "__main__":
    main()
