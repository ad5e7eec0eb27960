"""Scale check of `omnivec embed` over shards: bounded memory, throughput, resume after SIGKILL, two processes.

N generated 64x64 RGB PNGs (random pixels, ~12 KB each) in a class-per-folder tree under --out, a
manifest of the first N, sharded by `omnivec data shard`, embedded by a random omnivec_tiny (saved with
save_pretrained) through the real CLI under `/usr/bin/time -v`:

1. memory: for each N of --samples, time's "Maximum resident set size" (the largest process) and the
   proportional set size of the process tree (main + DataLoader workers) sampled every 0.2 s;
   samples/s of the whole command. The peak should not grow with N. Each DataLoader worker embeds
   whole parts: give at least --workers parts (--part-size) for every worker to work.
2. resume: on --resume-samples with parts of --resume-part-size rows, one uninterrupted run, then a
   run SIGKILLed at a random moment and the same command again: every file of the store compared
   byte for byte with the uninterrupted run's, and the rerun writing exactly the parts not on disk.
3. processes: the same command under `torchrun --nproc_per_node 2`: each row exactly once, the
   files byte-identical to the single-process run's.

    nice -n 10 python bench/embed_scale.py [--samples 10000 100000] [--part-size 10000] [--threads N]
        [--mmap-threshold 131072] [--resume-samples 10000] [--out /tmp/embed_scale]

The data is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def write_images(tree: Path, n: int, classes: int = 10) -> None:
    """`n` random 64x64 RGB PNGs in `tree/<class>/<i>.png`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (tree / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        (tree / f"c{i % classes}" / f"{i:07d}.png").write_bytes(buf.getvalue())


def shard(tree: Path, n: int, out: Path) -> Path:
    """Shards of the first `n` images (a manifest of them, then `omnivec data shard`)."""
    manifest = tree / f"manifest_{n}.jsonl"
    manifest.write_text(
        "".join(json.dumps({"path": f"c{i % 10}/{i:07d}.png", "label": f"c{i % 10}"}) + "\n" for i in range(n))
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "data",
            "shard",
            str(manifest),
            "--output",
            str(out),
            "--shard-size",
            "100MB",
        ],
        env=ENV,
        check=True,
        capture_output=True,
    )
    return out


