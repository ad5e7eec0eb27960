"""Embedding stores: `omnivec embed` streams its inputs into fixed-size parts (any format), resumes a
killed run with the same bytes, splits over processes, and `omnivec search` takes a top-k part by
part; bad options, outputs and queries are one-line errors (issue #27)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAMPLE

import omnivec
from omnivec import DataError
from omnivec.cli import main
from omnivec.datasets.shard_writer import write_shards
from omnivec.embedding import embed_files
from omnivec.embedding_store import StoreWriter, open_store, store_header, write_store
from omnivec.modalities.text import TextConfig, TextTransform
from omnivec.search import check_compatible, nearest, search

TASKS = ["digits", "moving_digits", "spoken_digits", "shapes", "acl_highlights"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """Three samples of five sample tasks (one per modality)."""
    root = tmp_path_factory.mktemp("mini")
    for name in TASKS:
        rows = [json.loads(line) for line in (SAMPLE / name / "manifest.jsonl").read_text().splitlines()[:3]]
        (root / name).mkdir()
        for row in rows:
            if "path" in row:
                (root / name / row["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(SAMPLE / name / row["path"], root / name / row["path"])
        (root / name / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m"
    omnivec.build_model("omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2}).save_pretrained(path)
    return path


def embed(model_dir: Path, inputs, out: Path, *extra: str) -> int:
    return main(
        [
            "embed",
            "--model",
            str(model_dir),
            "--input",
            *map(str, inputs),
            "--output",
            str(out),
            "--num-workers",
            "0",
            "--device",
            "cpu",
            *extra,
        ]
    )


def store_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def random_store(root: Path, n: int = 23, dim: int = 8, part_size: int = 5, fmt: str = "npy", seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    records = [
        {
            "index": i,
            "path": f"{i}.x",
            "modality": ("image", "text")[i % 3 == 0],
            "status": "failed: bad" if i % 7 == 3 else "ok",
        }
        for i in range(n)
    ]
    emb[[i for i in range(n) if i % 7 == 3]] = 0
    header = store_header(kw.pop("model", "m"), None, dim, n, [{"input": "x", "samples": n}], fmt, part_size)
    return write_store(root, {**header, **kw}, emb, records), emb, records


@pytest.mark.parametrize("fmt", ["npy", "safetensors", "parquet"])
def test_a_store_round_trips_part_by_part(tmp_path, fmt):
    store, emb, records = random_store(tmp_path / "s", fmt=fmt)
    opened = open_store(tmp_path / "s")
    assert [p["count"] for p in opened.parts] == [5, 5, 5, 5, 3] and opened.meta["complete"]
    assert opened.meta["failed"] == 3 and opened.modalities() == {"image": 15, "text": 8}
    loaded, loaded_records = opened.load()
    np.testing.assert_array_equal(loaded, emb)
    assert loaded_records == records
    part, first = next(opened.iter_parts())
    assert part == {"name": "part-00000", "start": 0, "count": 5, "failed": 1, "modalities": {"image": 3, "text": 2}}
    if fmt == "npy":
        assert isinstance(first, np.memmap)
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]


def test_stores_made_differently_are_not_compared(tmp_path):
    a = random_store(tmp_path / "a")[0]
    assert check_compatible([a, random_store(tmp_path / "b", seed=1)[0]]) is None
    for key, value in (("pool", "cls"), ("layers", "last4"), ("normalized", False), ("model", "other")):
        b = random_store(tmp_path / key, **{key: value})[0]
        with pytest.raises(DataError, match=rf"different kinds \({key}: "):
            check_compatible([a, b])
    with pytest.raises(DataError, match="dim: 8 vs 4"):
        check_compatible([a, random_store(tmp_path / "d", dim=4)[0]])


@pytest.mark.parametrize("k", [1, 3, 40])
def test_the_part_by_part_top_k_is_the_full_sort(tmp_path, k):
    stores = [random_store(tmp_path / "a", n=23)[0], random_store(tmp_path / "b", n=11, seed=1)[0]]
    emb = np.concatenate([s.load()[0] for s in stores])
    records = [{**r, "store": str(s.root)} for s in stores for r in s.load()[1]]
    queries = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    for modality in (None, "text", "image"):
        hits = nearest(stores, queries, k, modality)
        for q, found in zip(queries, hits):
            ok = np.array([r["status"] == "ok" and modality in (None, r["modality"]) for r in records])
            scores = np.where(ok, emb @ q, -np.inf)
            expected = [i for i in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[i])]
            assert [(h["store"], h["index"]) for h in found] == [
                (records[i]["store"], records[i]["index"]) for i in expected
            ]
            assert [h["score"] for h in found] == pytest.approx([float(scores[i]) for i in expected], abs=1e-6)


def test_streamed_parts_hold_the_in_memory_embeddings(mini, model_dir, tmp_path):
    """Every input kind, parts of 4 rows, 0 or 2 workers: the rows of `embed_files`, in input order."""
    expected, expected_records = embed_files(omnivec.OmniVecModel.from_pretrained(model_dir), [mini], num_workers=0)
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        assert embed(model_dir, [mini], out, "--part-size", "4", "--num-workers", workers, "--batch-size", "3") == 0
        emb, records = open_store(out).load()
        np.testing.assert_allclose(emb, expected, atol=1e-6)  # batches differ: float order only
        assert records == [{**r, **({"label": r["label"]} if "label" in r else {})} for r in expected_records]
        assert len(open_store(out).parts) == 4
    assert store_bytes(tmp_path / "w0") == store_bytes(tmp_path / "w2")  # workers change nothing


def test_shards_and_hf_datasets_stream_with_labels_and_a_truncated_shard_is_recorded(model_dir, tmp_path):
    write_shards([SAMPLE / "digits"], tmp_path / "shards", "40kB")
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert embed(model_dir, [tmp_path / "shards"], tmp_path / "out", "--part-size", "64") == 0
    emb, records = open_store(tmp_path / "out").load()
    assert len(records) == sum(e["samples"] for e in index["shards"]) and all(r["status"] == "ok" for r in records)
    assert records[0]["where"].startswith(str(tmp_path / "shards")) and "label" in records[0]
    files = embed_files(omnivec.OmniVecModel.from_pretrained(model_dir), [SAMPLE / "digits"], num_workers=0)[0]
    np.testing.assert_allclose(np.sort(emb, axis=0), np.sort(files, axis=0), atol=1e-6)  # the same images

    first = tmp_path / "shards" / index["shards"][1]["file"]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    assert embed(model_dir, [tmp_path / "shards"], tmp_path / "cut", "--part-size", "64") == 2
    assert embed(model_dir, [tmp_path / "shards"], tmp_path / "cut", "--part-size", "64", "--skip-bad") == 2
    assert (
        embed(model_dir, [tmp_path / "shards"], tmp_path / "cut", "--part-size", "64", "--skip-bad", "--overwrite") == 0
    )
    store = open_store(tmp_path / "cut")
    records = store.load()[1]
    failed = [r for r in records if r["status"] != "ok"]
    assert len(records) == len(emb) and 0 < len(failed) == store.meta["failed"] < index["shards"][1]["samples"]
    assert all(r["status"].startswith(f"failed: {first}: ") and "truncated" in r["status"] for r in failed)

    import datasets

    rows = [json.loads(line) for line in (SAMPLE / "digits" / "manifest.jsonl").read_text().splitlines()[:12]]
    ds = datasets.Dataset.from_dict(
        {
            "img": [{"bytes": (SAMPLE / "digits" / r["path"]).read_bytes(), "path": None} for r in rows],
            "label": [r["label"] for r in rows],
        },
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    assert embed(model_dir, [f"hf:{tmp_path / 'hf'}?image=img"], tmp_path / "hfout", "--part-size", "5") == 0
    records = open_store(tmp_path / "hfout").load()[1]
    assert [r["label"] for r in records] == [r["label"] for r in rows] and records[3]["where"].endswith("[train][3]")


def test_a_crashed_run_resumes_after_its_last_part_with_the_same_bytes(mini, model_dir, tmp_path, monkeypatch, capsys):
    assert embed(model_dir, [mini], tmp_path / "whole", "--part-size", "2") == 0
    whole = store_bytes(tmp_path / "whole")
    write_part = StoreWriter.write_part

    def crash_after_three(self, p, emb, records):
        if len(list(self.root.glob("part-*.npy"))) == 3:
            raise KeyboardInterrupt  # a kill between two parts
        write_part(self, p, emb, records)

    monkeypatch.setattr(StoreWriter, "write_part", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        embed(model_dir, [mini], tmp_path / "out", "--part-size", "2")
    assert not json.loads((tmp_path / "out" / "embeddings.json").read_text())["complete"]
    with pytest.raises(DataError, match="unfinished .3 of 8 parts written.: run the same omnivec embed command again"):
        open_store(tmp_path / "out")
    monkeypatch.setattr(StoreWriter, "write_part", write_part)
    capsys.readouterr()
    assert embed(model_dir, [mini], tmp_path / "out", "--part-size", "2") == 0
    log = capsys.readouterr().out
    assert "3 of 8 parts already written, skipped: 0-2" in log
    assert [line.split()[1] for line in log.splitlines() if line.startswith("wrote")] == [
        f"part-{p:05d}" for p in range(3, 8)
    ]  # no part embedded twice
    assert store_bytes(tmp_path / "out") == whole


def test_another_command_on_a_store_is_refused_unless_overwritten(mini, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed(model_dir, [mini / "digits"], out) == 0
    capsys.readouterr()
    assert embed(model_dir, [mini / "shapes"], out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {out}: holds embeddings of another command (inputs: ")
    assert "--overwrite" in err
    assert embed(model_dir, [mini / "digits"], out, "--batch-size", "2") == 2
    assert "holds embeddings of another command (options: " in capsys.readouterr().err
    assert embed(model_dir, [mini / "shapes"], out, "--overwrite") == 0
    assert open_store(out).modalities() == {"point_cloud": 3}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert embed(model_dir, [mini / "digits"], tmp_path / "notes", "--overwrite") == 2
    assert "a folder holding other files (todo.txt), not an embedding store" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_an_output_that_would_replace_or_be_read_as_input_is_refused(mini, model_dir, tmp_path, capsys):
    """#27: `--input DS --output DS/manifest` replaced DS's manifest.jsonl."""
    data = tmp_path / "ds"
    shutil.copytree(mini / "digits", data)
    manifest = (data / "manifest.jsonl").read_bytes()
    for output, inputs in (
        (data / "manifest", [data]),
        (data, [data]),
        (data / "images" / "e", [data / "images"]),
        (tmp_path, [data / "manifest.jsonl"]),
        (data / "manifest.jsonl", [data / "manifest.jsonl"]),
    ):
        assert embed(model_dir, inputs, output) == 2, output
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output {output}: ") and err.count("\n") == 1, err
        assert "input" in err
    assert (data / "manifest.jsonl").read_bytes() == manifest and not (data / "manifest").exists()
    assert embed(model_dir, [data], tmp_path / "emb.npy") == 2  # the old single-file output
    assert (
        "a folder now (it holds embeddings.json and parts); drop the .npy and give --format npy"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "option, error",
    [
        (["--batch-size", "0"], "--batch-size: expected a whole number >= 1, got 0"),
        (["--batch-size", "-1"], "--batch-size: expected a whole number >= 1, got -1"),
        (["--num-workers", "-1"], "--num-workers: expected a whole number >= 0, got -1"),
        (["--part-size", "0"], "--part-size: expected a whole number >= 1, got 0"),
        (["--device", "nonsense"], "--device: expected auto, cpu, cuda, cuda:N or mps, got 'nonsense'"),
        (["--device", "cuda"], "--device cuda: no CUDA GPU is visible here"),
        (["--format", "csv"], "--format: expected one of ['npy', 'safetensors', 'parquet'], got 'csv'"),
    ],
)
def test_impossible_embed_options_fail_before_any_work(model_dir, tmp_path, capsys, option, error):
    if option == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["embed", "--model", str(model_dir), "--input", str(SAMPLE / "digits"), "--output", str(tmp_path / "o")]
    assert main(args + option) == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}" + err[len(f"error: {error}") :] and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_nothing_to_embed_or_every_sample_bad_is_an_error(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.doc").write_text("no known type")
    assert embed(model_dir, [tmp_path / "empty"], tmp_path / "o") == 2
    assert "error: " in (err := capsys.readouterr().err) and "no samples to embed" in err
    assert not (tmp_path / "o").exists()  # no empty folder left behind
    assert embed(tmp_path / "no-model", [tmp_path / "empty"], tmp_path / "deep" / "o") == 2
    assert "no-model" in capsys.readouterr().err and not (tmp_path / "deep").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
    assert embed(model_dir, [tmp_path / "bad"], tmp_path / "b", "--skip-bad") == 2
    assert "none of the 1 samples could be embedded" in capsys.readouterr().err


