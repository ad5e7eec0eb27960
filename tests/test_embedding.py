import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import omnivec
from omnivec.datasets import read_file
from omnivec.embedding import collect_inputs, embed_files
from omnivec.embedding_store import open_store
from omnivec.search import search

SAMPLE = Path(__file__).parents[1] / "data" / "sample"
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
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2})
    path = tmp_path_factory.mktemp("model") / "m"
    model.save_pretrained(path)
    return path


def test_collect_inputs_from_files_folders_and_manifests(mini):
    items = collect_inputs([mini])
    assert len(items) == 15 and {i["modality"] for i in items} == {"image", "video", "audio", "point_cloud", "text"}
    clip = next(p for p in (mini / "spoken_digits" / "clips").iterdir())
    items = collect_inputs([clip, mini / "digits" / "images", mini / "acl_highlights" / "manifest.jsonl"])
    assert [i["modality"] for i in items] == ["audio"] + ["image"] * 3 + ["text"] * 3
    assert items[0]["path"] == str(clip) and "text" in items[-1]


def test_a_folder_is_read_in_the_order_of_its_sorted_paths(tmp_path):
    for name in ("a/x.txt", "a.b/y.txt", "ab/z.txt", "a.txt", "a-1.txt", "ab.txt", "A.txt", "a/notes.doc"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("hi")
    assert [i["path"] for i in collect_inputs([tmp_path])] == [str(p) for p in sorted(tmp_path.rglob("*.txt"))]


def test_embeddings_come_back_in_input_order_and_repeat(mini, saved_model):
    model = omnivec.OmniVecModel.from_pretrained(saved_model)
    emb, records = embed_files(model, [mini], batch_size=2, num_workers=0)
    assert emb.shape == (15, 32) and [r["index"] for r in records] == list(range(15))
    assert all(r["status"] == "ok" for r in records)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # row k is the embedding of sample k
    k = next(i for i, r in enumerate(records) if r["modality"] == "point_cloud")
    x = model.transforms()["point_cloud"](read_file(records[k]["path"]))
    with torch.no_grad():
        expected = model.embed({"point_cloud": x[None]})["point_cloud"][0].numpy()
    np.testing.assert_allclose(emb[k], expected, atol=1e-5)
    again, _ = embed_files(model, [mini], batch_size=2, num_workers=2)
    np.testing.assert_array_equal(emb, again)  # workers change nothing
    other_batching, _ = embed_files(model, [mini], batch_size=3, num_workers=0)
    np.testing.assert_allclose(emb, other_batching, atol=1e-6)


def test_bad_file_stops_or_is_recorded(mini, saved_model, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mini / "digits", root)
    bad = root / "images" / "0001.png"
    bad.write_bytes(b"not a png")
    model = omnivec.OmniVecModel.from_pretrained(saved_model)
    with pytest.raises(omnivec.DataError, match="0001.png"):
        embed_files(model, [root], num_workers=0)
    emb, records = embed_files(model, [root], num_workers=0, skip_bad=True)
    assert records[1]["status"].startswith("failed: ") and "0001.png" in records[1]["status"]
    assert records[0]["status"] == records[2]["status"] == "ok" and not emb[1].any()


@pytest.mark.integration
def test_embed_and_search_cli(mini, saved_model, tmp_path):
    out = tmp_path / "emb"
    cmd = [
        sys.executable,
        "-m",
        "omnivec",
        "embed",
        "--model",
        str(saved_model),
        "--input",
        str(mini),
        "--output",
        str(out),
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    store = open_store(out)
    emb, records = store.load()
    assert emb.shape == (15, 32) and len(records) == 15 and store.meta["model"] == str(saved_model)
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0  # resumes: nothing to do
    assert subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=300).returncode == 0
    np.testing.assert_array_equal(open_store(out).load()[0], emb)  # a second run gives identical embeddings
    query = records[4]["path"]
    hits = search(out, query, k=3)
    assert hits[0]["path"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "search",
            "--index",
            str(out),
            "--text",
            "a new method for parsing",
            "-k",
            "2",
            "--modality",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.count("text") == 2
