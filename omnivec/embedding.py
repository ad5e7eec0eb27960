"""Embedding extraction for a few files, folders and manifests of any modality, in memory
(`embed_files`, `embed_items`), and cosine search in embedding stores (`search`). `omnivec embed`
streams any number of samples into a store: embedding_stream.py."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .datasets.dataset import to_device
from .datasets.loaders import collate_for
from .embedding_inputs import collect_inputs
from .embedding_stream import PRECISIONS, load_item, name_of, record_of
from .errors import DataError, InputError
from .model import OmniVecModel

__all__ = ["collect_inputs", "embed_files", "embed_items"]


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
    **embed_options: Any,
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
                        emb = model.embed({modality: to_device(batch["input"], device)}, **embed_options)[modality]
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
