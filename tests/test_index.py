"""FAISS indexes over an embedding store (omnivec/index.py): flat search is exact search, ivf-pq and
hnsw find the true neighbours, modality filtering, the recorded settings, and the errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from omnivec.cli import main
from omnivec.errors import ConfigError, DataError

faiss = pytest.importorskip("faiss")
from omnivec import embedding_store  # noqa: E402
from omnivec.embedding_store import store_header  # noqa: E402
from omnivec.index import StoreIndex, build_index, search_index  # noqa: E402

SAMPLE = Path(__file__).parents[1] / "data" / "sample"
MODALITIES = ["image", "audio", "text"]


def write_store(
    out: Path,
    embeddings: np.ndarray,
    records: list[dict],
    part_size: int = 100,
    fmt: str = "npy",
    complete: bool = True,
) -> Path:
    """A store as `omnivec embed` writes it (omnivec/embedding_store.py), marked unfinished unless `complete`."""
    header = store_header("m", None, embeddings.shape[1], len(records), [{"input": "test", "samples": len(records)}],
                          fmt, part_size)  # fmt: skip
    embedding_store.write_store(out, header, embeddings.astype(np.float32), records)
    if not complete:
        meta = json.loads((out / "embeddings.json").read_text())
        (out / "embeddings.json").write_text(json.dumps({**meta, "complete": False}))
    return out


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres -> [n, dim] float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records_for(n: int, failed: tuple[int, ...] = ()) -> list[dict]:
    return [
        {
            "index": i,
            "path": f"f{i}",
            "modality": MODALITIES[i % 3],
            "status": "failed: unreadable" if i in failed else "ok",
        }
        for i in range(n)
    ]


def exact(embeddings: np.ndarray, records: list[dict], queries: np.ndarray, k: int, modality: str | None = None):
    """Exact top k (ids, scores) of each query among the rows that may be returned."""
    ok = np.array([r["status"] == "ok" and modality in (None, r["modality"]) for r in records])
    scores = np.where(ok, queries @ embeddings.T, -np.inf)  # [Q, N]
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, 1)


@pytest.mark.parametrize("fmt", ["npy", "safetensors", "parquet"])
def test_flat_is_exact_search_without_the_failed_rows(tmp_path, fmt):
    x, records = clustered(450), records_for(450, failed=(0, 7, 200))
    store = write_store(tmp_path / "store", x, records, part_size=100, fmt=fmt)
    entry = build_index(store, "flat")
    assert entry["count"] == 447 and (store / "faiss-flat.index").is_file()
    queries = clustered(20, seed=1)
    for modality in (None, "audio"):
        scores, ids = StoreIndex(store).search(queries, 10, modality)
        want_ids, want_scores = exact(x, records, queries, 10, modality)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    hits = search_index(store, queries[:2], k=3, modality="text")
    assert [len(h) for h in hits] == [3, 3] and all(hit["modality"] == "text" for h in hits for hit in h)
    best_text = exact(x, records, queries[:1], 1, "text")[0][0, 0]
    assert hits[0][0] == {**records[best_text], "score": pytest.approx(float(queries[0] @ x[best_text]), abs=1e-5)}


@pytest.mark.parametrize(
    "kind, settings", [("ivf-pq", {"nlist": 16, "m": 8, "nbits": 6, "nprobe": 8, "rerank": 10}), ("hnsw", {"M": 16})]
)
def test_approximate_indexes_find_the_true_neighbours(tmp_path, kind, settings):
    x, records = clustered(3000), records_for(3000, failed=(5,))
    store = write_store(tmp_path / "store", x, records, part_size=700)
    build_index(store, kind, settings)
    queries = clustered(100, seed=1)
    index = StoreIndex(store, kind)
    scores, ids = index.search(queries, 10)
    want, _ = exact(x, records, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.9, recall
    assert 5 not in ids
    if kind == "ivf-pq":  # re-ranked: the scores are exact inner products
        np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[ids], queries), atol=1e-5)
        _, plain = index.search(queries, 10, rerank=1)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(plain, want)]) < recall  # PQ codes alone
    _, audio = index.search(queries, 10, "audio")
    assert all(records[i]["modality"] == "audio" for i in audio.ravel())


@pytest.mark.parametrize(
    "kind, settings",
    [("ivf-pq", {"nlist": 16, "m": 8, "nbits": 6, "nprobe": 8, "rerank": 10}), ("hnsw", {"M": 8, "ef_search": 16})],
)
def test_a_modality_far_from_the_query_is_still_found(tmp_path, kind, settings):
    """Each modality in its own region, as the embeddings of an untrained (or unaligned) model are: a
    query of one modality filtered to another must still get its k best rows of that one, not the
    nothing the query's own IVF cells or HNSW neighbourhood hold of it."""
    rng = np.random.default_rng(0)
    records = records_for(3000, failed=(4,))
    modality = np.array([r["modality"] for r in records])
    centres = {m: 3 * rng.standard_normal(32) for m in MODALITIES}
    x = np.stack([centres[m] for m in modality]) + rng.standard_normal((3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = write_store(tmp_path / "store", x, records, part_size=700)
    build_index(store, kind, settings)
    queries = x[modality == "image"][:50]
    index = StoreIndex(store, kind)
    for wanted in ("audio", "text"):
        scores, ids = index.search(queries, 10, wanted)
        want_ids, want_scores = exact(x, records, queries, 10, wanted)
        assert (ids >= 0).all() and all(records[i]["modality"] == wanted for i in ids.ravel())
        assert 4 not in ids
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want_ids)])
        assert recall >= 0.9, (wanted, recall)
        if kind == "ivf-pq":  # re-ranked or exact: true inner products, best first
            np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[ids], queries), atol=1e-5)
    hits = search_index(store, queries[:3], k=5, modality="text", kind=kind)
    assert [len(h) for h in hits] == [5, 5, 5] and all(hit["modality"] == "text" for h in hits for hit in h)


