"""Sharded and Hugging Face datasets: shards hold the original bytes, an epoch streams every sample
once over processes and workers, resuming continues at the same sample, bad shards are named."""

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES

import omnivec
from omnivec import ConfigError, DataError
from omnivec.datasets import find_tasks
from omnivec.datasets.check import check_path, format_report
from omnivec.datasets.dataset import TaskDataset
from omnivec.datasets.loaders import task_loader
from omnivec.datasets.sampler import MultiModalLoader
from omnivec.datasets.shard_writer import parse_size, write_shards


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return omnivec.build_model("omnivec_tiny", **SMALL_MODEL_OVERRIDES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([SAMPLE / "digits", SAMPLE / "acl_summaries"], out, "40kB")  # ~20 digits per shard
    return out


def digits_train(shards: Path):
    return [t for t in find_tasks(shards) if t.modality == "image"]


def epoch_indices(model, tasks, workers: int, rank: int = 0, world_size: int = 1, batch_size: int = 8) -> list[int]:
    loader = task_loader(
        model,
        tasks,
        "train",
        batch_size,
        workers,
        train=True,
        seed=3,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=16,
    )
    return [i for batch in loader for i in batch["index"].tolist()]


def test_shards_hold_the_original_bytes_with_an_index_and_reruns_are_identical(shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    manifest = find_tasks(SAMPLE / "digits")[0]
    assert index["modalities"]["image"] == {
        "samples": len(manifest.rows),
        "target": "label",
        "classes": manifest.classes,
    }
    assert index["modalities"]["text"]["target"] == "summary"
    assert sum(e["samples"] for e in index["shards"] if e["modality"] == "image" and e["split"] == "train") == len(
        manifest.split("train")
    )
    first = next(e for e in index["shards"] if e["file"] == "train-image-000000.tar")
    with tarfile.open(shards / first["file"]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("00000000.json").read())
        png = tar.extractfile("00000000.png").read()
    assert len(names) == 2 * first["samples"]
    row = manifest.split("train")[0]
    assert png == row["path"].read_bytes() and meta["label"] == row["label"] and meta["split"] == "train"
    again = tmp_path / "again"
    write_shards([SAMPLE / "digits", SAMPLE / "acl_summaries"], again, "40kB")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards.glob("*.tar")}
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in again.glob("*.tar")}
    assert (again / "index.json").read_text() == (shards / "index.json").read_text()


def test_parse_size():
    assert parse_size("500MB") == 500 * 10**6 and parse_size("2gb") == 2 * 10**9 and parse_size(4096) == 4096
    with pytest.raises(ConfigError, match="shard size"):
        parse_size("lots")


@pytest.mark.parametrize("workers,world_size", [(0, 1), (2, 1), (2, 2)])
def test_an_epoch_of_shards_holds_the_manifests_samples_once(model, shards, workers, world_size):
    manifest = TaskDataset(find_tasks(SAMPLE / "digits"), "train")
    seen = [
        i for rank in range(world_size) for i in epoch_indices(model, digits_train(shards), workers, rank, world_size)
    ]
    assert len(seen) == len(set(seen)) == len(manifest)
    assert set(seen) == set(range(len(manifest)))  # written in manifest order: the same numbering
    stream = task_loader(model, digits_train(shards), "train", 4, 0, train=False)
    batch = next(iter(stream))
    expected = torch.stack(
        [
            manifest.transform(manifest.load(i))
            if manifest.transform
            else model.transforms(train=False)["image"](manifest.load(i))
            for i in batch["index"].tolist()
        ]
    )
    assert torch.equal(batch["input"], expected)  # the same bytes through the same reader and transform


def test_epochs_differ_and_repeat_with_the_seed(model, shards):
    loader = task_loader(model, digits_train(shards), "train", 8, 2, train=True, seed=3, shuffle_buffer=16)
    mixed = MultiModalLoader({"image": loader})
    n = len(loader.dataset) // 8 + 2  # batches per epoch (partial ones per worker) are fewer than this
    first = [next(mixed)["image"]["index"].tolist() for _ in range(n)]
    assert first != sorted(first)
    again = MultiModalLoader(
        {"image": task_loader(model, digits_train(shards), "train", 8, 2, train=True, seed=3, shuffle_buffer=16)}
    )
    assert [next(again)["image"]["index"].tolist() for _ in range(n)] == first