def test_bad_files_stop_their_part_or_are_recorded_and_counted(mini, model_dir, tmp_path, capsys):
    data = tmp_path / "images"
    shutil.copytree(mini / "digits" / "images", data)
    for i in range(5):
        shutil.copy(next(data.iterdir()), data / f"extra{i}.png")
    bad = sorted(data.iterdir())[1]
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    assert embed(model_dir, [data], tmp_path / "o", "--part-size", "3") == 2
    err = capsys.readouterr().err
    assert "1 samples could not be embedded; their parts are not written" in err and str(bad) in err
    assert [p.name for p in sorted((tmp_path / "o").glob("part-*.npy"))] == ["part-00001.npy", "part-00002.npy"]
    bad.write_bytes(good)  # fixed: the same command embeds the missing part only
    assert embed(model_dir, [data], tmp_path / "o", "--part-size", "3") == 0
    assert "wrote part-00000" in capsys.readouterr().out and open_store(tmp_path / "o").meta["failed"] == 0
    bad.write_bytes(b"not a png")
    assert embed(model_dir, [data], tmp_path / "s", "--part-size", "3", "--skip-bad") == 0
    store = open_store(tmp_path / "s")
    emb, records = store.load()
    assert store.meta["failed"] == 1 and store.parts[0]["failed"] == 1
    assert records[1]["status"].startswith(f"failed: {bad}") and not emb[1].any() and emb[0].any()


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory, model_dir, mini) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    assert embed(model_dir, [mini], out, "--part-size", "4") == 0
    return out


