"""Embedding extraction for files, folders and manifests of any modality, and cosine search."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .datasets import find_tasks
from .datasets.dataset import to_device
from .datasets.loaders import collate_for
from .datasets.manifest import MANIFEST_NAMES, inside
from .datasets.readers import known_suffixes, load_sample, modality_of
from .datasets.sources import streamed_tasks
from .errors import ConfigError, DataError, InputError
from .files import Blob
from .model import OmniVecModel
from .pooling import load_pooler
from .registry import MODALITIES

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def input_item(row: dict[str, Any], modality: str) -> dict[str, Any]:
    """A dataset row -> an embedding item: `{"path": str or Blob, "modality": m}`, or for an inline
    sample `{COLUMN: value, "modality": m, "path": "where it came from"}`."""
    column = MODALITIES.get(modality).inline_column
    if column and column in row:
        return {column: row[column], "modality": modality, "path": row["where"]}
    path = row["path"]
    return {"path": path if isinstance(path, Blob) else str(path), "modality": modality}


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Files, folders and manifests -> one item per sample, in input order:
    `input_item`s (`{"path": str, "modality": m}`, or inline text with the manifest line as `path`).

    A folder holding manifests gives their rows; any other folder gives its files of known types;
    shards and `hf:` datasets give their samples (held in memory as `Blob`s, in shard order)."""
    items: list[dict[str, Any]] = []
    for spec in inputs:
        streamed = streamed_tasks(spec)
        if streamed is not None:
            for task in streamed:
                for shard in task.stream.shards:
                    items += [input_item(row, task.modality) for _, row in shard.read()]
            continue
        source = Path(spec)
        if not source.exists():
            raise DataError(f"{source}: not found")
        is_manifest = source.is_file() and (source.name in MANIFEST_NAMES or source.suffix in (".jsonl", ".csv"))
        if is_manifest or (source.is_dir() and any(any(source.rglob(n)) for n in MANIFEST_NAMES)):
            for task in find_tasks(source):
                items += [input_item(row, task.modality) for row in task.rows]
        elif source.is_dir():
            suffixes = known_suffixes()
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            for p in files:
                inside(p, source, allow_outside_root=False)  # a symbolic link out of the folder is refused
            items += [{"path": str(p), "modality": modality_of(p)} for p in files]
        else:
            items.append({"path": str(source), "modality": modality_of(source)})
    return items


class EmbedDataset(Dataset):
    """Items of one modality -> model-ready samples (errors come back as values, named by path)."""

    def __init__(self, items: list[dict[str, Any]], indices: list[int], transform):
        self.items, self.indices, self.transform = items, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = self.indices[k]
        item = self.items[i]
        try:
            x = load_sample(item, item["modality"], self.transform)
        except DataError as e:
            message = str(e) if str(e).startswith(str(item["path"])) else f"{item['path']}: {e}"
            return {"index": i, "error": message}
        return {"index": i, "input": x, "target": None}


@torch.inference_mode()
def embed_items(
    model: OmniVecModel,
    items: list[dict[str, Any]],
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    indices: Sequence[int] | None = None,
    **embed_options: Any,
) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings [len(items), D] (rows of `indices` only, the rest zero) and {index: error} for
    the samples that could not be read; transforms run in `num_workers` DataLoader workers."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    transforms = model.transforms(train=False)
    indices = list(range(len(items))) if indices is None else list(indices)
    out = np.zeros((len(items), model.config.backbone.dim), dtype=np.float32)
    errors: dict[int, str] = {}
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    by_modality: dict[str, list[int]] = {}
    for i in indices:
        by_modality.setdefault(items[i]["modality"], []).append(i)
    bar = tqdm(total=len(indices), desc="embed", unit="sample")
    for modality, idx in by_modality.items():
        if modality not in model.encoders:
            errors.update({i: f"{items[i]['path']}: the model has no {modality} encoder" for i in idx})
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
                    errors.update({i: f"{items[i]['path']}: {e}" for i in batch["index"].tolist()})
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
    extension) -> (embeddings [N, D] in input order, one record per sample: path, modality, index,
    status). An unreadable sample raises `DataError` naming it unless `skip_bad`."""
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
        {
            "path": str(item["path"]),
            "modality": item["modality"],
            "index": i,
            "status": f"failed: {errors[i]}" if i in errors else "ok",
        }
        for i, item in enumerate(items)
    ]


def output_paths(output: str | os.PathLike, fmt: str | None = None) -> tuple[Path, str]:
    """`OUT` or `OUT.npy|.safetensors|.parquet` -> (path without suffix, format)."""
    output = Path(output)
    suffix = output.suffix.lstrip(".")
    if suffix in ("npy", "safetensors", "parquet"):
        return output.with_suffix(""), fmt or suffix
    return output, fmt or "npy"


def check_output(output: str | os.PathLike, fmt: str | None = None) -> None:
    """Fail before any work when the embeddings could not be written: an unknown format, parquet
    without pyarrow, or a folder that cannot be created or written to."""
    base, fmt = output_paths(output, fmt)
    if fmt not in ("npy", "safetensors", "parquet"):
        raise ConfigError(f"format: expected npy, safetensors or parquet, got {fmt!r}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{output}: writing parquet needs pyarrow (pip install pyarrow), or use --format npy / safetensors"
            ) from None
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base.parent, prefix=".omnivec-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"{base.parent}: cannot write the embeddings there ({e.strerror or e})") from e


def write_embeddings(
    output: str | os.PathLike,
    embeddings: np.ndarray,
    records: list[dict[str, Any]],
    meta: dict[str, Any],
    fmt: str | None = None,
) -> list[Path]:
    """Write the embeddings (`.npy`, `.safetensors` or `.parquet`), one manifest row per sample
    (`.jsonl`: path, modality, index, status) and `.json` metadata; each file is written aside
    and renamed into place."""
    base, fmt = output_paths(output, fmt)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []

    def place(path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp)
        os.replace(tmp, path)
        written.append(path)

    if fmt == "npy":

        def save_npy(path: Path) -> None:
            with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the ".tmp" name
                np.save(f, embeddings)

        place(base.with_suffix(".npy"), save_npy)
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        place(base.with_suffix(".safetensors"), lambda p: save_file({"embeddings": embeddings}, str(p)))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "path": [r["path"] for r in records],
                "modality": [r["modality"] for r in records],
                "index": [r["index"] for r in records],
                "status": [r["status"] for r in records],
                "embedding": list(embeddings),
            }
        )
        place(base.with_suffix(".parquet"), lambda p: pq.write_table(table, p))
    else:
        raise ValueError(f"format: expected npy, safetensors or parquet, got {fmt!r}")
    place(base.with_suffix(".jsonl"), lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))
    place(
        base.with_suffix(".json"),
        lambda p: p.write_text(json.dumps({**meta, "format": fmt, "count": len(records)}, indent=2)),
    )
    return written


def load_index(output: str | os.PathLike) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Read what `write_embeddings` wrote -> (embeddings, records, metadata)."""
    base, _ = output_paths(output)
    meta = json.loads(base.with_suffix(".json").read_text())
    fmt = meta["format"]
    if fmt == "npy":
        embeddings = np.load(base.with_suffix(".npy"))
    elif fmt == "safetensors":
        from safetensors.numpy import load_file

        embeddings = load_file(str(base.with_suffix(".safetensors")))["embeddings"]
    else:
        import pyarrow.parquet as pq

        embeddings = np.stack(pq.read_table(base.with_suffix(".parquet")).column("embedding").to_pylist())
    records = [json.loads(line) for line in base.with_suffix(".jsonl").read_text().splitlines()]
    return np.asarray(embeddings, dtype=np.float32), records, meta


