"""Hugging Face datasets as streamed omnivec datasets: `hf:NAME_OR_DIR[:split][?column=name&...]`.

NAME_OR_DIR is a `save_to_disk` folder, a parquet file or folder of parquet files (split by file
name, as `datasets` does), or a hub name (downloaded by `datasets`; needs a network). The query
maps omnivec columns to the dataset's: the sample column under its modality (`image=img`,
`audio=clip`, `text=sentence`, `point_cloud=file`, ...) and the target (`label=fine_label`,
`labels=tags`, `summary=highlights`); without it, columns named like those are used, and an
Image / Audio feature column is the sample. Cells keep their encoded bytes (features are read with
`decode=False`) and go through the modality's own reader, as files do; a cell holding a path is
read from the dataset's folder (the parquet file's, for one file) and may not leave it (a hub
dataset has no folder) unless `allow_outside_root`. A split `validation` or `dev` is omnivec's
`val`; a dataset without splits is `train`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import DataError
from ..files import Blob
from ..registry import MODALITIES
from ..targets import Target, is_missing
from .manifest import confined
from .records import Shard, Stream, TaskData, target_kinds

ROWS_PER_SHARD = 1000  # rows of one slice read in order (the unit split across processes and workers)
SPLIT_NAMES = {"validation": "val", "valid": "val", "dev": "val"}
FEATURES = {"Image": "image", "Audio": "audio", "Video": "video"}


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """`hf:NAME_OR_DIR[:split][?k=v&...]` -> (name or folder, split or None, {omnivec column: column})."""
    body, _, query = spec[len("hf:") :].partition("?")
    source, split = body, None
    if ":" in body and not Path(body).exists():
        source, split = body.rsplit(":", 1)
    if not source:
        raise DataError(f"{spec}: expected hf:NAME_OR_DIR[:split][?column=name&...]")
    return source, split, dict(parse_qsl(query))


def open_splits(source: str, split: str | None) -> dict[str, Any]:
    """{omnivec split: `datasets.Dataset`} of a saved folder, parquet file(s) or hub name."""
    import datasets

    path = Path(source)
    empty = saved_empty(path) if path.is_dir() else None
    if empty:
        raise DataError(
            f"hf:{source}: {empty} was saved without rows, and `datasets` cannot load an empty save_to_disk "
            f"dataset; save it with rows{' (or leave that split out)' if empty.startswith('split') else ''}"
        )
    try:
        if path.is_dir() and any(
            (path / n).is_file() for n in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset("parquet", data_dir=str(path))
        elif path.suffix == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(path))
        else:
            loaded = datasets.load_dataset(source)
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"hf:{source}: cannot load this dataset ({e})") from e
    found = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if split is not None:
        if split not in found:
            raise DataError(f"hf:{source}: no split {split!r}; it has {sorted(found)}")
        found = {split: found[split]}
    return {SPLIT_NAMES.get(name, name): ds for name, ds in found.items()}


def saved_empty(path: Path) -> str | None:
    """What of a `save_to_disk` folder has no data files ("the dataset" or "split 'NAME'"), if any."""
    for state in [path / "state.json", *sorted(path.glob("*/state.json"))]:
        try:
            files = json.loads(state.read_text()).get("_data_files", [None]) if state.is_file() else [None]
        except (OSError, ValueError, AttributeError):
            continue  # `datasets` names an unreadable state.json itself
        if not files:
            return "the dataset" if state.parent == path else f"split {state.parent.name!r}"
    return None


def pick_columns(spec: str, ds: Any, mapping: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """(modality, sample column, {target kind: column}) from `mapping` or the column names and features."""
    features, names = ds.features, set(ds.column_names)
    for column in mapping.values():
        if column not in names:
            raise DataError(f"{spec}: no column {column!r}; it has {sorted(names)}")
    kinds = target_kinds()
    unknown = sorted(set(mapping) - set(MODALITIES.names()) - set(kinds))
    if unknown:
        raise DataError(f"{spec}: {unknown[0]!r} is neither a modality {MODALITIES.names()} nor a target {list(kinds)}")
    samples = {k: v for k, v in mapping.items() if k in MODALITIES.names()}
    if not samples:
        samples = {m: m for m in MODALITIES.names() if m in names}
    if not samples:
        samples = {FEATURES[type(f).__name__]: c for c, f in features.items() if type(f).__name__ in FEATURES}
    if len(samples) != 1:
        raise DataError(
            f"{spec}: cannot tell which column holds the samples among {sorted(names)}; name it, e.g. ?image=img"
        )
    ((modality, column),) = samples.items()
    targets = {k: mapping.get(k, k) for k in kinds if mapping.get(k, k) in names}
    if len(targets) > 1:
        raise DataError(f"{spec}: one target column per dataset expected, found {targets}")
    return modality, column, targets


def label_names(feature: Any) -> list[str] | None:
    """The class names of a ClassLabel (or a sequence of them), else None."""
    inner = getattr(feature, "feature", feature)
    return list(inner.names) if type(inner).__name__ == "ClassLabel" else None


def load_hf_task(spec: str, allow_outside_root: bool = False) -> TaskData:
    """The dataset of an `hf:` spec, streamed in slices of `ROWS_PER_SHARD` rows; path cells may
    not leave the dataset's folder unless `allow_outside_root`."""
    source, split, mapping = parse_spec(spec)
    splits = open_splits(source, split)
    first = next(iter(splits.values()))
    modality, column, targets = pick_columns(spec, first, mapping)
    target_name, target_column = next(iter(targets.items()), (None, None))
    kind = target_kinds()[target_name] if target_name else None
    names = label_names(first.features[target_column]) if target_column else None
    classes: list[str] = []
    if kind is not None and kind.has_classes:
        assert target_column is not None  # picked with its kind
        where = spec.partition("?")[0]
        classes = names or sorted(
            {
                c
                for split, ds in splits.items()
                for i, value in enumerate(ds[target_column])
                for c in kind.classes(target_cell(value, kind, None, f"{where}[{split}][{i}]", target_column))
            }
        )
    path = Path(source)
    root = path if path.is_dir() else path.parent if path.is_file() else None  # None: a hub dataset
    shards = []
    for name, ds in splits.items():
        feature = type(ds.features[column]).__name__
        if feature in FEATURES:
            ds = ds.cast_column(column, type(ds.features[column])(decode=False))
        split_name = f"{spec.partition('?')[0]}[{name}]"
        read = partial(
            read_rows, split_name, ds, name, modality, column, kind, target_column, names, root, allow_outside_root
        )
        shards += [
            Shard(
                f"{spec.partition('?')[0]}[{name}][{a}:{min(a + ROWS_PER_SHARD, len(ds))}]",
                name,
                min(ROWS_PER_SHARD, len(ds) - a),
                partial(read, a, min(a + ROWS_PER_SHARD, len(ds))),
            )
            for a in range(0, len(ds), ROWS_PER_SHARD)
        ]
    if not shards:
        raise DataError(f"{spec}: no rows")
    return TaskData(
        name=source,
        source=Path(source),
        modality=modality,
        rows=[],
        target=target_name,
        classes=classes,
        stream=Stream(tuple(shards)),
    )


