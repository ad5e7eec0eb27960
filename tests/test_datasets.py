"""Readers for every supported format, manifests, collate, mixing, and `omnivec data check`."""

import json
import shutil
from pathlib import Path

import av
import numpy as np
import open3d as o3d
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

import omnivec
from omnivec.cli import main
from omnivec.datasets import Collate, MultiModalLoader, TaskDataset, find_tasks, load_task, modality_of, read_file
from omnivec.datasets.loaders import task_loader
from omnivec.datasets.sampler import EpochSampler
from omnivec.errors import DataError

SAMPLE = Path(__file__).parents[1] / "data" / "sample"
TASKS = {
    "digits": "image",
    "moving_digits": "video",
    "spoken_digits": "audio",
    "spoken_mix": "audio",
    "shapes": "point_cloud",
    "acl_summaries": "text",
    "acl_highlights": "text",
}


def first_file(task: str) -> Path:
    row = json.loads((SAMPLE / task / "manifest.jsonl").read_text().splitlines()[0])
    return SAMPLE / task / row["path"]


def test_sample_tasks_load():
    tasks = {t.name: t for t in find_tasks(SAMPLE)}
    assert {n: t.modality for n, t in tasks.items()} == TASKS
    assert tasks["digits"].classes == [str(i) for i in range(10)] and len(tasks["digits"].rows) == 1797
    assert tasks["spoken_mix"].target == "labels" and tasks["acl_summaries"].target == "summary"
    for task in tasks.values():
        assert {r["split"] for r in task.rows} == {"train", "val", "test"}


def test_sample_files_decode_with_expected_shapes_and_ranges():
    image = read_file(first_file("digits"))
    assert image.size == (8, 8) and image.mode == "L"
    video = read_file(first_file("moving_digits"))  # read lazily: frame count now, frames on demand
    assert len(video) == 16
    video = video.frames(range(16))
    assert video.shape == (16, 32, 32, 3) and video.dtype == torch.uint8 and video.max() > 100
    wave, rate = read_file(first_file("spoken_digits"))
    assert rate == 16000 and wave.shape[0] == 1 and 0.2 < wave.shape[1] / rate < 1.0
    assert 0.05 < wave.abs().max() <= 1.0
    points = read_file(first_file("shapes"))
    assert points.shape == (1024, 3) and points.dtype == np.float32 and np.abs(points).max() < 2


def _write_video(path: Path, codec: str, frames: np.ndarray) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, Path]:
    """A tiny file of every other supported format."""
    d = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    out = {}
    img = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    for ext in ("jpg", "webp", "bmp", "png"):
        img.save(d / f"im.{ext}")
        out[ext] = d / f"im.{ext}"
    frames = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    for ext, codec in (("webm", "libvpx"), ("avi", "mpeg4"), ("mkv", "libx264")):
        _write_video(d / f"clip.{ext}", codec, frames)
        out[ext] = d / f"clip.{ext}"
    (d / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / "frames" / f"{i:03d}.png")
    out["frames"] = d / "frames"
    wave = (0.5 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)
    for ext in ("wav", "ogg", "flac"):
        sf.write(d / f"a.{ext}", np.stack([wave, wave], 1), 8000)  # stereo, 8 kHz
        out[ext] = d / f"a.{ext}"
    xyz = rng.normal(size=(50, 3))
    np.savetxt(d / "p.xyz", xyz)
    np.savetxt(d / "p.pts", xyz)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.normals = o3d.utility.Vector3dVector(np.tile([0.0, 0.0, 1.0], (50, 1)))
    cloud.colors = o3d.utility.Vector3dVector(np.full((50, 3), 0.5))
    o3d.io.write_point_cloud(str(d / "p.pcd"), cloud)
    out.update({"xyz": d / "p.xyz", "pts": d / "p.pts", "pcd": d / "p.pcd"})
    mesh = o3d.geometry.TriangleMesh.create_box()
    mesh.compute_triangle_normals()
    for ext in ("obj", "off", "stl"):
        o3d.io.write_triangle_mesh(str(d / f"m.{ext}"), mesh)
        out[ext] = d / f"m.{ext}"
    o3d.io.write_triangle_mesh(str(d / "mesh.ply"), mesh)
    out["mesh.ply"] = d / "mesh.ply"
    (d / "t.txt").write_text("a short text\n")
    out["txt"] = d / "t.txt"
    return out


