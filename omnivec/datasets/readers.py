"""Files -> samples: which modality a file belongs to, decoding it (each modality's `read`), and
the one path every consumer (datasets, embedding, data check) loads a sample through.

Every reader raises `DataError` naming the file when it is unreadable, empty, wrongly shaped or
holds NaN/Inf values, so that `omnivec data check` and training report the file, not a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..files import Blob
from ..registry import MODALITIES


def extensions() -> dict[str, tuple[str, ...]]:
    """{modality: the file suffixes it reads}, from the registered modalities."""
    return {name: MODALITIES.get(name).suffixes for name in MODALITIES.names()}


def known_suffixes() -> set[str]:
    return {s for suffixes in extensions().values() for s in suffixes}


def modality_of(path: str | Path | Blob) -> str:
    """The modality a file (or a folder, such as a video's frames, or a `Blob`) belongs to."""
    path = path if isinstance(path, Blob) else Path(path)
    for name in MODALITIES.names():
        try:
            if MODALITIES.get(name).claims(path):
                return name
        except OSError as e:  # a folder check on a name the file system refuses (too long, no permission)
            raise DataError(f"{path}: cannot be looked up ({e.strerror or e})") from e
    raise DataError(
        f"{path}: unknown file type {path.suffix.lower()!r}; expected one of "
        + ", ".join(f"{m} {list(s)}" for m, s in extensions().items() if s)
    )


def read_file(path: str | Path | Blob, modality: str | None = None, verify: bool = False) -> Any:
    """Decode `path` (a file, or a `Blob` of a file's bytes) as `modality` (inferred from the file
    when not given); `verify`: decode it completely and return nothing (data check: a lazily read
    video is decoded frame by frame)."""
    path = path if isinstance(path, Blob) else Path(path)
    if isinstance(path, Blob):
        if not path.data:
            raise DataError(f"{path}: empty file")
    elif not path.exists():
        raise DataError(f"{path}: file not found")
    elif path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    modality = modality or modality_of(path)
    with decoding(str(path), modality):
        cls = MODALITIES.get(modality)
        return cls.verify(path) if verify else cls.read(path)


@contextmanager
def decoding(where: str, modality: str) -> Iterator[None]:
    """A decoder failing in a way its reader did not foresee still names the file: any error but a
    `DataError` or `MemoryError` inside becomes a `DataError` naming `where`."""
    try:
        yield
    except (DataError, MemoryError):
        raise
    except Exception as e:
        raise DataError(f"{where}: cannot read this {modality} file ({type(e).__name__}: {e})") from e


def load_sample(
    item: Mapping[str, Any], modality: str, transform: Callable[..., Any] | None = None, verify: bool = False
) -> Any:
    """A manifest row, shard sample or embedding item (`path`: a file or `Blob`, or the modality's
    inline column such as `text`; `where` names it in errors) -> the raw sample, or the model-ready
    one through `transform`; `DataError` names the file. `verify`: only check that the sample
    decodes completely (`omnivec data check`)."""
    cls, where = MODALITIES.get(modality), sample_where(item)
    if cls.inline_column and cls.inline_column in item:
        raw = cls.read_inline(item[cls.inline_column], where)
    else:
        raw = read_file(item["path"], modality, verify)
    return transform_sample(raw, where, modality, transform)


def materialize(raw: Any, where: str, modality: str) -> Any:
    """`raw` with all its data decoded (its modality's `materialize`: what a sample cache keeps); a
    failure is a `DataError` naming `where`."""
    with decoding(where, modality):
        return MODALITIES.get(modality).materialize(raw)


def sample_where(item: Mapping[str, Any]) -> str:
    """What names a sample in errors: its file, or its `where` (an inline value's row)."""
    return str(item["path"] if "path" in item else item.get("where"))


def transform_sample(raw: Any, where: str, modality: str, transform: Callable[..., Any] | None) -> Any:
    """A raw sample (as `load_sample` reads it) -> the model-ready one through `transform`; a failure or a
    NaN / Inf result is a `DataError` naming `where`."""
    if transform is None:
        return raw
    try:
        x = transform(*raw) if isinstance(raw, tuple) else transform(raw)
    except DataError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise DataError(f"{where}: cannot transform this {modality} sample ({e})") from e
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
        raise DataError(f"{where}: the transformed {modality} sample holds NaN or Inf")
    return x
