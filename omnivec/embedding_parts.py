"""The file formats of an embedding store's parts (`omnivec embed --format`), a registry by name:
each a writer of embeddings [n, D] (rows `start` onwards) and a reader back to an array."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ConfigError


def write_npy(path: Path, emb: np.ndarray, start: int) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the ".tmp" name
        np.save(f, emb)


def read_npy(path: Path) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="r")  # np.load's mmap, naming a file that is not .npy


def write_safetensors(path: Path, emb: np.ndarray, start: int) -> None:
    from safetensors.numpy import save_file

    save_file({"embeddings": emb}, str(path))


def read_safetensors(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path))["embeddings"]


def write_parquet(path: Path, emb: np.ndarray, start: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    pq.write_table(pa.table({"index": np.arange(start, start + len(emb)), "embedding": column}), path)


def read_parquet(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


PART_FORMATS: dict[str, tuple[Callable, Callable]] = {
    "npy": (write_npy, read_npy),
    "safetensors": (write_safetensors, read_safetensors),
    "parquet": (write_parquet, read_parquet),
}


def check_part_format(fmt: str) -> None:
    if fmt not in PART_FORMATS:
        raise ConfigError(f"--format: expected one of {list(PART_FORMATS)}, got {fmt!r}")
