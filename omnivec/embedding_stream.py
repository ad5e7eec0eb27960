"""`omnivec embed`: stream any number of samples through the model into an embedding store
(embedding_store.py), part by part, in bounded memory; resumable and split over processes.

The rows are numbered in input order (embedding_inputs.py counts every input first, without
decoding it) and cut into parts of `part_size` rows. The parts not yet on disk are split into
contiguous runs: process `r` of `n` takes the `r`-th run, and its DataLoader worker `w` the `w`-th
run of those. A worker reads its parts' items in order (seeking to a part through its unit, never
decoding what it passes over) and yields batches of one modality, formed inside each part, so a
part's embeddings do not depend on which process or worker made them, nor on the parts around it:
a resumed or multi-process run writes the same bytes as one uninterrupted process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from .datasets.dataset import to_device
from .datasets.loaders import collate_for
from .datasets.readers import load_sample
from .datasets.records import target_kinds
from .embedding_inputs import Unit, check_options, check_output, input_spec, items_from, plan_inputs
from .embedding_parts import check_part_format
from .embedding_store import StoreWriter, store_header
from .errors import DataError, InputError
from .files import Blob
from .model import OmniVecModel
from .pooling import check_pool, layers_name, load_pooler
from .saved_model import model_digest

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ERRORS_LISTED = 20  # bad samples named in the error that stops a run without --skip-bad


def name_of(item: dict[str, Any]) -> str:
    """What errors and records call an item: its file, or where it came from (manifest line, shard member)."""
    return str(item["where"] if "where" in item else item["path"])


def load_item(item: dict[str, Any], transform: Any) -> dict[str, Any]:
    """An item -> `{"input": model-ready sample}` or `{"error": message naming it}`."""
    try:
        return {"input": load_sample(item, item["modality"], transform)}
    except DataError as e:
        return {"error": str(e) if str(e).startswith(name_of(item)) else f"{name_of(item)}: {e}"}


def record_of(index: int, item: dict[str, Any]) -> dict[str, Any]:
    """A store record (status added when embedded): the global row, path or where, modality, label(s)."""
    file = "path" in item and not isinstance(item["path"], Blob)
    place = {"path": item["path"]} if file else {"where": item["where"]}
    labels = {k: item[k] for k, kind in target_kinds().items() if kind.has_classes and k in item}
    return {"index": index, **place, "modality": item["modality"], **labels}


def contiguous(parts: Sequence[int], k: int, n: int) -> list[int]:
    """The `k`-th of `n` contiguous runs of `parts`."""
    return list(parts[k * len(parts) // n : (k + 1) * len(parts) // n])


class PartsDataset(IterableDataset):
    """Batches of the rows of `parts`: `{"part", "modality", "records", "rows", "input", "errors"}`
    where `rows` are the part-local rows of the samples in `input` and `errors` {row: message}."""

    def __init__(
        self,
        units: Sequence[Unit],
        parts: Sequence[int],
        part_size: int,
        count: int,
        model: OmniVecModel,
        batch_size: int,
        skip_bad: bool,
    ):
        self.units, self.parts, self.part_size, self.count = list(units), list(parts), part_size, count
        self.batch_size, self.skip_bad = batch_size, skip_bad
        self.transforms = model.transforms(train=False)
        self.collates = {m: collate_for(model, m) for m in self.transforms}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        items: Iterator[dict[str, Any]] = iter(())  # set at the first part (at != start)
        at: int | None = None
        for p in contiguous(self.parts, info.id if info else 0, info.num_workers if info else 1):
            start, stop = p * self.part_size, min((p + 1) * self.part_size, self.count)
            if at != start:  # the next part of a run continues where the last one stopped
                items = items_from(self.units, start, self.skip_bad)
            pending: dict[str | None, list[tuple[int, dict[str, Any]]]] = {}  # None: rows failed before loading
            for row in range(stop - start):
                item = next(items)
                modality = item["modality"]
                if "error" in item or modality not in self.transforms:
                    item, modality = {"error": f"{name_of(item)}: the model has no {modality} encoder", **item}, None
                pending.setdefault(modality, []).append((row, item))
                if len(pending[modality]) == self.batch_size:
                    yield self.batch(p, modality, pending.pop(modality))
            for modality, rows in pending.items():
                yield self.batch(p, modality, rows)
            at = stop

    def batch(self, p: int, modality: str | None, rows: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """The rows `rows` of part `p` loaded and collated (`modality` None: rows that failed already)."""
        start = p * self.part_size
        out: dict[str, Any] = {
            "part": p,
            "modality": modality,
            "records": [record_of(start + r, item) for r, item in rows],
            "rows": torch.zeros(0, dtype=torch.long),
            "input": None,
            "errors": {},
        }
        if modality is None:
            return {**out, "errors": {r: item["error"] for r, item in rows}}
        samples = [{"index": r, "target": None, **load_item(item, self.transforms[modality])} for r, item in rows]
        collated = self.collates[modality](samples)
        out.update(
            rows=collated["index"],
            input=collated["input"],
            errors=dict(zip(collated["skipped_index"], collated["skipped"])),
        )
        return out


class PartBuffer:
    """One part being filled: its embeddings [n, D], records and errors."""

    def __init__(self, start: int, count: int, dim: int):
        self.start, self.count = start, count
        self.emb = np.zeros((count, dim), np.float32)  # [n, D]; a failed row stays zero
        self.records: list[dict[str, Any] | None] = [None] * count
        self.errors: dict[int, str] = {}
        self.filled = 0

    def add(self, records: list[dict[str, Any]], errors: dict[int, str]) -> None:
        for record in records:
            row = record["index"] - self.start
            self.records[row] = {**record, "status": f"failed: {errors[row]}" if row in errors else "ok"}
        self.errors.update(errors)
        self.filled += len(records)


@torch.inference_mode()
def embed_parts(
    model: OmniVecModel,
    units: Sequence[Unit],
    writer: StoreWriter,
    parts: Sequence[int],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    precision: str,
    skip_bad: bool,
    main: bool,
    say=print,
    options: dict[str, Any] | None = None,
) -> list[str]:
    """Embed `parts` and write each as soon as it is whole; returns the errors of the parts left
    unwritten (without `skip_bad`, a part holding a sample that cannot be embedded is not written)."""
    model = model.to(device).eval()
    header = writer.header
    dataset = PartsDataset(units, parts, header["part_size"], header["count"], model, batch_size, skip_bad)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda")
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    open_parts: dict[int, PartBuffer] = {}
    unwritten: list[str] = []
    with tqdm(total=sum(writer.rows(p)[1] for p in parts), desc="embed", unit="sample") as bar:  # closed on errors too
        for batch in loader:
            p = batch["part"]
            part = open_parts.get(p) or open_parts.setdefault(p, PartBuffer(*writer.rows(p), header["dim"]))
            errors = dict(batch["errors"])
            if batch["input"] is not None:
                try:
                    with autocast:
                        x = {batch["modality"]: to_device(batch["input"], device)}
                        emb = model.embed(x, **(options or {}))[batch["modality"]]
                except InputError as e:  # e.g. values that overflow: this batch's samples fail, named
                    byrow = {r["index"] - part.start: r for r in batch["records"]}
                    errors.update({row: f"{name_of(byrow[row])}: {e}" for row in batch["rows"].tolist()})
                else:
                    part.emb[batch["rows"].numpy()] = emb.float().cpu().numpy()  # [b, D]
            part.add(batch["records"], errors)
            bar.update(len(batch["records"]))
            if part.filled < part.count:
                continue
            del open_parts[p]
            name = f"part-{p:05d} (rows {part.start}-{part.start + part.count - 1})"
            if part.errors and not skip_bad:
                unwritten += [part.errors[row] for row in sorted(part.errors)]
                say(f"not written: {name}, {len(part.errors)} samples could not be embedded")
                continue
            writer.write_part(p, part.emb, cast(list[dict[str, Any]], part.records))  # filled: every row set
            if main:
                writer.update()
            say(f"wrote {name}, {len(part.errors)} failed")
    return unwritten


def embed_options(model: OmniVecModel, pool: str, layers: Any, pooler: str | None) -> dict[str, Any]:
    """`model.embed`'s keyword arguments for the vector chosen, checked before any work."""
    loaded = load_pooler(pooler) if pooler else None
    backbone = model.backbone
    check_pool(pool, layers, loaded, backbone.dim, len(backbone.blocks), backbone.num_prefix_tokens)
    return {"pool": pool, "layers": layers, "pooler": loaded}