class TreeMemory(threading.Thread):
    """Peak proportional set size (bytes: resident memory, pages shared by forked workers counted
    once) of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stopped = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                pass


def embed(
    command: list[str], kill_after: float | None = None, threads: int | None = None, mmap_threshold: int | None = None
) -> dict:
    """Run `command` under /usr/bin/time -v (or SIGKILL its process group after `kill_after` s)."""
    start = time.perf_counter()
    env = {
        **ENV,
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        **({"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else {}),
    }
    process = subprocess.Popen(
        ["/usr/bin/time", "-v", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler = TreeMemory(process.pid)
    sampler.start()
    if kill_after is not None:
        time.sleep(kill_after)
        os.killpg(process.pid, signal.SIGKILL)
    out, err = process.communicate()
    sampler.stopped.set()
    seconds = time.perf_counter() - start
    if kill_after is None and process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    maxrss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    return {
        "seconds": round(seconds, 1),
        "returncode": process.returncode,
        "log": out,
        "max_rss_mib": round(int(maxrss[1]) / 1024, 1) if maxrss else None,
        "tree_peak_pss_mib": round(sampler.peak / 2**20, 1),
    }


def store_files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def written(log: str) -> list[str]:
    return [m[1] for m in re.finditer(r"wrote (part-\d+)", log)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--part-size", type=int, default=10_000, help="of the memory runs (default: the CLI's)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the memory runs")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="MALLOC_MMAP_THRESHOLD_ of the memory runs: a fixed glibc threshold (e.g. 131072) keeps the "
        "forward pass's temporaries from swinging the resident memory by a few hundred MB",
    )
    parser.add_argument("--resume-samples", type=int, default=10_000, help="0: no resume or torchrun check")
    parser.add_argument("--resume-part-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of the moment of the SIGKILL")
    parser.add_argument("--out", default="/tmp/embed_scale")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    import omnivec

    omnivec.build_model("omnivec_tiny").save_pretrained(out / "model")
    started = time.perf_counter()
    write_images(out / "tree", max(args.samples + [args.resume_samples]))
    print(
        json.dumps(
            {"generated": max(args.samples + [args.resume_samples]), "seconds": round(time.perf_counter() - started, 1)}
        ),
        flush=True,
    )

    def command(shards: Path, store: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
        return [
            *launcher,
            "-m",
            "omnivec",
            "embed",
            "--model",
            str(out / "model"),
            "--input",
            str(shards),
            "--output",
            str(store),
            "--device",
            "cpu",
            "--num-workers",
            str(args.workers),
            *extra,
        ]

    for n in args.samples:
        shards = shard(out / "tree", n, out / f"shards_{n}")
        run = embed(
            command(shards, out / f"store_{n}", "--part-size", str(args.part_size)),
            threads=args.threads,
            mmap_threshold=args.mmap_threshold,
        )
        meta = json.loads((out / f"store_{n}" / "embeddings.json").read_text())
        assert meta["complete"] and meta["count"] == n and meta["failed"] == 0
        print(
            json.dumps(
                {
                    "samples": n,
                    "parts": len(meta["parts"]),
                    "seconds": run["seconds"],
                    "samples_per_s": round(n / run["seconds"], 1),
                    "max_rss_mib": run["max_rss_mib"],
                    "tree_peak_pss_mib": run["tree_peak_pss_mib"],
                }
            ),
            flush=True,
        )

    n, size = args.resume_samples, str(args.resume_part_size)
    if n == 0:
        return finish(out, args.keep)
    shards = out / f"shards_{n}" if (out / f"shards_{n}").is_dir() else shard(out / "tree", n, out / f"shards_{n}")
    # one thread per process from here: torchrun's default, so that all four runs compute alike
    whole = embed(command(shards, out / "whole", "--part-size", size), threads=1)
    kill_after = random.Random(args.seed).uniform(0.3, 0.8) * whole["seconds"]
    killed = embed(command(shards, out / "resumed", "--part-size", size), kill_after=kill_after, threads=1)
    names = {p.name for p in (out / "resumed").iterdir()}  # whole parts: both files renamed into place
    on_disk = [
        m[1] for m in (re.match(r"(part-\d+)\.npy$", name) for name in sorted(names)) if m and f"{m[1]}.jsonl" in names
    ]
    resumed = embed(command(shards, out / "resumed", "--part-size", size), threads=1)
    parts = on_disk + written(resumed["log"])
    skipped = re.search(r"already written, skipped: .*", resumed["log"])
    print(
        json.dumps(
            {
                "resume": {
                    "samples": n,
                    "part_size": args.resume_part_size,
                    "killed_after_s": round(kill_after, 1),
                    "killed_returncode": killed["returncode"],
                    "on_disk_after_kill": on_disk,
                    "resumed_log": skipped[0] if skipped else None,
                    "written_after": written(resumed["log"]),
                    "each_part_once": sorted(parts) == sorted(set(parts)) == sorted(written(whole["log"])),
                    "byte_identical": store_files(out / "resumed") == store_files(out / "whole"),
                }
            }
        ),
        flush=True,
    )

    two = embed(
        command(
            shards,
            out / "two",
            "--part-size",
            size,
            launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        ),
        threads=1,
    )
    rows = [json.loads(line)["index"] for p in sorted((out / "two").glob("part-*.jsonl")) for line in p.open()]
    by_rank = {r: len(re.findall(rf"\[rank {r}\] wrote", two["log"])) for r in (0, 1)}
    print(
        json.dumps(
            {
                "two_processes": {
                    "samples": n,
                    "parts_by_rank": by_rank,
                    "seconds": two["seconds"],
                    "each_row_once": rows == list(range(n)),
                    "byte_identical_to_one_process": store_files(out / "two") == store_files(out / "whole"),
                }
            }
        ),
        flush=True,
    )
    finish(out, args.keep)


def finish(out: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