def test_every_other_format_reads(formats):
    for ext in ("jpg", "webp", "bmp"):
        assert read_file(formats[ext]).size == (10, 12)
    for ext in ("webm", "avi", "mkv", "frames"):
        v = read_file(formats[ext])
        v = v if ext == "frames" else v.frames(range(len(v)))  # files are read lazily, folders whole
        assert v.shape == (6, 16, 16, 3) and v.dtype == torch.uint8, ext
    for ext in ("wav", "ogg", "flac"):
        wave, rate = read_file(formats[ext])
        assert rate == 8000 and wave.shape == (2, 8000) and wave.abs().max() <= 1.0, ext
    for ext in ("xyz", "pts"):
        assert read_file(formats[ext]).shape == (50, 3), ext
    pcd = read_file(formats["pcd"])
    assert (
        pcd.shape == (50, 9) and np.allclose(pcd[:, 3:6], [0, 0, 1]) and np.allclose(pcd[:, 6:], 0.5, atol=0.01)
    )  # colours stored as 8-bit
    for ext in ("obj", "off", "stl", "mesh.ply"):
        pts = read_file(formats[ext])
        assert pts.shape[0] == 2048 and pts.shape[1] >= 3, ext
        assert pts[:, :3].min() >= -1e-6 and pts[:, :3].max() <= 1 + 1e-6  # on the unit box
        assert np.array_equal(read_file(formats[ext]), pts), ext  # sampled the same way at every read
    assert read_file(formats["txt"]) == "a short text\n"
    assert modality_of(formats["frames"]) == "video"


