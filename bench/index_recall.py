"""FAISS index recall and latency on a large synthetic embedding store: N clustered unit vectors of
width D (Gaussian centres, each vector a centre plus Gaussian noise, normalised; queries are new
draws of the same mixture) written as an embedding store of .npy parts, indexed by `omnivec index`'s
code (omnivec/index.py). Exact search (the flat index) gives the true top k; each ivf-pq setting is
scored by recall@k against it (|found top k ∩ true top k| / k, averaged over the queries) and by
its latency: one batch of Q queries, ms per query (the median of `--rounds` batches, the index
already in memory).

    python bench/index_recall.py [--n 1000000] [--dim 128] [--queries 1000] [--nprobe 8 16 32 64]

Needs faiss-cpu. Writes its store to --store (a temporary folder by default, about N * D * 4 bytes).
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, centres: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_store(out: Path, n: int, dim: int, clusters: int, noise: float, part_size: int, seed: int) -> np.ndarray:
    """The store (embeddings.json, part-NNNNN.npy / .jsonl) of n vectors -> the mixture's centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    parts = []
    for start in range(0, n, part_size):
        count = min(part_size, n - start)
        name = f"part-{len(parts):05d}"
        np.save(out / f"{name}.npy", clustered(count, dim, centres, noise, rng))
        (out / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({"index": start + i, "path": f"v{start + i}", "modality": "image", "status": "ok"}) + "\n"
                for i in range(count)
            )
        )
        parts.append({"name": name, "start": start, "count": count})
    meta = {
        "format": "omnivec-embeddings",
        "version": 2,
        "model": "synthetic",
        "dim": dim,
        "pool": "mean",
        "layers": "last",
        "normalized": True,
        "dtype": "float32",
        "part_format": "npy",
        "part_size": part_size,
        "parts": parts,
        "complete": True,
        "failed": 0,
    }
    (out / "embeddings.json").write_text(json.dumps(meta))
    return centres


def timed_search(index, queries: np.ndarray, k: int, rounds: int, **params) -> tuple[np.ndarray, float]:
    """(ids [Q, k], median ms per query over `rounds` batches)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        _, ids = index.search(queries, k, **params)
        times.append(time.perf_counter() - start)
    return ids, 1000 * float(np.median(times)) / len(queries)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


def main() -> None:
    import faiss

    from omnivec.index import StoreIndex, build_index

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components")
    parser.add_argument("--noise", type=float, default=1.0, help="noise std per value (the centres' is 1)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--part-size", type=int, default=100_000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rerank", type=int, nargs="+", default=[1, 4], help="k * rerank candidates re-ranked exactly")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="ivf-pq build settings (nlist, m, ...)"
    )
    parser.add_argument("--hnsw", action="store_true", help="also build and score an hnsw index")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", help="folder for the store (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or tmp)
        store.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        centres = write_store(store, args.n, args.dim, args.clusters, args.noise, args.part_size, args.seed)
        queries = clustered(args.queries, args.dim, centres, args.noise, np.random.default_rng(args.seed + 1))
        print(
            f"store: {args.n:,} x {args.dim} ({args.clusters} clusters, noise {args.noise}) written in "
            f"{time.perf_counter() - start:.0f}s; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
            f"{platform.machine()}"
        )
        built = {"flat": build_index(store, "flat")}
        built["ivf-pq"] = build_index(store, "ivf-pq", dict(item.split("=", 1) for item in args.set))
        if args.hnsw:
            built["hnsw"] = build_index(store, "hnsw")
        for kind, entry in built.items():
            print(f"built {kind}: {entry['factory']} {entry['settings']} in {entry['build_seconds']:.0f}s")
        flat = StoreIndex(store, "flat")
        truth, flat_ms = timed_search(flat, queries, args.k, args.rounds)
        rows = [("flat (exact)", "", 1.0, flat_ms)]
        ivf = StoreIndex(store, "ivf-pq")
        for nprobe in args.nprobe:
            for rerank in args.rerank:
                ids, ms = timed_search(ivf, queries, args.k, args.rounds, nprobe=nprobe, rerank=rerank)
                rows.append(("ivf-pq", f"nprobe={nprobe} rerank={rerank}", recall(ids, truth), ms))
        if args.hnsw:
            hnsw = StoreIndex(store, "hnsw")
            for ef in (64, 128, 256):
                ids, ms = timed_search(hnsw, queries, args.k, args.rounds, ef_search=ef)
                rows.append(("hnsw", f"ef_search={ef}", recall(ids, truth), ms))
        print(f"\n| index | search settings | recall@{args.k} | ms / query (batch of {args.queries}) |")
        print("|---|---|---:|---:|")
        for name, settings, r, ms in rows:
            print(f"| {name} | {settings} | {r:.3f} | {ms:.3f} |")


if __name__ == "__main__":
    main()