@pytest.mark.parametrize(
    "args, error",
    [
        (["--query", "no/such/file.png"], "error: no/such/file.png: no such file (--text TEXT searches for a text)"),
        (["--query", ""], "error: --query: empty; give a file"),
        (["--text", " "], "error: --text: empty"),
        (["--query", "x" * 300], "error: " + "x" * 300 + ": no such file"),
        (["--text", "a", "-k", "0"], "error: -k: expected a whole number >= 1, got 0"),
        (["--text", "a", "-k", "-1"], "error: -k: expected a whole number >= 1, got -1"),
        (["--text", "a", "--modality", "nonsense"], "error: --modality: expected one of ["),
        (["--text", "a", "--modality", "video"], "holds no video samples (it holds audio, image, point_cloud, text)"),
        ([], "error: search: give --query PATH (a file of any modality) or --text TEXT, exactly one"),
        (["--text", "a", "--query", str(SAMPLE / "digits" / "images" / "0003.png")], "exactly one"),
    ],
)
def test_search_refuses_guesses_in_one_line(sample_store, tmp_path, monkeypatch, capsys, args, error):
    """#27: a missing path was searched as a text, "" took the first file here, -k -1 returned all
    but one, an unknown modality printed nothing; a long text raised OSError."""
    monkeypatch.chdir(tmp_path)  # an empty folder
    store = sample_store
    if "video" in args:  # a store without video: drop it from the sample store's copy
        store = tmp_path / "nv"
        emb, records = open_store(sample_store).load()
        keep = [i for i, r in enumerate(records) if r["modality"] != "video"]
        write_store(
            store,
            open_store(sample_store).meta | {"count": len(keep)},
            emb[keep],
            [{**records[i], "index": j} for j, i in enumerate(keep)],
        )
    assert main(["search", "--index", str(store), *args]) == 2
    err = capsys.readouterr().err
    assert error in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_search_names_a_missing_or_broken_store(sample_store, tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "none"), "--text", "a"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none'}: not an embedding store (no embeddings.json)\n"
    broken = tmp_path / "broken"
    shutil.copytree(sample_store, broken)
    np.save(broken / "part-00001.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["search", "--index", str(broken), "--text", "a long text " * 40, "-k", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken / 'part-00001.npy'}: not a readable npy part") and err.count("\n") == 1