def read_rows(
    where: str,
    ds: Any,
    split: str,
    modality: str,
    column: str,
    kind: Target | None,
    target_column: str | None,
    names: list[str] | None,
    root: Path | None,
    allow_outside_root: bool,
    start: int,
    stop: int,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) of rows `start:stop` of `ds`: the sample cell as a `Blob` (bytes), a file path or
    text, and the target. A row that cannot be used (a path leaving the dataset's folder, an empty
    or out-of-range target) is a row `{"where", "split", "error"}`, as a tar shard's bad sample is:
    the rows after it are still read."""
    for chunk_start in range(start, stop, 100):
        chunk = ds[chunk_start : min(chunk_start + 100, stop)]
        for k, cell in enumerate(chunk[column]):
            i = chunk_start + k
            row: dict[str, Any] = {"where": f"{where}[{i}]", "split": split}
            try:
                row.update(sample_cell(f"{where}[{i}]", cell, modality, root, allow_outside_root))
                if kind is not None:
                    assert target_column is not None  # given with its kind
                    value = chunk[target_column][k]
                    row[kind.column] = target_cell(value, kind, names, f"{where}[{i}]", target_column)
            except DataError as e:
                row = {"where": f"{where}[{i}]", "split": split, "error": str(e)}
            yield str(i), row


def sample_cell(where: str, cell: Any, modality: str, root: Path | None, allow_outside_root: bool) -> dict[str, Any]:
    """A dataset cell -> `{"path": Blob or Path}` (a path under `root`, the dataset's folder, unless
    `allow_outside_root`), or the modality's inline sample (`{"text": str}`)."""
    default_suffix = MODALITIES.get(modality).suffixes[0] if MODALITIES.get(modality).suffixes else ""
    if isinstance(cell, dict) and (cell.get("bytes") or cell.get("path")):
        name = Path(cell.get("path") or "").name
        if cell.get("bytes"):
            return {"path": Blob(f"{where}:{name or 'sample' + default_suffix}", cell["bytes"])}
        cell = cell["path"]
    if isinstance(cell, bytes):
        return {"path": Blob(f"{where}:sample{default_suffix}", cell)}
    inline = MODALITIES.get(modality).inline_column
    if inline and not isinstance(cell, dict):
        return {inline: MODALITIES.get(modality).parse_inline(cell, where)}
    if isinstance(cell, str) and cell:
        if root is not None:
            return {"path": confined(where, "path", cell, root, allow_outside_root)}
        if not allow_outside_root:
            raise DataError(f"{where}: path {cell!r}: a hub dataset has no folder that files on this machine may be in")
        return {"path": Path(cell)}
    raise DataError(f"{where}: no {modality} sample in this cell ({type(cell).__name__})")


def target_cell(value: Any, kind: Target, names: list[str] | None, where: str, column: str) -> Any:
    """A target cell as rows hold it (`kind.parse`), a ClassLabel's ids named by `names`; an empty
    cell (None, NaN, "") is refused, as manifests refuse a row without the target column other
    rows have."""
    if is_missing(value):
        raise DataError(f"{where}: {column} is empty ({value!r}); every row of a dataset with targets needs one")
    if names is not None:
        value = (
            [class_of(v, names, where, column) for v in value]
            if isinstance(value, list)
            else class_of(value, names, where, column)
        )
    return kind.parse(value, where)


def class_of(value: Any, names: list[str], where: str, column: str) -> Any:
    """A ClassLabel id -> its name; -1 (an unlabelled row, as in the hub's test splits) and ids out
    of range are a `DataError` naming the row (other values pass unchanged)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    if value < 0:
        raise DataError(
            f"{where}: {column} is {value} (-1 marks an unlabelled row, as in the hub's test splits); "
            "use a split with labels, or no target column"
        )
    if value >= len(names):
        raise DataError(f"{where}: {column} is {value}, but the column's ClassLabel has {len(names)} classes")
    return names[value]