def test_settings_are_recorded_and_a_changed_store_is_refused(tmp_path, capsys):
    x, records = clustered(400), records_for(400)
    store = write_store(tmp_path / "store", x, records)
    assert main(["index", str(store), "--kind", "ivf-pq", "--set", "nlist=4", "m=4", "nbits=4"]) == 0
    assert "indexed 400 vectors (IVF4,PQ4x4" in capsys.readouterr().out
    assert main(["index", str(store), "--kind", "flat"]) == 0
    meta = json.loads((store / "embeddings.json").read_text())
    assert set(meta["indexes"]) == {"ivf-pq", "flat"} and meta["complete"] and meta["dim"] == 32  # the rest kept
    assert meta["indexes"]["ivf-pq"]["settings"] == {
        "nlist": 4,
        "m": 4,
        "nbits": 4,
        "nprobe": 4,
        "rerank": 8,
        "train_size": 400,
    }  # every row: fewer than 39 per code; every cell: fewer than 8 cells
    assert meta["indexes"]["ivf-pq"]["factory"] == "IVF4,PQ4x4" and meta["indexes"]["flat"]["count"] == 400
    assert not list(store.glob(".*tmp"))
    StoreIndex(store).search(x[:1], 5)  # the index built last: flat
    with pytest.raises(ConfigError, match="nprobe: not a search setting of a flat index"):
        StoreIndex(store).search(x[:1], 5, nprobe=3)
    assert main(["index", str(store), "--kind", "ivf-pq", "--set", "nlists=4"]) == 2
    assert "nlists: not a ivf-pq setting; expected one of ['m', 'nbits', 'nlist'" in capsys.readouterr().err
    assert main(["index", str(store), "--kind", "hnsw", "--set", "M=0"]) == 2
    assert "M: expected a positive int, got '0'" in capsys.readouterr().err
    write_store(store, x[:300], records[:300])  # embedded again into the same folder, its index entries kept
    (store / "embeddings.json").write_text(
        json.dumps({**json.loads((store / "embeddings.json").read_text()), "indexes": meta["indexes"]})
    )
    with pytest.raises(DataError, match="built over another version of the store"):
        StoreIndex(store, "flat").search(x[:1], 5)
    write_store(tmp_path / "partial", x, records, complete=False)
    with pytest.raises(DataError, match="partial: unfinished"):
        build_index(tmp_path / "partial")


def test_missing_faiss_names_the_package(tmp_path, monkeypatch):
    store = write_store(tmp_path / "store", clustered(10), records_for(10))
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"pip install faiss-cpu"):
        build_index(store)


def test_sample_set_flat_search_is_exact_search(tmp_path):
    """Three sample tasks (point clouds, audio, video) embedded with a tiny model: the flat index
    returns what exact search returns, and what `omnivec search` without an index returns (the same
    rows in the same order), for every query, and with each modality filter."""
    import torch
    from conftest import TINY

    import omnivec
    from omnivec.embedding import embed_files
    from omnivec.embedding_store import open_store
    from omnivec.search import nearest

    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny", **TINY)
    embeddings, records = embed_files(
        model, [SAMPLE / "shapes", SAMPLE / "spoken_digits", SAMPLE / "moving_digits"], num_workers=0
    )
    store = write_store(tmp_path / "store", embeddings, records, part_size=64)
    build_index(store, "flat")
    queries = embeddings[::10]
    for modality in (None, "point_cloud", "audio", "video"):
        scores, ids = StoreIndex(store).search(queries, 10, modality)
        want_ids, want_scores = exact(embeddings, records, queries, 10, modality)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=0)
        assert all(modality in (None, records[i]["modality"]) for i in ids.ravel())
        hits = nearest([open_store(store)], queries, 10, modality)  # the no-index path of `omnivec search`
        assert [[h["index"] for h in found] for found in hits] == ids.tolist()
        np.testing.assert_allclose([[h["score"] for h in found] for found in hits], scores, atol=1e-5, rtol=0)
    assert (StoreIndex(store).search(queries, 10, "image")[1] == -1).all()  # no image in the store