def embed_command(
    model_path: str,
    inputs: Sequence[str],
    output: str,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | None = None,
    precision: str = "fp32",
    skip_bad: bool = False,
    fmt: str | None = None,
    pool: str = "mean",
    layers: str = "last",
    pooler: str | None = None,
) -> list[dict[str, Any]]:
    """`omnivec embed`: under `accelerate launch` each process embeds its shard of the samples and
    the main process merges them in input order and writes the output."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if state.is_main_process:
        check_output(output, fmt)  # before any work
    model = OmniVecModel.from_pretrained(model_path)
    items = collect_inputs(inputs)
    shard = list(range(state.process_index, len(items), state.num_processes))
    embeddings, errors = embed_items(
        model,
        items,
        batch_size,
        num_workers,
        device or state.device,
        precision,
        shard,
        pool=pool,
        layers=layers,
        pooler=load_pooler(pooler) if pooler else None,
    )
    if state.num_processes > 1:  # merge the shards: each row comes from exactly one process
        gathered: list[Any] = [None] * state.num_processes
        torch.distributed.all_gather_object(gathered, (shard, embeddings[shard], errors))
        for part, emb, errs in gathered:
            embeddings[part] = emb
            errors.update(errs)
    records = records_for(items, errors, skip_bad)  # raises before anything is written
    if state.is_main_process:
        meta = {
            "model": str(Path(model_path).resolve()) if Path(model_path).is_dir() else str(model_path),
            "dim": int(embeddings.shape[1]),
            "precision": precision,
        }
        meta.update(pool=pool, layers=layers, **({"pooler": str(Path(pooler).resolve())} if pooler else {}))
        for path in write_embeddings(output, embeddings, records, meta, fmt):
            print(f"wrote {path}")
        failed = sum(r["status"] != "ok" for r in records)
        print(f"embedded {len(records) - failed} samples ({failed} failed) with {model_path}")
    state.wait_for_everyone()
    return records


def search(
    output: str | os.PathLike, query: str, k: int = 5, model: OmniVecModel | None = None, modality: str | None = None
) -> list[dict[str, Any]]:
    """The `k` nearest samples (cosine) to `query` (a file of any modality, or a text) in a saved
    index, optionally only of one modality."""
    embeddings, records, meta = load_index(output)
    model = model or OmniVecModel.from_pretrained(meta["model"])
    if Path(query).exists():
        items = collect_inputs([query])[:1]
    else:
        items = [{"text": query, "modality": "text", "path": "<query>"}]
    q, errors = embed_items(model, items, batch_size=1, num_workers=0)
    if errors:
        raise DataError(errors[0])
    ok = np.array([r["status"] == "ok" and (modality is None or r["modality"] == modality) for r in records])
    scores = np.where(ok, embeddings @ q[0], -np.inf)
    top = np.argsort(-scores)[:k]
    return [{**records[i], "score": float(scores[i])} for i in top if np.isfinite(scores[i])]