def embed_command(
    model_path: str,
    inputs: Sequence[str],
    output: str,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | None = None,
    precision: str = "fp32",
    skip_bad: bool = False,
    fmt: str = "npy",
    part_size: int = 10_000,
    overwrite: bool = False,
    pool: str = "mean",
    layers: str = "last",
    pooler: str | None = None,
) -> dict[str, Any] | None:
    """`omnivec embed`: embed every sample of `inputs` into the store `output` (a folder), resuming
    the parts a killed run of the same command left, split over the processes of `torchrun` /
    `accelerate launch`, as `model.embed(pool, layers, pooler)` gives them (`pooler`: the folder of
    an attentive pooler, from `omnivec evaluate --protocol attentive`). Returns the store's metadata
    (main process)."""
    from accelerate import PartialState

    wanted = check_options(batch_size, num_workers, part_size, device)
    check_part_format(fmt)
    output_dir = Path(output)
    state = PartialState(cpu=wanted is not None and wanted.type == "cpu")
    rank = f"[rank {state.process_index}] " if state.num_processes > 1 else ""

    def say(text: str) -> None:
        print(f"{rank}{text}", flush=True)

    if state.is_main_process:
        check_output(output_dir, inputs)  # before any work
    model = OmniVecModel.from_pretrained(model_path)
    options = embed_options(model, pool, layers, pooler)
    plan = plan_inputs(inputs)
    units = [u for _, us in plan for u in us]
    count = sum(u.count for u in units)
    if count == 0:
        raise DataError(
            f"{', '.join(map(str, inputs))}: no samples to embed (no files of known types, or empty manifests)"
        )
    model_name = str(Path(model_path).resolve()) if Path(model_path).is_dir() else str(model_path)
    header = store_header(
        model_name,
        model_digest(model_path),
        model.config.backbone.dim,
        count,
        [{"input": input_spec(s), "samples": sum(u.count for u in us)} for s, us in plan],
        fmt,
        part_size,
        precision=precision,
        batch_size=batch_size,
        skip_bad=skip_bad,
        pool=pool,
        layers=layers_name(layers),
        pooler=str(Path(pooler).resolve()) if pooler else None,
    )
    writer = StoreWriter(output_dir, header)
    if state.is_main_process:
        writer.prepare(overwrite)
    state.wait_for_everyone()
    done = writer.written()
    pending = sorted(set(range(writer.total)) - set(done))
    if done and state.is_main_process:
        say(f"{output}: {len(done)} of {writer.total} parts already written, skipped: {spans(done)}")
    mine = contiguous(pending, state.process_index, state.num_processes)
    device_ = wanted if wanted is not None and state.num_processes == 1 else state.device
    unwritten = embed_parts(
        model, units, writer, mine, batch_size, num_workers, device_, precision, skip_bad, state.is_main_process,
        say, options,
    )  # fmt: skip
    if state.num_processes > 1:  # every process learns every error (the main one reports them)
        gathered: list[Any] = [None] * state.num_processes
        torch.distributed.all_gather_object(gathered, unwritten)
        unwritten = [e for errors in gathered for e in errors]
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    meta = writer.update()
    if unwritten:
        listing = "\n  ".join(unwritten[:ERRORS_LISTED]) + (
            f"\n  ... and {len(unwritten) - ERRORS_LISTED} more" if len(unwritten) > ERRORS_LISTED else ""
        )
        raise DataError(
            f"{len(unwritten)} samples could not be embedded; their parts are not written (the others "
            f"are kept: fix or remove the files and run the same command again, or add --skip-bad to "
            f"record them as failed):\n  {listing}"
        )
    if meta["failed"] == count:
        raise DataError(f"none of the {count} samples could be embedded (each is listed in {output}/part-*.jsonl)")
    say(
        f"embedded {count - meta['failed']} samples ({meta['failed']} failed) with {model_path} -> "
        f"{output}/embeddings.json ({writer.total} parts)"
    )
    return meta


def spans(parts: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, first = [], None
    for i, p in enumerate(parts):
        first = p if first is None else first
        if i + 1 == len(parts) or parts[i + 1] != p + 1:
            out.append(f"{first}-{p}" if p != first else str(p))
            first = None
    return ", ".join(out)
