"""Embedding extraction for a few files, folders and manifests of any modality, in memory
(`embed_files`, `embed_items`), and cosine search in embedding stores (`search`). `omnivec embed`
streams any number of samples into a store: embedding_stream.py."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .datasets.loaders import collate_for
from .datasets.readers import modality_of
from .embedding_inputs import collect_inputs
from .embedding_store import LAYERS, POOL, EmbeddingStore, check_compatible, model_digest, nearest, open_store
from .embedding_stream import PRECISIONS, load_item, name_of, record_of
from .errors import ConfigError, DataError, InputError, ModelError
from .model import OmniVecModel
from .registry import MODALITIES
from .training import to_device

__all__ = ["collect_inputs", "embed_files", "embed_items", "search"]


class EmbedDataset(Dataset):
    """Items of one modality -> model-ready samples (errors come back as values, named by path)."""

    def __init__(self, items: list[dict[str, Any]], indices: list[int], transform):
        self.items, self.indices, self.transform = items, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = self.indices[k]
        return {"index": i, "target": None, **load_item(self.items[i], self.transform)}


@torch.inference_mode()
def embed_items(
    model: OmniVecModel,
    items: list[dict[str, Any]],
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings [len(items), D] (a failed row zero) and {index: error} for the samples that could
    not be read; transforms run in `num_workers` DataLoader workers."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    transforms = model.transforms(train=False)
    out = np.zeros((len(items), model.config.backbone.dim), dtype=np.float32)
    errors: dict[int, str] = {}
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    by_modality: dict[str, list[int]] = {}
    for i in range(len(items)):
        by_modality.setdefault(items[i]["modality"], []).append(i)
    bar = tqdm(total=len(items), desc="embed", unit="sample", disable=len(items) < 2)  # not for one query
    for modality, idx in by_modality.items():
        if modality not in model.encoders:
            errors.update({i: f"{name_of(items[i])}: the model has no {modality} encoder" for i in idx})
            bar.update(len(idx))
            continue
        loader = DataLoader(
            EmbedDataset(items, idx, transforms[modality]),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_for(model, modality),
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            errors.update(zip(batch["skipped_index"], batch["skipped"]))
            if batch["input"] is not None:
                try:
                    with autocast:
                        emb = model.embed({modality: to_device(batch["input"], device)})[modality]
                except InputError as e:  # e.g. values that overflow: this batch's samples fail, named
                    errors.update({i: f"{name_of(items[i])}: {e}" for i in batch["index"].tolist()})
                else:
                    out[batch["index"].numpy()] = emb.float().cpu().numpy()
            bar.update(len(batch["index"]) + len(batch["skipped"]))
    bar.close()
    return out, errors


def embed_files(
    model: OmniVecModel,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | None = None,
    precision: str = "fp32",
    skip_bad: bool = False,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Embed every sample of `paths` (files, folders, manifests; the modality from each file's
    extension) -> (embeddings [N, D] in input order, one record per sample: index, path (a file) or
    where (a manifest line, shard member), modality, status, label). An unreadable sample raises
    `DataError` naming it unless `skip_bad`."""
    items = collect_inputs(paths)
    embeddings, errors = embed_items(model, items, batch_size, num_workers, device, precision)
    return embeddings, records_for(items, errors, skip_bad)


def records_for(items: list[dict[str, Any]], errors: dict[int, str], skip_bad: bool) -> list[dict[str, Any]]:
    if errors and not skip_bad:
        listing = "\n  ".join(errors[i] for i in sorted(errors))
        raise DataError(
            f"{len(errors)} of {len(items)} samples could not be embedded (nothing written; "
            f"--skip-bad records them as failed and goes on):\n  {listing}"
        )
    return [
        {**record_of(i, item), "status": f"failed: {errors[i]}" if i in errors else "ok"}
        for i, item in enumerate(items)
    ]


def query_item(query: str | os.PathLike | None, text: str | None) -> dict[str, Any]:
    """A search query -> an item: a file (`query`) or a text (`text`), exactly one; `ConfigError` /
    `DataError` for an empty, missing or ambiguous one."""
    if (query is None) == (text is None):
        raise ConfigError("search: give --query PATH (a file of any modality) or --text TEXT, exactly one")
    if text is not None:
        if not text.strip():
            raise ConfigError("--text: empty; give the text to search for")
        return {"text": text, "where": "<query>", "modality": "text"}
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
    if (meta["pool"], meta["layers"]) != (POOL, LAYERS):
        raise DataError(
            f"{stores[0].root}: pooled {meta['pool']!r} over layers {meta['layers']!r}; this omnivec "
            f"embeds queries with pool {POOL!r} over layers {LAYERS!r}"
        )
    if isinstance(model, OmniVecModel):
        return model
    if model is not None and meta.get("model_digest") and model_digest(model) not in (None, meta["model_digest"]):
        raise ModelError(
            f"--model {model}: other weights than those that made {stores[0].root} ({meta['model']}); "
            "its embeddings cannot be compared with the store's"
        )
    return OmniVecModel.from_pretrained(meta["model"] if model is None else model)


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
    with `score`. An exact top-k, part by part, in memory bounded by a part."""
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
    q, errors = embed_items(model, [item], batch_size=1, num_workers=0)  # [1, D]
    if errors:
        raise DataError(errors[0])
    if q.shape[1] != stores[0].dim:
        raise ModelError(f"the query model gives {q.shape[1]}-wide embeddings, {stores[0].root} holds {stores[0].dim}")
    hits = nearest(stores, q, k, modality)[0]
    if not hits:
        raise DataError(
            f"{', '.join(str(s.root) for s in stores)}: no embedded {modality + ' ' if modality else ''}"
            "samples to search (every one failed)"
        )
    return hits
