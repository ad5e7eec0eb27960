"""The embedding store `omnivec embed` writes: a folder of fixed-size parts and one metadata file.

    OUT/embeddings.json    {"format": "omnivec-embeddings", "version": 2, "model", "dim", "pool", "layers",
                            "normalized", "dtype", "part_format", "part_size", "count", "inputs",
                            "parts": [{"name", "start", "count", "failed", "modalities"}, ...],
                            "complete", "failed", ...}
    OUT/part-00000.npy     [n, D] float32 (.safetensors: tensor "embeddings"; .parquet: columns "index"
                           and "embedding", a fixed-size list)
    OUT/part-00000.jsonl   one record per row: index (the global row), path (a file) or where (a manifest
                           line, shard member or dataset row), modality, status ("ok" or "failed: why"), label

Part `p` holds rows `p * part_size` onwards. Each file is written aside and renamed into place, the
records first and the embeddings last: a part whose two files exist is whole. `embeddings.json` is
rewritten (aside, then renamed) after each part and lists the parts on disk; `complete` is true once
all are there; a rerun drops a part that does not read back whole. A failed row's embedding is zeros.
Reading: `open_store(OUT)` -> `EmbeddingStore` (`parts`, `embeddings(part)` memory-mapped for npy,
`records(part)`, `load()` for small stores); search.py compares and searches stores.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .embedding_parts import PART_FORMATS
from .errors import ConfigError, DataError

FORMAT, VERSION, META = "omnivec-embeddings", 2, "embeddings.json"
# and the model: stores differing in one of these cannot be compared
COMPATIBLE = ("dim", "pool", "layers", "pooler", "normalized")
PART = re.compile(r"part-(\d+)\.")


def part_name(p: int) -> str:
    return f"part-{p:05d}"


def place(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` beside `path`, then rename it into place (a crash never leaves half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading


@dataclass
class EmbeddingStore:
    """An embedding store on disk (`open_store`): its metadata and a reader per part."""

    root: Path
    meta: dict[str, Any]

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self.meta["parts"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def modalities(self) -> dict[str, int]:
        """{modality: rows} over the parts, failed rows included."""
        out: dict[str, int] = {}
        for part in self.parts:
            for m, n in part["modalities"].items():
                out[m] = out.get(m, 0) + n
        return out

    def embeddings(self, part: dict[str, Any]) -> np.ndarray:
        """The part's embeddings [n, D] (memory-mapped for npy); `DataError` naming a broken file."""
        path = self.root / f"{part['name']}.{self.meta['part_format']}"
        try:
            emb = PART_FORMATS[self.meta["part_format"]][1](path)
        except Exception as e:  # numpy, safetensors and pyarrow each raise their own kinds
            raise DataError(f"{path}: not a readable {self.meta['part_format']} part ({type(e).__name__}: {e})") from e
        if emb.shape != (part["count"], self.dim) or emb.dtype != np.float32:
            raise DataError(
                f"{path}: holds {emb.dtype} {list(emb.shape)}, {self.root / META} says float32 "
                f"[{part['count']}, {self.dim}]"
            )
        return emb

    def records(self, part: dict[str, Any]) -> list[dict[str, Any]]:
        """The part's records, one per row."""
        path = self.root / f"{part['name']}.jsonl"
        try:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not readable records ({e})") from e
        if len(records) != part["count"]:
            raise DataError(f"{path}: holds {len(records)} records, {self.root / META} says {part['count']}")
        return records

    def iter_parts(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(part entry, embeddings [n, D]) of every part in order: a store larger than memory, part by part."""
        for part in self.parts:
            yield part, self.embeddings(part)

    def load(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Every embedding [N, D] and record in row order (for small stores: it is all in memory)."""
        if not self.parts:
            return np.zeros((0, self.dim), np.float32), []
        emb = np.concatenate([np.asarray(self.embeddings(p)) for p in self.parts])
        return emb, [r for p in self.parts for r in self.records(p)]


def open_store(root: str | os.PathLike) -> EmbeddingStore:
    """Open the complete store `root` (the folder `omnivec embed --output` wrote); `DataError`
    naming what is missing, broken or unfinished."""
    root = Path(root)
    meta_path = root / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        old = f"; {root}.json is an index of an older omnivec: embed again" if Path(f"{root}.json").is_file() else ""
        raise DataError(f"{root}: not an embedding store (no {META}){old}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: not readable JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{meta_path}: not an embedding store of format {FORMAT} version {VERSION}")
    if meta["part_format"] not in PART_FORMATS:
        raise DataError(f"{meta_path}: part_format {meta['part_format']!r}: expected one of {list(PART_FORMATS)}")
    if not meta["complete"]:
        raise DataError(
            f"{root}: unfinished ({len(meta['parts'])} of {parts_of(meta['count'], meta['part_size'])} "
            "parts written): run the same omnivec embed command again to finish it"
        )
    return EmbeddingStore(root, meta)


# ---------------------------------------------------------------- writing


def parts_of(count: int, part_size: int) -> int:
    return -(-count // part_size)


def store_header(
    model: str,
    digest: str | None,
    dim: int,
    count: int,
    inputs: list[dict[str, Any]],
    part_format: str = "npy",
    part_size: int = 10_000,
    pool: str = "mean",
    layers: str = "last",
    pooler: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The metadata of a store before its parts: what made it. Two runs with equal headers make
    the same store (a rerun resumes; any other header on an existing store is refused). `pool`,
    `layers` and `pooler` (an attentive pooler's folder) are the vector chosen (`OmniVecModel.embed`)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_digest": digest,
        "dim": dim,
        "pool": pool,
        "layers": layers,
        "pooler": pooler,
        "normalized": True,
        "dtype": "float32",
        "part_format": part_format,
        "part_size": part_size,
        "count": count,
        "inputs": inputs,
        "options": options,
    }


class StoreWriter:
    """Writes the parts of a store (any process) and keeps `embeddings.json` current (the main one)."""

    def __init__(self, root: str | os.PathLike, header: dict[str, Any]):
        self.root, self.header = Path(root), header
        self.total = parts_of(header["count"], header["part_size"])
        self.known: dict[int, dict[str, Any]] = {}  # part -> its entry, read back once

    def prepare(self, overwrite: bool = False) -> None:
        """(Main process, before any part.) Start the store, or check that the one in `root` was
        started by the same command (then its parts are kept), or replace it (`overwrite`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / META
        ours = [p for p in self.root.iterdir() if PART.match(p.name.lstrip(".")) or p.name.lstrip(".").startswith(META)]
        ours += [p for p in self.root.glob("faiss-*.index")]  # its FAISS indexes (omnivec index)
        others = sorted(p.name for p in self.root.iterdir() if p not in ours and not p.name.startswith(".omnivec-"))
        if others:
            raise ConfigError(
                f"--output {self.root}: a folder holding other files ({', '.join(others[:3])}), not an "
                "embedding store; choose a new or empty folder"
            )
        if not overwrite and any(not p.name.startswith(".") for p in ours):  # a store (or what is left of one)
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
                differ = [k for k in self.header if old.get(k) != self.header[k]]
            except (OSError, ValueError):
                old, differ = {}, [f"{META} missing or unreadable"]
            if differ:
                what = ", ".join(f"{k}: {old[k]!r} -> {self.header[k]!r}" if k in old else k for k in differ[:3])
                raise ConfigError(
                    f"--output {self.root}: holds embeddings of another command ({what}); --overwrite "
                    "replaces them, or choose another --output"
                )
            self.drop_damaged()
            return
        meta_path.unlink(missing_ok=True)  # first: a store never lists parts that are gone
        for path in ours:
            path.unlink(missing_ok=True)
        self.write_meta([], complete=False)

    def written(self) -> list[int]:
        """The parts on disk (both files renamed into place), in order."""
        names = {p.name for p in self.root.iterdir()}
        return [
            p
            for p in range(self.total)
            if f"{part_name(p)}.{self.header['part_format']}" in names and f"{part_name(p)}.jsonl" in names
        ]

    def drop_damaged(self) -> None:
        """Remove the parts on disk that are not whole (a truncated file, another shape or count of
        records; read from each file's header or footer, and the records' lines), naming each in a
        warning, so that the rerun embeds them again."""
        fmt, damaged = self.header["part_format"], []
        for p in self.written():
            count, path = self.rows(p)[1], self.root / f"{part_name(p)}.{fmt}"
            try:
                shape = tuple(PART_FORMATS[fmt][2](path))
                lines = (self.root / f"{part_name(p)}.jsonl").read_bytes().count(b"\n")
            except Exception as e:  # numpy, safetensors and pyarrow each raise their own kinds
                problem = f"not a readable {fmt} part ({type(e).__name__}: {e})"
            else:
                problem = (
                    ""
                    if shape == (count, self.header["dim"]) and lines == count
                    else (f"holds {list(shape)} embeddings and {lines} records, {count} of each expected")
                )
            if problem:
                warnings.warn(f"{path}: {problem}; embedding part {p} again", stacklevel=2)
                damaged.append(p)
        if damaged:  # first: a store never lists parts that are gone
            self.write_meta([self.entry(p) for p in self.written() if p not in damaged], complete=False)
        for path in (path for p in damaged for path in self.root.glob(f"{part_name(p)}.*")):
            path.unlink()

    def rows(self, p: int) -> tuple[int, int]:
        """(first row, rows) of part `p`."""
        start = p * self.header["part_size"]
        return start, min(self.header["part_size"], self.header["count"] - start)

    def write_part(self, p: int, emb: np.ndarray, records: list[dict[str, Any]]) -> None:
        """Write part `p`: its records, then its embeddings [n, D] (each aside, then renamed)."""
        start, count = self.rows(p)
        assert emb.shape == (count, self.header["dim"]) and len(records) == count, (p, emb.shape, len(records))
        name = part_name(p)
        place(self.root / f"{name}.jsonl", lambda t: t.write_text("".join(json.dumps(r) + "\n" for r in records)))
        write = PART_FORMATS[self.header["part_format"]][0]
        place(self.root / f"{name}.{self.header['part_format']}", lambda t: write(t, np.ascontiguousarray(emb), start))

    def entry(self, p: int) -> dict[str, Any]:
        """Part `p`'s entry in `embeddings.json` (its failures and modalities read from its records once)."""
        if p not in self.known:
            start, count = self.rows(p)
            failed = 0
            modalities: dict[str, int] = {}
            with open(self.root / f"{part_name(p)}.jsonl", encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    failed += r["status"] != "ok"
                    modalities[r["modality"]] = modalities.get(r["modality"], 0) + 1
            self.known[p] = {
                "name": part_name(p),
                "start": start,
                "count": count,
                "failed": failed,
                "modalities": dict(sorted(modalities.items())),
            }
        return self.known[p]

    def update(self) -> dict[str, Any]:
        """(Main process.) Rewrite `embeddings.json` listing the parts on disk; returns it."""
        done = self.written()
        return self.write_meta([self.entry(p) for p in done], complete=len(done) == self.total)

    def write_meta(self, parts: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        meta = {**self.header, "parts": parts, "complete": complete, "failed": sum(p["failed"] for p in parts)}
        place(self.root / META, lambda t: t.write_text(dumps(meta)))
        return meta


def dumps(meta: dict[str, Any]) -> str:
    """`embeddings.json`'s text: one key a line, one part a line."""
    parts = ",\n  ".join(json.dumps(p) for p in meta["parts"])
    text = json.dumps({**meta, "parts": "@parts@"}, indent=1)
    return text.replace('"@parts@"', f"[\n  {parts}\n ]" if parts else "[]") + "\n"


def write_store(
    root: str | os.PathLike, header: dict[str, Any], emb: np.ndarray, records: list[dict[str, Any]]
) -> EmbeddingStore:
    """Write embeddings [N, D] and their records, all in memory, as a complete store (new or replaced)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(root, header)
    writer.prepare(overwrite=True)
    for p in range(writer.total):
        start, count = writer.rows(p)
        writer.write_part(p, emb[start : start + count], records[start : start + count])
    return EmbeddingStore(root, writer.update())
