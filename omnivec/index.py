"""FAISS indexes over an embedding store (the output folder `omnivec embed` writes: embeddings.json
and parts of L2-normalised rows), searched by inner product (= cosine):

    omnivec index OUT --kind flat|ivf-pq|hnsw [key=value ...]    -> OUT/faiss-KIND.index

- flat: exact search (`IndexFlatIP`), the reference the others are measured against.
- ivf-pq: `nlist` k-means cells, each vector a PQ code of `m` sub-vectors of `nbits` bits; a query
  visits its `nprobe` nearest cells; the best `k * rerank` candidates are re-ranked by their exact
  inner products, read back from the store's own parts (no second copy of the vectors in the index).
- hnsw: a graph of `M` links per vector (`IndexHNSWFlat`, vectors kept), `ef_search` candidates.

The store is read part by part (only ivf-pq's training sample and the vectors being added are in
memory beside the index). Failed rows are left out; a vector's id is its row in the store. The
index's settings go into embeddings.json under "indexes" (rewritten atomically), with the store's
parts it was built from: a store embedded again after the index was built is refused until it is
rebuilt. Searching one modality passes FAISS an `IDSelectorBitmap` of that modality's rows, so
every index returns the k best of that modality (HNSW: among the graph nodes it visits); ivf-pq
visits the `nprobe` nearest cells that hold rows of that modality (a query of another modality
would otherwise visit cells without any). A query for which an index finds fewer than k rows
(e.g. HNSW stuck among another modality's nodes) gets an exact top-k, part by part.

Needs `faiss-cpu` (pip install faiss-cpu, or omnivec[faiss]).
"""

from __future__ import annotations

import json
import math
import os
import time
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .embedding_store import META, EmbeddingStore, open_store
from .errors import ConfigError, DataError
from .index_kinds import KINDS, resolve_settings


def import_faiss() -> Any:
    """The `faiss` module, or a `ConfigError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("FAISS indexes need faiss: pip install faiss-cpu (or pip install 'omnivec[faiss]')") from None
    return faiss


# --- the store (omnivec/embedding_store.py) ----------------------------------------------------------


def read_store(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the complete store in `out_dir` (`DataError` naming what is wrong)."""
    return open_store(out_dir).meta


def read_part(out_dir: Path, meta: Mapping[str, Any], part: Mapping[str, Any]) -> np.ndarray:
    """One part's rows [n, D] float32 (npy parts memory-mapped)."""
    return EmbeddingStore(Path(out_dir), dict(meta)).embeddings(dict(part))


