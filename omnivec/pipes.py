"""`pipe:` shard specs run a shell command (webdataset's `gopen`), so they are refused unless the
command line opted in (`--allow-pipe`, within `pipes_allowed(True)`): no config key can allow them,
so a config file from elsewhere cannot run commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import urlparse

from .errors import DataError

ALLOWED = ContextVar("omnivec_pipes_allowed", default=False)


@contextmanager
def pipes_allowed(allowed: bool = True) -> Iterator[None]:
    """Within this block, shard specs may be `pipe:` commands when `allowed`."""
    token = ALLOWED.set(allowed)
    try:
        yield
    finally:
        ALLOWED.reset(token)


def refuse_pipes(urls: list[str], spec: str) -> None:
    """`DataError` naming the first `pipe:` command among the URLs of `spec`, unless allowed."""
    pipe = next((u for u in urls if urlparse(u).scheme == "pipe"), None)
    if pipe is not None and not ALLOWED.get():
        shown = spec if pipe == spec else f"{spec}: {pipe!r}"
        raise DataError(
            f"{shown}: a pipe: spec runs a shell command; to run it, add --allow-pipe to the omnivec command "
            "line (a config file cannot allow it)"
        )
