"""The kinds of FAISS index `omnivec index` builds (flat, ivf-pq, hnsw): how each is made, its
settings' defaults for a store's size, and its search-time parameters (omnivec/index.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass
class IndexKind:
    """One kind of index: its settings' defaults for a store of `n` vectors of width `dim`, its
    `faiss.index_factory` string, whether it trains, its search parameters (with a selector);
    `finish` checks the settings and fills those that follow from others, `configure` sets what the
    factory string cannot say."""

    defaults: Callable[[int, int], dict[str, int]]
    factory: Callable[[Mapping[str, int]], str]
    trains: bool
    search_params: Callable[[Any, Mapping[str, int], Any], Any]
    finish: Callable[[int, int, dict[str, int], set[str]], None] = lambda n, dim, s, given: None
    configure: Callable[[Any, Any, Mapping[str, int]], None] = lambda faiss, index, s: None


def ivf_pq_defaults(n: int, dim: int) -> dict[str, int]:
    """nlist: 4 sqrt(n) rounded to a power of two (FAISS's guideline), at most n / 39 (its least
    training points per cell); m: the largest divisor of dim up to dim / 4 (4-value sub-vectors);
    nbits: 8 (256 codes per sub-vector) when there are 39 * 256 training points, else fewer; nprobe:
    nlist / 128, at least 8 (or nlist): at nprobe 1 the 540-row sample store's recall@10 was 0.48-0.65,
    at 16 0.91-0.97 (`ivf_pq_finish`); rerank: 8 (k * 8 candidates re-ranked exactly); train_size: 50 points
    per cell and 39 per PQ code, at most n (`ivf_pq_finish`). On 1M clustered 128-d vectors
    (bench/index_recall.py) the PQ codes alone reach recall@10 0.55 whatever nprobe; re-ranking 4x
    gives 0.91, 8x 0.98; nprobe beyond 8 of 4096 cells gained nothing there (data less clustered needs more)."""
    nlist = max(1, min(2 ** round(math.log2(max(4 * math.sqrt(n), 1))), n // 39))
    m = max(d for d in range(1, max(dim // 4, 1) + 1) if dim % d == 0)
    nbits = int(min(8, max(1, math.floor(math.log2(max(n // 39, 2))))))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": 0, "rerank": 8, "train_size": 0}


def ivf_pq_finish(n: int, dim: int, s: dict[str, int], given: set[str]) -> None:
    if dim % s["m"]:
        raise ConfigError(f"m: expected a divisor of the embedding width {dim}, got {s['m']}")
    if s["nbits"] > 16:
        raise ConfigError(f"nbits: expected at most 16, got {s['nbits']}")
    if "nprobe" not in given:
        s["nprobe"] = min(s["nlist"], max(8, s["nlist"] // 128))
    if "train_size" not in given:
        s["train_size"] = min(n, max(50 * s["nlist"], 39 * 2 ** s["nbits"]))


def params_with(faiss: Any, cls: str, sel: Any, **values: int) -> Any:
    params = getattr(faiss, cls)()
    for name, value in values.items():
        setattr(params, name, value)
    if sel is not None:
        params.sel = sel
    return params


def set_ef_construction(faiss: Any, index: Any, s: Mapping[str, int]) -> None:
    faiss.downcast_index(index.index).hnsw.efConstruction = s["ef_construction"]


KINDS: dict[str, IndexKind] = {
    "flat": IndexKind(
        defaults=lambda n, dim: {},
        factory=lambda s: "IDMap,Flat",
        trains=False,
        search_params=lambda faiss, s, sel: params_with(faiss, "SearchParameters", sel),
    ),
    "ivf-pq": IndexKind(
        defaults=ivf_pq_defaults,
        factory=lambda s: f"IVF{s['nlist']},PQ{s['m']}x{s['nbits']}",
        trains=True,
        search_params=lambda faiss, s, sel: params_with(faiss, "SearchParametersIVF", sel, nprobe=s["nprobe"]),
        finish=ivf_pq_finish,
    ),
    "hnsw": IndexKind(
        defaults=lambda n, dim: {"M": 32, "ef_construction": 80, "ef_search": 128},
        factory=lambda s: f"IDMap,HNSW{s['M']}",
        trains=False,
        search_params=lambda faiss, s, sel: params_with(faiss, "SearchParametersHNSW", sel, efSearch=s["ef_search"]),
        configure=set_ef_construction,
    ),
}


def resolve_settings(kind: str, n: int, dim: int, overrides: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The kind's defaults for `n` vectors of width `dim`, with `overrides` (positive ints; a
    `ConfigError` naming an unknown key or a bad value)."""
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    settings = KINDS[kind].defaults(n, dim)
    for key, value in (overrides or {}).items():
        if key not in settings:
            raise ConfigError(f"{key}: not a {kind} setting; expected one of {sorted(settings) or '(none)'}")
        if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
            raise ConfigError(f"{key}: expected a positive int, got {value!r}")
        settings[key] = int(value)
    KINDS[kind].finish(n, dim, settings, set(overrides or {}))
    return settings
