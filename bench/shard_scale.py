"""Scale check of sharded streaming: N tiny synthetic samples of four modalities (image, audio,
text, point cloud) written as files with manifests, sharded with `omnivec data shard`'s writer,
then one epoch of every modality streamed through its training loader with 2 workers.

    python bench/shard_scale.py [--samples 200000] [--workers 2] [--out /tmp/shard_scale]

Reports the shard writing rate, the epoch's samples/s, the resident memory of the loader's
processes (main + workers) sampled every second (it should stay flat, not grow with the dataset),
and whether every sample came exactly once.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

import omnivec
from omnivec.datasets import find_tasks
from omnivec.datasets.loaders import task_loader
from omnivec.datasets.shard_writer import write_shards

MODALITIES = ("image", "audio", "text", "point_cloud")
MODEL = {
    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
    "modalities": {
        "video": None,
        "image": {"image_size": 32, "patch_size": 8},
        "audio": {"num_mel_bins": 32, "target_frames": 32, "patch_size": 8, "patch_stride": 8},
        "text": {
            "tokenizer": str(Path(__file__).parents[1] / "data" / "sample" / "tokenizer"),
            "vocab_size": 4000,
            "max_length": 16,
        },
        "point_cloud": {"num_points": 32, "num_groups": 4, "group_size": 8, "pointnet_dims": [16, 32, 32]},
    },
}


def encoded(modality: str, i: int, rng: np.random.Generator) -> tuple[str, bytes]:
    """A tiny encoded file of `modality`: (suffix, bytes)."""
    if modality == "image":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        return ".png", buf.getvalue()
    if modality == "audio":
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000, format="WAV")
        return ".wav", buf.getvalue()
    if modality == "point_cloud":
        return ".xyz", "\n".join(" ".join(f"{v:.3f}" for v in p) for p in rng.random((48, 3))).encode()
    return ".txt", f"sample {i} says {rng.integers(0, 1000)} and {rng.integers(0, 1000)}".encode()


def write_files(root: Path, n: int) -> None:
    """n samples, split evenly over the modalities, each a file listed in its modality's manifest."""
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        folder = root / modality
        (folder / "files").mkdir(parents=True)
        with (folder / "manifest.jsonl").open("w") as manifest:
            for i in range(n // len(MODALITIES)):
                suffix, data = encoded(modality, i, rng)
                (folder / "files" / f"{i:07d}{suffix}").write_bytes(data)
                manifest.write(
                    json.dumps({"path": f"files/{i:07d}{suffix}", "label": str(i % 10), "split": "train"}) + "\n"
                )


class MemorySampler(threading.Thread):
    """Resident memory (MiB) of this process and its children, every `every` seconds."""

    def __init__(self, every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [], threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stopped.is_set():
            procs = [me] + me.children(recursive=True)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter(), rss / 2**20))
            self.stopped.wait(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="/tmp/shard_scale")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    write_files(out / "files", args.samples)
    print(f"wrote {args.samples} files in {time.perf_counter() - started:.0f}s", flush=True)
    started = time.perf_counter()
    index = write_shards([out / "files" / m for m in MODALITIES], out / "shards", "4MB")
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 2**20
    print(
        f"sharded into {len(index['shards'])} shards ({size:.0f} MiB) in {seconds:.0f}s "
        f"({args.samples / seconds:.0f} samples/s)",
        flush=True,
    )

    torch.set_num_threads(1)
    model = omnivec.build_model("omnivec_tiny", **MODEL)
    tasks = {t.modality: t for t in find_tasks(out / "shards")}
    memory = MemorySampler()
    memory.start()
    seen: dict[str, list[int]] = {}
    started = time.perf_counter()
    for modality in MODALITIES:
        loader = task_loader(model, [tasks[modality]], "train", args.batch_size, args.workers, train=True)
        seen[modality] = [i for batch in loader for i in batch["index"].tolist()]
        print(f"  {modality}: {len(seen[modality])} samples, {time.perf_counter() - started:.0f}s so far", flush=True)
    seconds = time.perf_counter() - started
    memory.stopped.set()
    memory.join()
    total = sum(map(len, seen.values()))
    rss = [m for _, m in memory.samples]
    tenths = [rss[min(len(rss) - 1, int(len(rss) * q / 10))] for q in range(1, 11)]
    exact = all(sorted(v) == list(range(tasks[m].stream.count("train"))) for m, v in seen.items())
    print(
        f"epoch: {total} samples in {seconds:.0f}s = {total / seconds:.0f} samples/s with {args.workers} workers "
        f"per modality; resident memory (main + workers) MiB at each tenth of the epoch: "
        f"{', '.join(f'{m:.0f}' for m in tenths)} (peak {max(rss):.0f}); "
        f"every sample exactly once: {exact} (lost {args.samples - len({(m, i) for m, v in seen.items() for i in v})}, "
        f"duplicated {total - len({(m, i) for m, v in seen.items() for i in v})})"
    )


if __name__ == "__main__":
    main()
