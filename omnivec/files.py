"""A sample's bytes, wherever they come from: a file on disk, or encoded bytes held in memory (a
shard member, a dataset cell) as a `Blob` that the same readers take as they take a path; and
`nbytes`, the memory a decoded sample holds."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch


@dataclass(frozen=True)
class Blob:
    """A file's encoded bytes held in memory (a shard member, a dataset cell), read by the same
    readers as files: it answers the `Path` methods they use, and `opened` / `local_path` hand
    libraries a file object or, for those that only take a path, a temporary copy."""

    name: str  # what errors name, e.g. "shards/train-image-000003.tar:00000042.png"
    data: bytes

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def __str__(self) -> str:
        return self.name

    def is_dir(self) -> bool:
        return False

    def open(self, mode: str = "rb") -> BinaryIO:
        return BlobFile(self.name, self.data)

    def read_bytes(self) -> bytes:
        return self.data

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)


class BlobFile(io.BytesIO):
    """A `Blob`'s bytes as a file object that decoders' errors name by the blob's file name (such as
    `train-image-000003.tar:00000042.png`), not as `<_io.BytesIO object at 0x...>`."""

    def __init__(self, name: str, data: bytes):
        super().__init__(data)
        self.blob_name = name

    def __repr__(self) -> str:
        return repr(Path(self.blob_name).name)


def opened(path: Path | Blob) -> str | BinaryIO:
    """What a decoding library opens: the path as a string, or a `Blob`'s bytes as a file object."""
    return path.open() if isinstance(path, Blob) else str(path)


@contextmanager
def local_path(path: Path | Blob) -> Iterator[Path]:
    """`path` itself, or a `Blob` copied to a temporary file of the same suffix (for libraries
    that read only named files, such as open3d), removed afterwards."""
    if not isinstance(path, Blob):
        yield Path(path)
        return
    fd, name = tempfile.mkstemp(suffix=path.suffix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(path.data)
        yield Path(name)
    finally:
        os.unlink(name)


def nbytes(x: Any) -> int:
    """About the bytes a decoded sample holds: tensors, arrays, PIL images, texts and tuples of them."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, tuple | list):
        return sum(nbytes(v) for v in x)
    if hasattr(x, "getbands"):  # a PIL image: 1 byte a band, 4 for 32-bit modes (I, F), 2 for I;16
        depth = 4 if x.mode in ("I", "F") else 2 if x.mode.startswith("I;16") else 1
        return x.width * x.height * len(x.getbands()) * depth
    return sys.getsizeof(x)
