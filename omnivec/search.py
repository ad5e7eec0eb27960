"""`omnivec search`: the nearest stored embeddings (cosine) to a file or a text, in one embedding
store or several made alike: through the store's FAISS index (`omnivec index`) when it has one,
else an exact top-k, part by part."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets.readers import modality_of
from .embedding import embed_items
from .embedding_store import COMPATIBLE, EmbeddingStore, open_store
from .embedding_stream import embed_options
from .errors import ConfigError, DataError, ModelError
from .index import search_index
from .model import OmniVecModel
from .registry import MODALITIES
from .saved_model import model_digest


def check_compatible(stores: Sequence[EmbeddingStore]) -> None:
    """`DataError` unless every store was made by the same model (the same weights when both know
    them) with the same width, pooling, layers and normalisation: only then are scores comparable."""
    first = stores[0]
    for other in stores[1:]:
        a, b = first.meta, other.meta
        same_model = (
            a["model_digest"] == b["model_digest"]
            if a.get("model_digest") and b.get("model_digest")
            else a["model"] == b["model"]
        )
        keys = ([] if same_model else ["model"]) + [k for k in COMPATIBLE if a[k] != b[k]]
        if keys:
            differ = ", ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in keys)
            raise DataError(
                f"{first.root} and {other.root}: embeddings of different kinds ({differ}); "
                "their scores cannot be compared"
            )


def nearest(
    stores: Sequence[EmbeddingStore], queries: np.ndarray, k: int, modality: str | None = None
) -> list[list[dict[str, Any]]]:
    """Per query of `queries` [Q, D]: the `k` rows of `stores` with the highest dot product (cosine,
    the rows being L2-normalised), best first, as their records plus `score` (and `store` when there
    are several). Only rows embedded without failure, of `modality` when given, count. Scores are
    computed part by part and only the best `k` per query are kept (np.argpartition)."""
    check_compatible(stores)
    n_queries = len(queries)
    best = np.full((n_queries, 0), -np.inf, np.float32)  # [Q, <=k] scores
    where = np.zeros((n_queries, 0, 3), np.int64)  # [Q, <=k, (store, part, row)]
    for s, store in enumerate(stores):
        for p, part in enumerate(store.parts):
            if modality is not None and not part["modalities"].get(modality):
                continue
            scores = np.ascontiguousarray((store.embeddings(part) @ queries.T).T)  # [Q, n]
            if part["failed"] or (modality is not None and set(part["modalities"]) != {modality}):
                part_records = store.records(part)
                keep = np.array([r["status"] == "ok" and modality in (None, r["modality"]) for r in part_records])
                scores[:, ~keep] = -np.inf
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.indices(scores.shape)[1]
            ids = np.stack(np.broadcast_arrays(s, p, top), axis=-1)  # [Q, k, 3]
            best = np.concatenate([best, np.take_along_axis(scores, top, axis=1)], axis=1)
            where = np.concatenate([where, ids], axis=1)
            if best.shape[1] > k:
                keep = np.argpartition(-best, k - 1, axis=1)[:, :k]
                best, where = np.take_along_axis(best, keep, axis=1), np.take_along_axis(where, keep[..., None], axis=1)
    records: dict[tuple[int, int], list[dict[str, Any]]] = {}
    hits = []
    for q in range(n_queries):
        order = sorted(range(best.shape[1]), key=lambda j: (-best[q, j], *where[q, j]))
        found = []
        for j in order:
            if not np.isfinite(best[q, j]):
                continue
            s, p, row = (int(v) for v in where[q, j])
            if (s, p) not in records:
                records[s, p] = stores[s].records(stores[s].parts[p])
            found.append(
                {
                    **records[s, p][row],
                    "score": float(best[q, j]),
                    **({"store": str(stores[s].root)} if len(stores) > 1 else {}),
                }
            )
        hits.append(found)
    return hits


def query_item(query: str | os.PathLike | None, text: str | None) -> dict[str, Any]:
    """A search query -> an item: a file (`query`) or a text (`text`), exactly one; `ConfigError` /
    `DataError` for an empty, missing or ambiguous one."""
    if (query is None) == (text is None):
        raise ConfigError("search: give --query PATH (a file of any modality) or --text TEXT, exactly one")
    if text is not None:
        if not text.strip():
            raise ConfigError("--text: empty; give the text to search for")
        return {"text": text, "where": "<query>", "modality": "text"}
    assert query is not None  # exactly one of query, text
    if not str(query).strip():
        raise ConfigError("--query: empty; give a file (or --text TEXT to search for a text)")
    path = Path(query)
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError:  # e.g. a name longer than a file name can be
        is_file = is_dir = False
    if is_dir:
        raise DataError(f"{query}: a folder; --query takes one file (--text TEXT searches for a text)")
    if not is_file:
        raise DataError(f"{query}: no such file (--text TEXT searches for a text)")
    return {"path": str(path), "modality": modality_of(path)}


def query_model(stores: list[EmbeddingStore], model: str | os.PathLike | OmniVecModel | None) -> OmniVecModel:
    """The model that embeds the query: `model` (a folder or hub id must hold the weights the store
    was made with, when both are known), else the one the store records."""
    meta = stores[0].meta
    if isinstance(model, OmniVecModel):
        return model
    loaded = OmniVecModel.from_pretrained(meta["model"] if model is None else model)  # a damaged folder is named
    if model is not None and meta.get("model_digest") and model_digest(model) not in (None, meta["model_digest"]):
        raise ModelError(
            f"--model {model}: other weights than those that made {stores[0].root} ({meta['model']}); "
            "its embeddings cannot be compared with the store's"
        )
    return loaded


def search(
    index: str | os.PathLike | Sequence[str | os.PathLike],
    query: str | os.PathLike | None = None,
    text: str | None = None,
    k: int = 5,
    model: str | os.PathLike | OmniVecModel | None = None,
    modality: str | None = None,
) -> list[dict[str, Any]]:
    """The `k` nearest samples (cosine) to a file `query` or a `text`, best first, in one store or
    several made alike (`omnivec embed --output`), optionally only of one modality: their records
    with `score`. With the FAISS index of a store (`omnivec index`), that index's search; else an
    exact top-k, part by part, in memory bounded by a part."""
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"-k: expected a whole number >= 1, got {k!r}")
    item = query_item(query, text)
    stores = [open_store(i) for i in ([index] if isinstance(index, (str, os.PathLike)) else index)]
    check_compatible(stores)
    if modality is not None:
        if modality not in MODALITIES.names():
            raise ConfigError(f"--modality: expected one of {MODALITIES.names()}, got {modality!r}")
        held = {m: n for s in stores for m, n in s.modalities().items()}
        if modality not in held:
            raise DataError(
                f"{', '.join(str(s.root) for s in stores)}: holds no {modality} samples "
                f"(it holds {', '.join(sorted(held))})"
            )
    model = query_model(stores, model)
    meta = stores[0].meta  # the query is pooled as the store's vectors were
    options = embed_options(model, meta["pool"], meta["layers"], meta.get("pooler"))
    q, errors = embed_items(model, [item], batch_size=1, num_workers=0, **options)  # [1, D]
    if errors:
        raise DataError(errors[0])
    if q.shape[1] != stores[0].dim:
        raise ModelError(f"the query model gives {q.shape[1]}-wide embeddings, {stores[0].root} holds {stores[0].dim}")
    if len(stores) == 1 and stores[0].meta.get("indexes"):  # a FAISS index `omnivec index` built
        hits = search_index(stores[0].root, q, k, modality)[0]
    else:  # an exact top-k, part by part
        hits = nearest(stores, q, k, modality)[0]
    if not hits:
        raise DataError(
            f"{', '.join(str(s.root) for s in stores)}: no embedded {modality + ' ' if modality else ''}"
            "samples to search (every one failed)"
        )
    return hits
