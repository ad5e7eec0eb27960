"""The file formats of an embedding store's parts (`omnivec embed --format`), a registry by name:
each a writer of embeddings [n, D] (rows `start` onwards), a reader back to an array, and a reader
of the shape alone (a header or footer, which a truncated file fails to give)."""

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


def shape_npy(path: Path) -> tuple[int, ...]:
    return read_npy(path).shape  # (the memory map checks the file holds what its header says)


def write_safetensors(path: Path, emb: np.ndarray, start: int) -> None:
    from safetensors.numpy import save_file

    save_file({"embeddings": emb}, str(path))


def read_safetensors(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path))["embeddings"]


def shape_safetensors(path: Path) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:  # (checks the header against the file's size)
        return tuple(f.get_slice("embeddings").get_shape())


def write_parquet(path: Path, emb: np.ndarray, start: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    pq.write_table(pa.table({"index": np.arange(start, start + len(emb)), "embedding": column}), path)


def read_parquet(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


def shape_parquet(path: Path) -> tuple[int, ...]:
    import pyarrow.parquet as pq

    part = pq.ParquetFile(path)  # its footer: the end of the file
    return part.metadata.num_rows, part.schema_arrow.field("embedding").type.list_size


PART_FORMATS: dict[str, tuple[Callable, Callable, Callable]] = {
    "npy": (write_npy, read_npy, shape_npy),
    "safetensors": (write_safetensors, read_safetensors, shape_safetensors),
    "parquet": (write_parquet, read_parquet, shape_parquet),
}


def check_part_format(fmt: str) -> None:
    if fmt not in PART_FORMATS:
        raise ConfigError(f"--format: expected one of {list(PART_FORMATS)}, got {fmt!r}")