def read_records(out_dir: Path, meta: Mapping[str, Any], part: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One part's records (index, path, modality, status), in row order."""
    return EmbeddingStore(Path(out_dir), dict(meta)).records(dict(part))


def iter_parts(out_dir: Path, meta: Mapping[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids [n'] int64, rows [n', D] float32) of each part's successfully embedded rows, part by part."""
    for part in meta["parts"]:
        ok = np.array([r["status"] == "ok" for r in read_records(out_dir, meta, part)], dtype=bool)
        rows = read_part(out_dir, meta, part)
        yield part["start"] + np.flatnonzero(ok), np.ascontiguousarray(rows[ok], dtype=np.float32)


def training_sample(out_dir: Path, meta: Mapping[str, Any], size: int, seed: int = 0) -> np.ndarray:
    """About `size` rows drawn uniformly from every part (a store in input order may be sorted by
    modality: the first rows alone would train cells for one of them) -> [n, D] float32."""
    total = sum(p["count"] for p in meta["parts"])
    rng = np.random.default_rng(seed)
    sample = []
    for _, rows in iter_parts(out_dir, meta):
        take = min(len(rows), math.ceil(len(rows) * size / max(total, 1)))
        sample.append(rows[np.sort(rng.choice(len(rows), take, replace=False))])
    return np.concatenate(sample)


class StoreRows:
    """Rows of the store by id, for exact re-ranking: parts read once each, on demand."""

    def __init__(self, out_dir: Path, meta: Mapping[str, Any]):
        self.out_dir, self.meta = out_dir, meta
        self.starts = [p["start"] for p in meta["parts"]]
        self.parts: dict[int, np.ndarray] = {}

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        """ids [n] (each a successfully embedded row) -> rows [n, D] float32."""
        out = np.empty((len(ids), self.meta["dim"]), dtype=np.float32)
        which = np.searchsorted(self.starts, ids, side="right") - 1  # [n] the part of each row
        for p in np.unique(which):
            if p not in self.parts:
                self.parts[p] = read_part(self.out_dir, self.meta, self.meta["parts"][p])
            here = which == p
            out[here] = self.parts[p][ids[here] - self.starts[p]]
        return out


# --- build and search -----------------------------------------------------------------------------


def index_file(kind: str) -> str:
    return f"faiss-{kind}.index"


def build_index(
    out_dir: str | os.PathLike, kind: str = "flat", overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build a `kind` index over the complete store in `out_dir`, write it to OUT/faiss-KIND.index
    and record it in embeddings.json under "indexes" -> the recorded entry."""
    faiss = import_faiss()
    out_dir = Path(out_dir)
    meta = read_store(out_dir)
    if not meta.get("complete"):
        raise DataError(
            f"{out_dir / META}: the store is not complete (omnivec embed is still writing it, or "
            "stopped): index it once the embedding run has finished"
        )
    dim, n = meta["dim"], sum(p["count"] for p in meta["parts"]) - meta.get("failed", 0)
    if n < 1:
        raise DataError(f"{out_dir}: the store holds no embedded rows to index")
    settings = resolve_settings(kind, n, dim, overrides)
    start = time.perf_counter()
    index = faiss.index_factory(dim, KINDS[kind].factory(settings), faiss.METRIC_INNER_PRODUCT)
    KINDS[kind].configure(faiss, index, settings)
    if KINDS[kind].trains:
        index.train(training_sample(out_dir, meta, settings["train_size"]))
    for ids, rows in iter_parts(out_dir, meta):
        if len(ids):
            index.add_with_ids(rows, ids)
    path = out_dir / index_file(kind)
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    entry = {
        "file": path.name,
        "kind": kind,
        "factory": KINDS[kind].factory(settings),
        "metric": "inner_product",
        "settings": settings,
        "count": int(index.ntotal),
        "dim": dim,
        "parts": meta["parts"],
        "faiss": faiss.__version__,
        "build_seconds": round(time.perf_counter() - start, 3),
        "built": time.time(),
    }
    record_index(out_dir, kind, entry)
    return entry


def record_index(out_dir: Path, kind: str, entry: dict[str, Any]) -> None:
    """Add `entry` to embeddings.json's "indexes" (read again just before: only that key changes),
    written aside and renamed into place."""
    path = out_dir / META
    meta = json.loads(path.read_text())
    meta.setdefault("indexes", {})[kind] = entry
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


def chosen_index(out_dir: Path, meta: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    """The recorded entry of `kind` (None: the index built last); a `DataError` when there is none
    or the store changed since it was built."""
    indexes = meta.get("indexes") or {}
    if kind is None and indexes:
        kind = max(indexes, key=lambda k: indexes[k]["built"])
    if kind not in indexes:
        raise DataError(
            f"{out_dir}: no {kind or 'FAISS'} index (built: {sorted(indexes) or 'none'}); "
            f"omnivec index {out_dir} --kind {kind or 'flat'} builds one"
        )
    if indexes[kind]["parts"] != meta["parts"]:
        raise DataError(
            f"{out_dir / indexes[kind]['file']}: built over another version of the store (its parts "
            f"changed since); rebuild it: omnivec index {out_dir} --kind {kind}"
        )
    return indexes[kind]


def modality_rows(out_dir: Path, meta: Mapping[str, Any], modality: str) -> np.ndarray:
    """[rows] bool: the successfully embedded rows of `modality`."""
    wanted = np.zeros(sum(p["count"] for p in meta["parts"]), dtype=bool)
    for part in meta["parts"]:
        for r in read_records(out_dir, meta, part):
            wanted[r["index"]] = r["modality"] == modality and r["status"] == "ok"
    return wanted


def bitmap_selector(faiss: Any, wanted: np.ndarray) -> tuple[Any, np.ndarray]:
    """An `IDSelectorBitmap` of the ids where `wanted` [n] is true (and the bitmap it reads, to keep alive)."""
    bitmap = np.packbits(wanted, bitorder="little")
    return faiss.IDSelectorBitmap(len(wanted), faiss.swig_ptr(bitmap)), bitmap


class ModalityFilter:
    """What a search of one modality passes FAISS: a selector of its rows and, for an IVF index, a
    selector of the cells holding any of them (`cells`, for the coarse quantizer: the query visits
    the `nprobe` nearest cells where the modality is, not its nearest cells of any modality)."""

    def __init__(self, faiss: Any, index: Any, wanted: np.ndarray):
        self.wanted, self.count = wanted, int(wanted.sum())
        self.rows, self._bitmap = bitmap_selector(faiss, wanted)
        self.cells: Any = None
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            lists = ivf.invlists
            held = np.zeros(ivf.nlist, dtype=bool)
            for cell in range(ivf.nlist):
                size = lists.list_size(cell)
                if size:
                    ids = faiss.rev_swig_ptr(lists.get_ids(cell), size)
                    held[cell] = wanted[ids].any()
            self.cells, self._cell_bitmap = bitmap_selector(faiss, held)
            self.quantizer_params = faiss.SearchParameters()  # kept here: the IVF parameters do not own it
            self.quantizer_params.sel = self.cells


class StoreIndex:
    """A FAISS index of a store, read once, for many searches: `StoreIndex(OUT, kind).search(queries, k)`."""

    def __init__(self, out_dir: str | os.PathLike, kind: str | None = None):
        """Read the `kind` index of the store in `out_dir` (None: the one built last)."""
        self.faiss = import_faiss()
        self.out_dir = Path(out_dir)
        self.meta = read_store(self.out_dir)
        self.entry = chosen_index(self.out_dir, self.meta, kind)
        self.index = self.faiss.read_index(str(self.out_dir / self.entry["file"]))
        self.rows = StoreRows(self.out_dir, self.meta)
        self.filters: dict[str, ModalityFilter] = {}

    def search(
        self, queries: np.ndarray, k: int = 10, modality: str | None = None, **params: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] -> (scores [Q, k] inner products, best first; ids [Q, k] store rows, -1
        where fewer than k were found), only rows of `modality` when given; `params` (nprobe,
        rerank, ef_search) override the recorded settings for this search."""
        allowed = sorted({"nprobe", "rerank", "ef_search"} & set(self.entry["settings"]))  # search-time settings
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: not a search setting of a {self.entry['kind']} index; expected one of "
                f"{allowed or '(none)'}"
            )
        settings = {**self.entry["settings"], **params}
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.meta["dim"]:
            raise ConfigError(
                f"queries: expected [Q, {self.meta['dim']}] (the store's width), got {list(queries.shape)}"
            )
        if modality and modality not in self.filters:
            wanted = modality_rows(self.out_dir, self.meta, modality)
            self.filters[modality] = ModalityFilter(self.faiss, self.index, wanted)
        filt = self.filters[modality] if modality else None
        rerank = settings.get("rerank", 1)
        params = KINDS[self.entry["kind"]].search_params(self.faiss, settings, filt.rows if filt else None)
        if filt is not None and filt.cells is not None:
            params.quantizer_params = filt.quantizer_params
        scores, ids = self.index.search(queries, k * rerank, params=params)  # [Q, k * rerank]
        if rerank > 1:
            scores, ids = exact_rerank(self.rows, queries, ids, k)
        scores, ids = scores[:, :k], ids[:, :k]
        available = filt.count if filt is not None else int(self.index.ntotal)
        short = np.flatnonzero((ids >= 0).sum(1) < min(k, available))  # queries the index found too few rows for
        if len(short):
            scores[short], ids[short] = exact_top_k(
                self.out_dir, self.meta, queries[short], k, filt.wanted if filt is not None else None
            )
        return scores, ids


def exact_top_k(
    out_dir: Path, meta: Mapping[str, Any], queries: np.ndarray, k: int, wanted: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of the store's successfully embedded rows (only those where `wanted` [rows]
    is true, when given), part by part -> (scores [Q, k], ids [Q, k]; -inf and -1 past the rows there are)."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, rows in iter_parts(out_dir, meta):
        if wanted is not None:
            keep = wanted[ids]
            ids, rows = ids[keep], rows[keep]
        if not len(ids):
            continue
        scores = np.concatenate([best, queries @ rows.T], axis=1)  # [Q, k + n]
        both = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(both, top, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    best, best_ids = np.take_along_axis(best, order, 1), np.take_along_axis(best_ids, order, 1)
    return best, np.where(np.isfinite(best), best_ids, -1)


def exact_rerank(rows: StoreRows, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ids [Q, c] (-1: none) -> their exact inner products with the queries, the best k
    of each first -> (scores [Q, k], ids [Q, k])."""
    found = ids >= 0
    vectors = rows[ids[found]]  # [n, D]
    exact = np.full(ids.shape, -np.inf, dtype=np.float32)
    exact[found] = np.einsum("nd,nd->n", vectors, np.repeat(queries, found.sum(1), axis=0))
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # [Q, k]
    return np.take_along_axis(exact, order, 1), np.where(
        np.take_along_axis(found, order, 1), np.take_along_axis(ids, order, 1), -1
    )


def search_index(
    out_dir: str | os.PathLike,
    queries: np.ndarray,
    k: int = 10,
    modality: str | None = None,
    kind: str | None = None,
    **params: int,
) -> list[list[dict[str, Any]]]:
    """The k nearest rows of the store (inner product of L2-normalised vectors: cosine) to each of
    `queries` [Q, D], with a FAISS index `omnivec index` built (`kind`; None: the one built last),
    optionally only rows of `modality` -> for each query its hits, best first: the row's record
    (index, path, modality, status) and "score"."""
    index = StoreIndex(out_dir, kind)
    scores, ids = index.search(queries, k, modality, **params)
    out_dir, meta = index.out_dir, index.meta
    starts = [p["start"] for p in meta["parts"]]
    records: dict[int, list[dict[str, Any]]] = {}
    hits: list[list[dict[str, Any]]] = []
    for row_scores, row_ids in zip(scores, ids):
        hits.append([])
        for score, i in zip(row_scores.tolist(), row_ids.tolist()):
            if i < 0:
                continue
            p = bisect_right(starts, i) - 1
            if p not in records:
                records[p] = read_records(out_dir, meta, meta["parts"][p])
            hits[-1].append({**records[p][i - starts[p]], "score": score})
    return hits