@pytest.mark.parametrize("where", ["early", "end", "second epoch"])
def test_resume_mid_epoch_continues_at_the_same_sample(model, shards, where):
    def loader():
        return MultiModalLoader(
            {"image": task_loader(model, digits_train(shards), "train", 8, 2, train=True, seed=1, shuffle_buffer=16)}
        )

    per_epoch = len(list(loader().loaders["image"]))  # the workers' last batches are partial: more than n / 8
    stop = {"early": 5, "end": per_epoch - 3, "second epoch": per_epoch + 4}[where]
    full = loader()
    uninterrupted = [next(full)["image"]["index"].tolist() for _ in range(stop + 12)]
    first = loader()
    for _ in range(stop):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint holds it
    resumed = loader()
    resumed.load_state_dict(state)
    assert [next(resumed)["image"]["index"].tolist() for _ in range(12)] == uninterrupted[stop:]


def test_resuming_a_stream_with_other_workers_is_refused(model, shards):
    first = MultiModalLoader({"image": task_loader(model, digits_train(shards), "train", 8, 2, train=True)})
    next(first)
    other = MultiModalLoader({"image": task_loader(model, digits_train(shards), "train", 8, 1, train=True)})
    with pytest.raises(ConfigError, match="2 workers"):
        other.load_state_dict(first.state_dict())


def truncated_copy(shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shards.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    shard = copy / "train-image-000001.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[9].offset_data + 10  # inside the 5th sample's image
    shard.write_bytes(shard.read_bytes()[:cut])
    return copy


def test_a_truncated_shard_is_named(model, shards, tmp_path):
    copy = truncated_copy(shards, tmp_path)
    tasks = [t for t in find_tasks(copy) if t.modality == "image"]
    with pytest.raises(DataError, match="train-image-000001.tar: truncated or corrupt shard after"):
        for _ in task_loader(model, tasks, "train", 8, 0, train=False):
            pass
    loader = task_loader(model, tasks, "train", 8, 0, train=False, skip_bad=True)
    skipped = [s for batch in loader for s in batch["skipped"]]
    assert len(skipped) == 1 and "train-image-000001.tar" in skipped[0]
    reports = check_path(copy)
    text = format_report(reports)
    assert "BAD" in text and "train-image-000001.tar" in text
    assert [r.bad for r in check_path(shards)] == [[], []]


def test_cli_shard_then_check(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "omnivec",
        "data",
        "shard",
        str(SAMPLE / "shapes"),
        "--output",
        str(tmp_path / "s"),
        "--shard-size",
        "100kB",
        "--split",
        "val",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val 30 samples" in result.stdout
    check = subprocess.run(
        [sys.executable, "-m", "omnivec", "data", "check", str(tmp_path / "s")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0 and "1 datasets, 30 samples, 0 bad" in check.stdout


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    """A folder tree would read the shards written inside it as samples on the next run."""
    tree = tmp_path / "tree"
    for label in ("a", "b"):
        (tree / label).mkdir(parents=True)
        (tree / label / "note.txt").write_text(f"a note about {label}")
    for output in (tree / "shards", tree):
        with pytest.raises(DataError, match=rf"--output {output}: is or lies inside the input {tree}"):
            write_shards([tree], output)
    assert sorted(p.name for p in tree.rglob("*")) == ["a", "b", "note.txt", "note.txt"]
    assert write_shards([tree], tmp_path / "shards")["splits"] == {"-": 2}


def digit_images(n: int) -> tuple[list[bytes], list[int]]:
    rows = find_tasks(SAMPLE / "digits")[0].split("train")[:n]
    return [r["path"].read_bytes() for r in rows], [int(r["label"]) for r in rows]


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hugging_face_datasets_stream_through_the_same_readers(model, tmp_path, form):
    import datasets

    images, labels = digit_images(24)
    features = datasets.Features(
        {"img": datasets.Image(), "digit": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b in images], "digit": labels}, features=features
    )
    if form == "save_to_disk":
        datasets.DatasetDict({"train": ds, "validation": ds.select(range(8))}).save_to_disk(str(tmp_path / "hf"))
        spec = f"hf:{tmp_path / 'hf'}?image=img&label=digit"
    else:
        (tmp_path / "pq").mkdir()
        ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
        spec = f"hf:{tmp_path / 'pq' / 'train.parquet'}:train?image=img&label=digit"
    (task,) = find_tasks(spec)
    assert (task.modality, task.target, task.classes) == ("image", "label", [str(i) for i in range(10)])
    assert task.has_split("train") and task.has_split("val") == (form == "save_to_disk")
    batches = list(task_loader(model, [task], "train", 8, 2, train=True))
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(24))
    assert sorted(t for b in batches for t in b["target"].tolist()) == sorted(labels)
    assert format_report(check_path(spec)).endswith(
        "1 datasets, 24 samples, 0 bad" if form == "parquet" else "1 datasets, 32 samples, 0 bad"
    )


def test_an_unknown_hf_column_is_named(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"sentence": ["a b", "c d"]}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(DataError, match="no column 'txt'"):
        find_tasks(f"hf:{tmp_path / 't'}?text=txt")
    (task,) = find_tasks(f"hf:{tmp_path / 't'}?text=sentence")
    assert task.modality == "text" and task.target is None


@pytest.mark.parametrize("column, value", [("label", None), ("label", float("nan")), ("summary", None)])
def test_an_empty_hf_target_cell_is_named_not_made_a_class(tmp_path, column, value):
    import datasets  # (#27 item 8: None became the class "None", NaN "nan", a None summary the text "None")

    good = ["1", "2"] if column == "label" else ["s", "t"]
    cells = [good[0], value, good[1]] if column == "summary" or value is None else [1.0, value, 2.0]
    datasets.Dataset.from_dict({"text": ["a b", "c d", "e f"], column: cells}).save_to_disk(str(tmp_path / "d"))
    spec = f"hf:{tmp_path / 'd'}"
    where = f"{spec}[train][1]: {column} is empty ({value!r})"
    if column == "label":  # the label set is read up front
        with pytest.raises(DataError, match=re.escape(where)):
            find_tasks(spec)
    else:  # summaries are read with their samples: the row is reported bad
        assert where in format_report(check_path(spec))


def pretrain_config(tmp_path: Path, shards: Path, name: str, **kw) -> dict:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(shards)], "text": [str(shards)]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 2,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "max_steps": 10,
        "save_every": 2,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
        "shuffle_buffer": 8,
    }
    return {**data, **kw}