@pytest.mark.parametrize("ext", ["png", "jpg", "webm", "avi", "wav", "flac", "pcd", "xyz", "obj", "stl"])
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_files_name_the_file(formats, tmp_path, ext, damage):
    src = formats[ext]
    bad = tmp_path / f"bad{src.suffix}"
    data = src.read_bytes()
    bad.write_bytes(b"" if damage == "empty" else data[: max(1, len(data) // 8)] if ext not in ("xyz",) else b"1 2\n")
    with pytest.raises(DataError, match=str(bad)):
        read_file(bad)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "x.doc").write_text("x")
    with pytest.raises(DataError, match=r"x.doc: unknown file type '.doc'"):
        read_file(tmp_path / "x.doc")
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_file(tmp_path / "nope.png")


def test_nan_in_audio_is_reported(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav: audio holds NaN"):
        read_file(tmp_path / "nan.wav")


def test_manifest_errors_name_the_line(tmp_path):
    m = tmp_path / "manifest.jsonl"
    m.write_text('{"path": "a.png", "label": "x"}\n{"path": "../../etc/passwd.png", "label": "y"}\n')
    with pytest.raises(DataError, match=r"manifest.jsonl:2: path '../../etc/passwd.png' leaves the dataset folder"):
        load_task(m)
    m.write_text('{"path": "a.png", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"manifest.jsonl:2: not valid JSON"):
        load_task(m)
    m.write_text('{"path": "a.png", "label": "x", "split": "training"}\n')
    with pytest.raises(DataError, match=r"manifest.jsonl:1: split 'training'"):
        load_task(m)
    m.write_text('{"path": "a.png", "label": "x"}\n{"path": "b.png"}\n')
    with pytest.raises(DataError, match=r"manifest.jsonl:2: missing the 'label' column"):
        load_task(m)


def test_csv_manifest_and_folder_layout(tmp_path, formats):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            shutil.copy(formats["png"], tmp_path / "tree" / split / cls / "a.png")
    task = load_task(tmp_path / "tree")
    assert task.modality == "image" and task.classes == ["cat", "dog"]
    assert {(r["split"], r["label"]) for r in task.rows} == {(s, c) for s in ("train", "test") for c in ("cat", "dog")}
    shutil.copy(formats["wav"], tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("path,labels,split\na.wav,dog;cat,train\n")
    task = load_task(tmp_path / "m.csv")
    assert task.modality == "audio" and task.target == "labels" and task.rows[0]["labels"] == ["dog", "cat"]


def test_dataset_collate_and_workers(tiny_model):
    task = load_task(SAMPLE / "spoken_mix")
    ds = TaskDataset(task, "train", tiny_model.transforms()["audio"])
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collate("audio", target=task.target_kind))
    batch = next(iter(loader))
    assert batch["input"].shape == (4, 48, 32) and batch["target"].shape == (4, 10)
    assert set(batch["target"].sum(1).tolist()) <= {2.0, 3.0} and batch["skipped"] == []
    text = TaskDataset(load_task(SAMPLE / "acl_highlights"), "val", tiny_model.transforms()["text"])
    collate = Collate("text", target=text.target_kind)
    batch = next(iter(DataLoader(text, batch_size=3, num_workers=2, collate_fn=collate)))
    ids, mask = batch["input"]["input_ids"], batch["input"]["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] <= 24 and batch["target"].dtype == torch.long
    assert ((ids == 0) == (mask == 0)).all()  # padding is exactly where the mask is 0
    tiny_model.embed({"text": batch["input"]})
    summaries = TaskDataset(load_task(SAMPLE / "acl_summaries"), "test", tiny_model.transforms()["text"])
    batch = Collate("text", target=summaries.target_kind)([summaries[0], summaries[1]])
    assert isinstance(batch["target"][0], str)


def test_a_sample_cache_gives_the_same_samples_and_keeps_to_its_budget(tiny_model):
    from omnivec.config import augment_configs

    augment = augment_configs({m: {} for m in set(TASKS.values())}, "augment")  # every modality's augmentation on
    transforms = tiny_model.transforms(train=True, augment=augment)

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a) if isinstance(a, dict) else torch.equal(a, b)

    for task, modality in TASKS.items():
        plain = TaskDataset(load_task(SAMPLE / task), "train", transforms[modality])
        cached = TaskDataset(load_task(SAMPLE / task), "train", transforms[modality], cache_bytes=2**30)
        for key in [(epoch, i) for epoch in (0, 1, 2) for i in range(3)]:  # epochs 1, 2 transform what epoch 0 kept
            assert same(plain[key]["input"], cached[key]["input"]), (task, key)
        assert sorted(cached.cache) == [0, 1, 2]
    clip = 16 * 32 * 32 * 3  # a sample video's frames, decoded whole: uint8 [16, 32, 32, 3]
    small = TaskDataset(load_task(SAMPLE / "moving_digits"), "train", transforms["video"], cache_bytes=2 * clip + 1)
    plain = TaskDataset(load_task(SAMPLE / "moving_digits"), "train", transforms["video"])
    for key in [(epoch, i) for epoch in (0, 1) for i in range(4)]:
        assert torch.equal(small[key]["input"], plain[key]["input"])
    assert sorted(small.cache) == [0, 1] and small.cached_bytes == 2 * clip  # the others are read each time

    def failing(points):
        raise ValueError("no")

    bad = TaskDataset(load_task(SAMPLE / "shapes"), "train", failing, cache_bytes=2**30)
    with pytest.raises(DataError, match=r"shapes/points/.*: cannot transform this point_cloud sample \(no\)"):
        bad[(0, 0)]
    assert bad.cache == {} and bad.cached_bytes == 0  # a sample that does not transform is not kept


def test_bad_sample_raises_or_is_skipped(tmp_path, tiny_model):
    task_dir = tmp_path / "digits"
    task_dir.mkdir()
    rows = []
    for i in range(4):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", task_dir / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": str(i % 2)})
    (task_dir / "2.png").write_bytes(b"\x89PNG broken")
    (task_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    transform = tiny_model.transforms()["image"]
    with pytest.raises(DataError, match="2.png: cannot decode image"):
        [TaskDataset(load_task(task_dir), transform=transform)[i] for i in range(4)]
    ds = TaskDataset(load_task(task_dir), transform=transform, skip_bad=True)
    batch = Collate("image")([ds[i] for i in range(4)])
    assert batch["input"].shape == (3, 3, 16, 16) and batch["index"].tolist() == [0, 1, 3]
    assert len(batch["skipped"]) == 1 and "2.png" in batch["skipped"][0]


def test_multimodal_loader_schedules():
    loaders = {"a": [1, 2, 3], "b": ["x", "y"]}
    rr = MultiModalLoader(loaders, "round_robin")
    assert [next(rr) for _ in range(5)] == [{"a": 1}, {"b": "x"}, {"a": 2}, {"b": "y"}, {"a": 3}]
    assert next(rr) == {"b": "x"} and rr.epochs["b"] == 1  # restarted
    both = MultiModalLoader(loaders, "all")
    assert next(both) == {"a": 1, "b": "x"}
    w = MultiModalLoader(loaders, "weighted", weights={"a": 3.0, "b": 1.0}, seed=0)
    picks = [next(iter(next(w))) for _ in range(400)]
    assert 0.65 < picks.count("a") / 400 < 0.85
    w2 = MultiModalLoader(loaders, "weighted", weights={"a": 3.0, "b": 1.0}, seed=0)
    assert [next(iter(next(w2))) for _ in range(400)] == picks  # seeded
    with pytest.raises(ValueError, match="schedule"):
        MultiModalLoader(loaders, "random")
    with pytest.raises(ValueError, match=r"\['c'\]"):
        MultiModalLoader(loaders, "weighted", weights={"c": 1.0})


def _mini_copy(dst: Path, per_task: int = 4) -> None:
    """A copy of data/sample with the first rows of every task."""
    for name in TASKS:
        rows = [json.loads(line) for line in (SAMPLE / name / "manifest.jsonl").read_text().splitlines()[:per_task]]
        (dst / name).mkdir(parents=True)
        for row in rows:
            if "path" in row:
                (dst / name / row["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(SAMPLE / name / row["path"], dst / name / row["path"])
        (dst / name / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_data_check_sample_passes(capsys):
    assert main(["data", "check", str(SAMPLE / "digits")]) == 0
    out = capsys.readouterr().out
    assert "digits (image, label, 10 classes)" in out and "train   1258" in out and "0 bad" in out


def test_data_check_names_every_corrupted_file(tmp_path, capsys):
    _mini_copy(tmp_path)
    assert main(["data", "check", str(tmp_path)]) == 0
    corrupted = []
    for name in ("digits", "moving_digits", "spoken_digits", "shapes"):
        row = json.loads((tmp_path / name / "manifest.jsonl").read_text().splitlines()[1])
        path = tmp_path / name / row["path"]
        path.write_bytes(path.read_bytes()[:40])  # truncated
        corrupted.append(path)
    empty = (
        tmp_path
        / "spoken_mix"
        / json.loads((tmp_path / "spoken_mix" / "manifest.jsonl").read_text().splitlines()[0])["path"]
    )
    empty.write_bytes(b"")
    corrupted.append(empty)
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    bad_lines = [line for line in out.splitlines() if line.strip().startswith("BAD")]
    assert len(bad_lines) == len(corrupted)
    for path in corrupted:
        assert any(str(path) in line for line in bad_lines), path
    assert f"{len(corrupted)} bad" in out


def test_tokenizer_train_cli(tmp_path):
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(SAMPLE / "acl_summaries"),
                "--vocab-size",
                "300",
                "--output",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 300
    ids = tok("We propose a method.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids


def test_group_by_length_batches_alike_lengths_and_keeps_every_sample_once():
    lengths = (torch.randperm(1000, generator=torch.Generator().manual_seed(0)) + 1).tolist()  # no ties
    plain = EpochSampler(1000, seed=3)
    grouped = EpochSampler(1000, seed=3, lengths=lengths, batch_size=8)
    keys = list(grouped)
    assert sorted(keys) == sorted(plain) and keys == list(grouped)  # a permutation, fixed by (seed, epoch)
    order = [i for _, i in keys]
    widths = [max(lengths[i] for i in order[j : j + 8]) for j in range(0, 1000, 8)]
    plain_widths = [max(lengths[i] for _, i in list(plain)[j : j + 8]) for j in range(0, 1000, 8)]
    assert sum(widths) < 0.7 * sum(plain_widths)  # far less padding: a batch is as long as its longest sample
    runs = [sorted(order[j : j + 400], key=lambda i: -lengths[i]) for j in range(0, 1000, 400)]  # 50 batches of 8
    for j in range(0, 1000, 8):  # each batch is a slice of its run, sorted by length
        run = runs[j // 400]
        batch = sorted(order[j : j + 8], key=lambda i: -lengths[i])
        start = run.index(batch[0])
        assert [lengths[i] for i in run[start : start + 8]] == [lengths[i] for i in batch]
    grouped.set_epoch(1)
    assert [i for _, i in grouped] != order  # a new grouping each epoch
    grouped.set_epoch(0)
    grouped.skip = 24  # a resumed run goes on with the same batches
    assert list(grouped) == keys[24:]
    ranks = [EpochSampler(1000, seed=3, rank=r, world_size=2, lengths=lengths, batch_size=4) for r in (0, 1)]
    shares = [[i for _, i in s] for s in ranks]
    assert sorted(shares[0] + shares[1]) == list(range(1000))
    for j in range(0, 496, 4):  # the two processes' batches of one step come from one global batch of 8
        step = set(shares[0][j : j + 4]) | set(shares[1][j : j + 4])
        assert step == set(order[2 * j : 2 * j + 8])


def test_group_by_length_cuts_the_padding_of_text_batches():
    model = omnivec.build_model("omnivec_tiny", backbone={"depth": 1}, modalities={"text": {"max_length": 256}})
    task = load_task(SAMPLE / "acl_highlights")  # byte tokens: 17 to 256 per sentence
    widths = {}
    for group in (False, True):
        loader = task_loader(model, [task], "train", 16, train=True, group_by_length=group)
        batches = list(loader)
        widths[group] = sum(b["input"]["attention_mask"].shape[1] for b in batches)
        real = sorted(i for b in batches for i in b["index"].tolist())
        assert len(real) == len(set(real)) and len(real) == len(loader.sampler) // 16 * 16  # drop_last only
    assert widths[True] < 0.8 * widths[False]
