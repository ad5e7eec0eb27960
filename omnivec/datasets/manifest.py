"""Dataset descriptions: a manifest (JSONL or CSV) or a class-per-folder tree, read into a `TaskData`.

Manifest columns: `path` (relative to the manifest's folder) or `text`; optional `label`
(single-label), `labels` (multi-label: a JSON list, or `a;b` in CSV), `summary` (summarization),
`split` (train / val / test) and `modality` (overrides the one inferred from the extension).
Without a manifest, `root/<class>/<file>` (torchvision ImageFolder style) or
`root/<split>/<class>/<file>` is read, the class and split taken from the folder names.
Shard specs (datasets/shards.py) and `hf:` Hugging Face datasets (datasets/hf.py) are streamed:
their `TaskData` holds a `Stream` of shards instead of rows.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .readers import known_suffixes, modality_of

if TYPE_CHECKING:
    from .streams import Stream

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
SPLITS = ("train", "val", "test")
TARGETS = ("label", "labels", "summary")


@dataclass
class TaskData:
    """One dataset: its rows, modality, target kind and classes."""

    name: str
    source: Path  # the manifest file or the root folder
    modality: str
    rows: list[dict[str, Any]]  # path (Path) or text, target, split, where (file:line for errors)
    target: str | None = None  # "label", "labels", "summary" or None
    classes: list[str] = field(default_factory=list)
    stream: Stream | None = None  # streamed datasets (shards, hf:): their shards; `rows` is empty

    def has_split(self, name: str) -> bool:
        """Whether split `name` holds samples (shards, for a stream)."""
        return bool(self.stream.split(name) if self.stream is not None else self.split(name))

    def split(self, name: str | None) -> list[dict[str, Any]]:
        """The rows of split `name` (all rows when `name` is None)."""
        return self.rows if name is None else [r for r in self.rows if r.get("split") == name]

    def counts(self) -> dict[str, tuple[int, Counter]]:
        """{split: (samples, Counter(class -> samples))} (split "-" for rows without one)."""
        out: dict[str, tuple[int, Counter]] = {}
        for row in self.rows:
            n, counter = out.get(row.get("split") or "-", (0, Counter()))
            counter.update(row.get("labels") or ([row["label"]] if "label" in row else []))
            out[row.get("split") or "-"] = (n + 1, counter)
        return out


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    return list(iter_rows(path))


def iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, raw row) of a manifest, read line by line (a manifest of any length in little memory)."""
    try:
        yield from _parse_rows(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def _parse_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e})") from e
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{i}", row
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from ((f"{path}:{i}", dict(row)) for i, row in enumerate(csv.DictReader(f), 2))
    else:
        raise DataError(f"{path}: expected a .jsonl or .csv manifest")


def _row(where: str, raw: dict, root: Path, allow_outside_root: bool) -> dict[str, Any]:
    if ("path" in raw) == ("text" in raw):
        raise DataError(f"{where}: expected exactly one of the columns 'path' or 'text', got {sorted(raw)}")
    row: dict[str, Any] = {"where": where}
    if "path" in raw:
        path = (root / str(raw["path"])).resolve()
        if not allow_outside_root and not path.is_relative_to(root.resolve()):
            raise DataError(f"{where}: path {raw['path']!r} leaves the dataset folder {root}")
        row["path"] = path
    else:
        row["text"] = str(raw["text"])
    if raw.get("split"):
        if raw["split"] not in SPLITS:
            raise DataError(f"{where}: split {raw['split']!r}: expected one of {list(SPLITS)}")
        row["split"] = raw["split"]
    if raw.get("label") not in (None, ""):
        row["label"] = str(raw["label"])
    if raw.get("labels") not in (None, ""):
        labels = raw["labels"]
        labels = [s for s in labels.replace("|", ";").split(";") if s] if isinstance(labels, str) else labels
        if not isinstance(labels, list) or not labels:
            raise DataError(f"{where}: labels: expected a non-empty list, got {raw['labels']!r}")
        row["labels"] = [str(x) for x in labels]
    if raw.get("summary") not in (None, ""):
        row["summary"] = str(raw["summary"])
    if raw.get("modality"):
        row["modality"] = raw["modality"]
    return row


