"""Tar shards read as a stream, member by member: consecutive members `KEY.SUFFIX` grouped into
samples (as webdataset groups them), every member's size checked against a bound before it is read,
so that a huge member (a 3 GB file compressed to a few MB in a `.tar.gz`) is named, not loaded.

The bound is `OMNIVEC_MAX_MEMBER_SIZE` (default 512MB), an environment variable so that every
reader of shards (training workers, `data check`, `embed`) sees it.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlparse

from webdataset.gopen import gopen, gopen_schemes

from ..errors import ConfigError, DataError

MAX_MEMBER_SETTING = "OMNIVEC_MAX_MEMBER_SIZE"
MAX_MEMBER_DEFAULT = "512MB"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
CHUNK = 1 << 20
MEMBER = re.compile(r"((?:.*/)?[^./]+)\.([^/]*)")  # KEY.SUFFIX, the key up to its first dot


def parse_size(text: str | int, what: str = "shard size") -> int:
    """ "500MB", "2GB", "1e6" or a number of bytes -> bytes; `ConfigError` naming `what`."""
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?b?)\s*", str(text).lower())
    try:
        size = int(float(m[1]) * UNITS[m[2]]) if m else 0
    except (ValueError, OverflowError):  # "1e400" is infinite
        size = 0
    if size <= 0:
        raise ConfigError(f"{what}: expected a positive size such as 500MB or 2GB, got {text!r}")
    return size


def max_member_size() -> int:
    """The largest shard member read, in bytes: `$OMNIVEC_MAX_MEMBER_SIZE`, else 512MB."""
    return parse_size(os.environ.get(MAX_MEMBER_SETTING, MAX_MEMBER_DEFAULT), MAX_MEMBER_SETTING)


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def open_url(url: str) -> IO[bytes]:
    """A readable binary stream: webdataset's `gopen` (files, pipe:, http, gs, ...), or fsspec for
    the other schemes (s3://, az://, ...)."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in gopen_schemes:
        return gopen(url)
    import fsspec

    return fsspec.open(url, "rb").open()


def tar_samples(stream: IO[bytes], url: str, limit: int) -> Iterator[dict[str, Any]]:
    """The samples of a tar stream (plain or compressed), in order: `{"__key__": KEY, SUFFIX: bytes,
    ..., "__oversized__": {SUFFIX: size}}`; a member over `limit` bytes is passed over unread (the
    stream is read on in blocks) and listed in `__oversized__`. Members named `__*` are skipped."""
    sample: dict[str, Any] | None = None
    tar = tarfile.open(fileobj=stream, mode="r|*")
    for info in tar:
        match = MEMBER.fullmatch(info.name)
        if not info.isreg() or match is None or os.path.basename(info.name).startswith("__"):
            continue
        key, suffix = match[1], match[2].lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__oversized__": {}}
        if suffix in sample or suffix in sample["__oversized__"]:
            raise DataError(f"{url}:{info.name}: a second member of this name in the shard")
        member = tar.extractfile(info)
        if info.size > limit:
            sample["__oversized__"][suffix] = info.size
            while member.read(CHUNK):  # passed over in chunks (tarfile's own skipping is slow when compressed)
                pass
        else:
            sample[suffix] = member.read()
        tar.members = []  # a stream's members are not looked up again: hold none
    if sample is not None:
        yield sample


def oversized(where: str, sizes: dict[str, int]) -> str:
    """The error for sample `where` whose members `sizes` ({suffix: size}) were over the bound."""
    suffix, size = next(iter(sizes.items()))
    return (
        f"{where}.{suffix}: a member of {megabytes(size)}, over the {megabytes(max_member_size())} a shard member may "
        f"hold (not read; raise the bound with the environment variable {MAX_MEMBER_SETTING}, e.g. =4GB)"
    )
