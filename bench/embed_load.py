"""Load test of `omnivec embed`: N small sample files of every modality (hard links to the shipped
sample data, plus short text files), embedded by the real CLI in a subprocess whose peak resident
memory (the process and its DataLoader workers) is sampled every 50 ms; then checks that every
file has exactly one row, in input order, and none failed.

    python bench/embed_load.py [--files 10000 2000] [--model DIR] [--workers 2]

Without --model a random omnivec_tiny is saved and used (load, not accuracy, is measured).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SAMPLE = Path(__file__).parents[1] / "data" / "sample"
MIX = {"png": 0.6, "txt": 0.2, "flac": 0.1, "ply": 0.05, "mp4": 0.05}  # share of the files per kind


def make_files(root: Path, n: int) -> list[Path]:
    """`n` files under `root`, cycling over the sample files of each kind."""
    sources = {ext: sorted(SAMPLE.rglob(f"*.{ext}")) for ext in MIX if ext != "txt"}
    texts = [
        json.loads(line)["text"] for line in (SAMPLE / "acl_highlights" / "manifest.jsonl").read_text().splitlines()
    ]
    paths = []
    for ext, share in MIX.items():
        folder = root / ext
        folder.mkdir(parents=True)
        for i in range(round(n * share)):
            path = folder / f"{i:06d}.{ext}"
            if ext == "txt":
                path.write_text(texts[i % len(texts)])
            else:
                os.link(sources[ext][i % len(sources[ext])], path)
            paths.append(path)
    return paths


def run_embed(model: str, inputs: Path, output: Path, workers: int) -> dict:
    """Run the CLI and sample the resident memory of its process tree."""
    command = [
        sys.executable,
        "-m",
        "omnivec",
        "embed",
        "--model",
        model,
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--num-workers",
        str(workers),
        "--device",
        "cpu",
    ]
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_main = peak_tree = 0
    while process.poll() is None:
        try:
            main = process.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.Error:
            continue
        peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        time.sleep(0.05)
    log = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"omnivec embed failed:\n{log[-3000:]}")
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_main_mib": peak_main / 2**20,
        "peak_rss_with_workers_mib": peak_tree / 2**20,
        "last_line": log.strip().splitlines()[-1],
    }


def check_rows(output: Path, paths: list[Path]) -> dict:
    from omnivec.embedding_store import open_store

    embeddings, rows = open_store(output).load()
    seen = [Path(r["path"]).resolve() for r in rows]
    expected = sorted(p.resolve() for p in paths)
    assert len(rows) == len(paths) == embeddings.shape[0], (len(rows), len(paths), embeddings.shape)
    assert len(set(seen)) == len(seen), "duplicated rows"
    assert sorted(seen) == expected, "lost rows"
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    return {"rows": len(rows), "failed": len(failed), "dim": int(embeddings.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10000, 2000])
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            import omnivec

            model = str(tmp / "model")
            omnivec.build_model("omnivec_tiny").save_pretrained(model)
        for n in args.files:
            paths = make_files(tmp / f"files_{n}", n)
            result = run_embed(model, tmp / f"files_{n}", tmp / f"out_{n}", args.workers)
            result.update(check_rows(tmp / f"out_{n}", paths), files=n)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