def test_pretraining_and_fine_tuning_read_shards(tmp_path, shards):
    from omnivec.finetune_config import FinetuneConfig
    from omnivec.finetuning import finetune
    from omnivec.parsing import from_dict
    from omnivec.pretraining import PretrainConfig, pretrain

    summary = pretrain(from_dict(PretrainConfig, pretrain_config(tmp_path, shards, "pre", max_steps=3), ""))
    assert summary["steps"] == 3 and set(summary["modalities"]) == {"image", "text"}
    state = json.loads(next((tmp_path / "pre" / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    assert set(state["data"]["streams"]) == {"image", "text"}
    cfg = from_dict(
        FinetuneConfig,
        {
            "model": "omnivec_tiny",
            "model_overrides": SMALL_MODEL_OVERRIDES,
            "init": str(tmp_path / "pre" / "model"),
            "tasks": {"digits": {"head": "classification", "data": [str(shards)], "label_map": {"0": "zero"}}},
            "stages": [{"tasks": ["digits"], "steps": 2}],
            "batch_size": 8,
            "num_workers": 2,
            "warmup_steps": 1,
            "eval_max_batches": 2,
            "eval_split": "val",
            "output_dir": str(tmp_path / "ft"),
            "device": "cpu",
        },
        "",
    )
    with pytest.raises(ConfigError, match="is not a label of .*shards"):
        finetune(cfg)  # a task is one modality: the folder also holds text
    cfg.tasks["digits"].data = [str(shards / "train-image-{000000..000003}.tar"), str(shards / "val-image-000000.tar")]
    report = finetune(cfg)
    assert "zero" in json.loads((tmp_path / "ft" / "model" / "config.json").read_text())["heads"]["digits"]["labels"]
    assert report["final"]["digits"]["samples"] > 0


@pytest.mark.integration
def test_sigkill_then_resume_from_shards_gives_the_uninterrupted_weights(tmp_path, shards):
    """Streamed with 2 workers per dataset, killed at a random step, resumed: the same weights."""
    import random
    import signal
    import time

    import yaml
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    paths = {}
    for name in ("full", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(pretrain_config(tmp_path, shards, name)))
    subprocess.run(
        [sys.executable, "-m", "omnivec", "pretrain", str(paths["full"])],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    kill_at = random.Random(os.getpid()).randint(3, 8)
    process = subprocess.Popen(
        [sys.executable, "-m", "omnivec", "pretrain", str(paths["killed"])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics, deadline = tmp_path / "killed" / "metrics.jsonl", time.monotonic() + 300
    while not metrics.is_file() or sum('"lr"' in line for line in metrics.read_text().splitlines()) < kill_at:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(
        [sys.executable, "-m", "omnivec", "pretrain", str(paths["killed"]), "resume=auto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    for name in full:
        assert torch.equal(full[name], again[name]), f"{name} differs (killed after step {kill_at})"


EPOCH_SCRIPT = """
import gc, json, sys
from types import SimpleNamespace
import torch.distributed as dist
from accelerate import PartialState
import omnivec
from omnivec.datasets.loaders import build_loaders, modality_tasks
sys.path.insert(0, {tests!r})
from helpers import SMALL_MODEL_OVERRIDES
state = PartialState(cpu=True)
model = omnivec.build_model("omnivec_tiny", **SMALL_MODEL_OVERRIDES)
cfg = SimpleNamespace(batch_size=8, num_workers=2, seed=5, skip_bad=False, shuffle_buffer=16, augment={{}}, cache_mb=0)
out = {{}}
for name, path in (("shards", {shards!r}), ("manifest", {manifest!r})):
    data = modality_tasks({{"image": [path]}})
    loaders = build_loaders(data, model, "train", cfg, True, state.process_index, state.num_processes)
    loader = loaders["image"]
    mine = ([i for b in loader for i in b["index"].tolist()] if name == "shards"
            else [i for _, i in loader.sampler])  # the manifest path: its sampler's share (drop_last aside)
    gathered = [None] * state.num_processes
    dist.all_gather_object(gathered, mine)
    out[name] = gathered
del loader, loaders
gc.collect()  # stop the DataLoader workers before the process group goes
if state.is_main_process:
    open({result!r}, "w").write(json.dumps(out))
dist.barrier()
dist.destroy_process_group()  # else gloo's threads may outlive the interpreter (std::terminate, SIGABRT)
"""


@pytest.mark.integration
@pytest.mark.parametrize("processes", [1, 2])
def test_an_epoch_over_torchrun_processes_and_workers_reads_every_sample_once(tmp_path, shards, processes):
    script, result = tmp_path / "epoch.py", tmp_path / "epoch.json"
    script.write_text(
        EPOCH_SCRIPT.format(
            tests=str(Path(__file__).parent), shards=str(shards), manifest=str(SAMPLE / "digits"), result=str(result)
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(result.read_text())
    shard_ranks, manifest_ranks = out["shards"], out["manifest"]
    assert len(shard_ranks) == processes and all(shard_ranks)
    flat = [i for rank in shard_ranks for i in rank]
    assert len(flat) == len(set(flat))  # no sample twice, within or across processes
    assert set(flat) == {i for rank in manifest_ranks for i in rank} == set(range(len(flat)))


def test_review_fixes_member_choice_unlabelled_rows_fractions_and_foreign_splits(tmp_path, shards, model):
    """A WebDataset sample with audio and its transcript is audio; an hf row labelled -1 is named;
    a streamed task refuses train_fraction; shards read without their index train on train samples only."""
    import datasets

    from omnivec.datasets.shards import sample_row
    from omnivec.tasks import subsample_train

    row = sample_row("x.tar", {"__key__": "k", "wav": b"RIFF", "txt": b"hello"}, "train")
    assert str(row["path"]).endswith(".wav")
    images, labels = digit_images(4)
    features = datasets.Features(
        {"img": datasets.Image(), "digit": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    datasets.Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b in images], "digit": [0, 1, -1, 2]}, features=features
    ).save_to_disk(str(tmp_path / "hf"))
    (task,) = find_tasks(f"hf:{tmp_path / 'hf'}?image=img&label=digit")
    with pytest.raises(DataError, match=r"\[2\]: digit is -1 \(-1 marks an unlabelled row"):
        list(task_loader(model, [task], "train", 4, 0, train=False))
    with pytest.raises(omnivec.ConfigError, match="train_fraction: .* is streamed"):
        subsample_train(digits_train(shards)[0], 0.05, 0)
    pattern = f"{tmp_path / 'copy'}/{{{','.join(p.stem for p in sorted(shards.glob('*-image-*.tar')))}}}.tar"
    (tmp_path / "copy").mkdir()
    for p in shards.glob("*-image-*.tar"):
        (tmp_path / "copy" / p.name).write_bytes(p.read_bytes())  # no index.json beside them
    (task,) = find_tasks(pattern)
    seen = [i for b in task_loader(model, [task], "train", 16, 0, train=False) for i in b["index"].tolist()]
    expected = len(find_tasks(SAMPLE / "digits")[0].split("train"))
    assert len(seen) == expected