def test_search_over_two_stores_and_a_moved_model(sample_store, model_dir, tmp_path, capsys):
    query = next(r["path"] for r in open_store(sample_store).load()[1] if "path" in r)
    hits = search([sample_store, sample_store], query, k=2)
    assert [h["path"] for h in hits] == [query, query] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(1)
    other = tmp_path / "other"
    omnivec.build_model("omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2}).save_pretrained(other)
    assert main(["search", "--index", str(sample_store), "--query", query, "--model", str(other)]) == 2
    assert "other weights than those that made" in capsys.readouterr().err
    shutil.copytree(model_dir, tmp_path / "copy")
    assert main(["search", "--index", str(sample_store), "--query", query, "--model", str(tmp_path / "copy")]) == 0
    shutil.copytree(model_dir, tmp_path / "damaged")  # weights that cannot be read are named as such
    weights = tmp_path / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["search", "--index", str(sample_store), "--query", query, "--model", str(weights.parent)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {weights}: not a readable safetensors file")


def test_a_long_text_is_cut_before_it_is_tokenized(monkeypatch):
    """#27: a 20 MB .txt was tokenized whole (5.9 GB); the ids stay those of the whole text."""
    words = " ".join(f"word{i % 97}" for i in range(200_000))  # ~1.3 MB
    for tokenizer in ("bytes", str(SAMPLE / "tokenizer")):
        transform = TextTransform(TextConfig(tokenizer=tokenizer, vocab_size=8000, max_length=32))
        whole = transform.tokenizer(words, truncation=True, max_length=32, return_tensors="pt")["input_ids"][0]
        seen = []
        real = type(transform.tokenizer).__call__
        monkeypatch.setattr(
            type(transform.tokenizer),
            "__call__",
            lambda self, text, seen=seen, real=real, **kw: seen.append(len(text)) or real(self, text, **kw),
        )
        assert torch.equal(transform(words)["input_ids"], whole)
        assert max(seen) <= 32 * 16, seen
        monkeypatch.undo()
    spaced = "a" + " " * 5000 + "b c"  # few word pieces in many characters: the cut grows to the end
    transform = TextTransform(TextConfig(tokenizer=str(SAMPLE / "tokenizer"), vocab_size=8000, max_length=8))
    whole = transform.tokenizer(spaced, truncation=True, max_length=8, return_tensors="pt")["input_ids"][0]
    assert len(whole) == 5 and torch.equal(transform(spaced)["input_ids"], whole)


@pytest.mark.integration
def test_a_sigkilled_embed_resumes_with_the_same_bytes(mini, model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "omnivec",
        "embed",
        "--model",
        str(model_dir),
        "--input",
        str(mini),
        "--device",
        "cpu",
        "--part-size",
        "1",
        "--num-workers",
        "1",
    ]
    subprocess.run(cmd + ["--output", str(tmp_path / "whole")], env=env, check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    first = subprocess.Popen(cmd + ["--output", str(out)], env=env, stdout=subprocess.PIPE, text=True)
    while len(list(out.glob("part-*.npy"))) < 4 and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL and "embedded" not in log  # killed midway
    names = {p.name for p in out.iterdir()}
    on_disk = [p for p in range(15) if {f"part-{p:05d}.npy", f"part-{p:05d}.jsonl"} <= names]
    second = subprocess.run(cmd + ["--output", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    written = [line.split()[1] for line in second.stdout.splitlines() if line.startswith("wrote")]
    assert sorted(written) == [f"part-{p:05d}" for p in range(15) if p not in on_disk]  # none embedded twice
    assert f"{len(on_disk)} of 15 parts already written, skipped: " in second.stdout and len(on_disk) >= 4
    assert store_bytes(out) == store_bytes(tmp_path / "whole")


@pytest.mark.integration
def test_two_torchrun_processes_embed_each_sample_once(mini, model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [
        "embed",
        "--model",
        str(model_dir),
        "--input",
        str(mini),
        "--device",
        "cpu",
        "--part-size",
        "2",
        "--num-workers",
        "1",
    ]
    one = subprocess.run(
        [sys.executable, "-m", "omnivec", *args, "--output", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "omnivec",
            *args,
            "--output",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0 and two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    by_rank = {
        r: [line.split()[3] for line in two.stdout.splitlines() if line.startswith(f"[rank {r}] wrote")] for r in (0, 1)
    }
    assert by_rank[0] and by_rank[1] and not set(by_rank[0]) & set(by_rank[1])  # both worked, on different parts
    rows = [r["index"] for r in open_store(tmp_path / "two").load()[1]]
    assert rows == list(range(15))  # each sample exactly once
    assert store_bytes(tmp_path / "two") == store_bytes(tmp_path / "one")


def test_samples_of_a_modality_the_model_lacks_are_recorded(mini, tmp_path):
    torch.manual_seed(0)
    omnivec.build_model(
        "omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2}, modalities={"video": None}
    ).save_pretrained(tmp_path / "m")
    assert embed(tmp_path / "m", [mini], tmp_path / "o", "--skip-bad", "--part-size", "4") == 0
    store = open_store(tmp_path / "o")
    failed = [r for r in store.load()[1] if r["status"] != "ok"]
    assert [r["modality"] for r in failed] == ["video"] * 3 and store.meta["failed"] == 3
    assert all(r["status"] == f"failed: {r['path']}: the model has no video encoder" for r in failed)