def _task_from_rows(name: str, source: Path, rows: list[dict[str, Any]]) -> TaskData:
    if not rows:
        raise DataError(f"{source}: no samples")
    modalities = Counter(r.get("modality") or ("text" if "text" in r else modality_of(r["path"])) for r in rows)
    if len(modalities) > 1:
        raise DataError(f"{source}: one modality per dataset expected, found {dict(modalities)}")
    modality = next(iter(modalities))
    kinds = {k for r in rows for k in TARGETS if k in r}
    if len(kinds) > 1:
        raise DataError(f"{source}: one target column per dataset expected, found {sorted(kinds)}")
    target = next(iter(kinds), None)
    if target is not None:
        missing = next((r for r in rows if target not in r), None)
        if missing is not None:
            raise DataError(f"{missing['where']}: missing the {target!r} column that other rows have")
    classes = sorted({c for r in rows for c in (r.get("labels") or [r.get("label")]) if c is not None})
    if target == "summary":
        classes = []
    return TaskData(name=name, source=source, modality=modality, rows=rows, target=target, classes=classes)


def inside(path: Path, root: Path, allow_outside_root: bool) -> Path:
    """`path` resolved (symbolic links followed); `DataError` if it leaves `root` (unless allowed)."""
    resolved = path.resolve()
    if not allow_outside_root and not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{path}: leads outside the dataset folder {root} (to {resolved}): copy the file in")
    return resolved


def _folder_rows(root: Path, allow_outside_root: bool = False) -> list[dict[str, Any]]:
    """root/<class>/<file> or root/<split>/<class>/<file>."""
    known = known_suffixes()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_layout = bool(subdirs) and all(p.name in SPLITS for p in subdirs)
    rows = []
    for split_dir in subdirs if split_layout else [root]:
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in known:
                    row = {"path": inside(path, root, allow_outside_root), "label": class_dir.name, "where": str(path)}
                    if split_layout:
                        row["split"] = split_dir.name
                    rows.append(row)
    return rows


def streamed_tasks(spec: str | Path) -> list[TaskData] | None:
    """The datasets of a `hf:` or shard spec (one per modality), or None for other paths."""
    if str(spec).startswith("hf:"):
        from .hf import load_hf_task

        return [load_hf_task(str(spec))]
    from .shards import is_shard_spec, load_shard_tasks

    return load_shard_tasks(spec) if is_shard_spec(spec) else None


def load_task(path: str | Path, allow_outside_root: bool = False) -> TaskData:
    """Read one dataset: a manifest file, a folder holding `manifest.jsonl`/`.csv`, a class-per-folder
    tree, or a streamed dataset of one modality (a shard spec, `hf:NAME[:split]`)."""
    streamed = streamed_tasks(path)
    if streamed is not None:
        if len(streamed) > 1:
            raise DataError(f"{path}: holds {', '.join(t.modality for t in streamed)} samples; one modality expected")
        return streamed[0]
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if path.is_dir():
        manifest = next((path / n for n in MANIFEST_NAMES if (path / n).is_file()), None)
        if manifest is None:
            return _task_from_rows(path.name, path, _folder_rows(path, allow_outside_root))
        path = manifest
    rows = [_row(where, raw, path.parent, allow_outside_root) for where, raw in _read_rows(path)]
    return _task_from_rows(path.parent.name, path, rows)


def find_tasks(path: str | Path, allow_outside_root: bool = False) -> list[TaskData]:
    """All datasets under `path`: `path` itself if it is one, else every sub-folder with a manifest;
    a shard spec gives one dataset per modality it holds."""
    streamed = streamed_tasks(path)
    if streamed is not None:
        return streamed
    path = Path(path)
    if path.is_file() or any((path / n).is_file() for n in MANIFEST_NAMES):
        return [load_task(path, allow_outside_root)]
    manifests = sorted(p for n in MANIFEST_NAMES for p in path.rglob(n))
    if manifests:
        return [load_task(m, allow_outside_root) for m in manifests]
    return [load_task(path, allow_outside_root)]
