"""Faults and bad inputs that used to lose work or give wrong results (issue #14): each is injected,
then the user gets a clear error naming the file / key / folder, or the documented conversion."""

import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    SAMPLE,
    SMALL_MODEL_OVERRIDES,
    pretrain_yaml,
)
from PIL import Image

import omnivec
from omnivec import ConfigError, DataError, InputError, ModelError
from omnivec.cli import main
from omnivec.datasets import check_path, load_task, read_file
from omnivec.datasets.dataset import TaskDataset
from omnivec.embedding import collect_inputs
from omnivec.modalities.video_files import VideoFile
from omnivec.parsing import from_dict
from omnivec.pretraining import PretrainConfig
from omnivec.recipe_config import load_recipe_config


def write_mp4(path: Path, frames: int, size: tuple[int, int] = (320, 240)) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), i % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_video_decodes_only_the_frames_the_transform_samples(tmp_path):
    """Item 7: a 200-frame 320x240 clip (46 MB decoded) read and transformed in far less memory."""
    path = write_mp4(tmp_path / "long.mp4", 200)
    transform = omnivec.build_model("omnivec_tiny").transforms()["video"]
    tracemalloc.start()
    video = read_file(path)
    x = transform(video)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(video, VideoFile) and len(video) == 200
    assert x.shape == (8, 3, 32, 32)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB: more than the 8 sampled frames"
    # the sampled frames are those a fully decoded clip gives
    full = video.frames(range(200))
    assert torch.equal(transform(full), x)


def test_decompression_bomb_and_bad_ply_header_are_named_and_skippable(tmp_path):
    """Item 6: PIL's DecompressionBombError and a PLY with a non-numeric count go the per-file way."""
    root = tmp_path / "bad"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 30 * i).save(root / label / f"{i}.png")
    bomb = root / "a" / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpixels: over twice PIL's limit
    reports = check_path(root)
    assert [b.split(":")[0] for b in reports[0].bad] == [str(bomb)]
    assert "decompression bomb" in reports[0].bad[0].lower() or "exceeds limit" in reports[0].bad[0]
    ds = TaskDataset(load_task(root), transform=lambda im: torch.zeros(1), skip_bad=True)
    assert [s["index"] for s in (ds[i] for i in range(len(ds))) if "error" in s] == [3]

    ply = tmp_path / "bad.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex abc\nproperty float x\nend_header\n1\n")
    with pytest.raises(DataError, match=rf"{ply}: malformed header"):
        read_file(ply)


def test_folder_trees_and_embed_refuse_links_out_of_the_folder(tmp_path):
    """Item 8: a symbolic link in a class folder pointing outside the dataset is refused, named."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the model")
    root = tmp_path / "texts"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "ok.txt").write_text("fine")
    (root / "notes" / "link.txt").symlink_to(secret)
    with pytest.raises(DataError, match=r"link.txt: leads outside the dataset folder"):
        load_task(root)
    with pytest.raises(DataError, match=r"link.txt: leads outside the dataset folder"):
        collect_inputs([root])
    assert secret in [r["path"] for r in load_task(root, allow_outside_root=True).rows]


def digits_finetune_yaml(tmp_path: Path, root: Path) -> Path:
    """A 2-step fine-tuning config of one task, `digits`, on the dataset `root`; output in tmp_path/run."""
    config = tmp_path / "ft.yaml"
    tasks = {"digits": {"data": [str(root)]}}
    stages = [{"tasks": ["digits"], "steps": 2}]
    settings = {"output_dir": str(tmp_path / "run"), "num_workers": 0}
    config.write_text(
        yaml.safe_dump({"model_overrides": SMALL_MODEL_OVERRIDES, "tasks": tasks, "stages": stages, **settings})
    )
    return config


def test_an_eval_split_without_rows_fails_before_training(tmp_path, capsys):
    """Item 10: no test rows -> ConfigError before any step, naming the task and the split."""
    root = tmp_path / "digits"
    root.mkdir()
    rows = [{"text": f"note {i}", "label": "ab"[i % 2], "split": "train" if i < 6 else "val"} for i in range(8)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["finetune", str(digits_finetune_yaml(tmp_path, root))]) == 2
    assert f"error: tasks.digits.data: no 'test' rows in {root / 'manifest.jsonl'}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "stages").exists()


def test_embed_checks_its_output_before_any_work(tmp_path, tiny_model, capsys):
    """Item 10: an output under a file fails before embedding (pyarrow, for parquet parts, comes with datasets)."""
    tiny_model.save_pretrained(tmp_path / "m")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert (
        main(
            [
                "embed",
                "--model",
                str(tmp_path / "m"),
                "--input",
                str(SAMPLE / "digits"),
                "--output",
                str(blocker / "emb"),
            ]
        )
        == 2
    )
    assert f"error: {blocker}: cannot write the embeddings there" in capsys.readouterr().err


def test_bad_model_folders_and_manifests_are_one_error_line(tmp_path, tiny_model, capsys):
    """Item 12: a missing local folder is not taken for a hub id; a corrupt or pickled
    model.safetensors and a non-UTF-8 manifest are named."""
    args = ["embed", "--input", str(SAMPLE / "digits"), "--output", str(tmp_path / "e"), "--model"]
    assert main([*args, str(tmp_path / "runs" / "ft" / "model")]) == 2
    assert "runs/ft/model: no such model folder (and not a hub id)" in capsys.readouterr().err
    tiny_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    for content in (b"", weights.read_bytes()[:100], b"\x80\x04\x95pickle"):
        weights.write_bytes(content)
        with pytest.raises(ModelError, match=rf"{weights}: not a readable safetensors file"):
            omnivec.OmniVecModel.from_pretrained(tmp_path / "m")
    manifest = tmp_path / "latin1" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{manifest}: not UTF-8 text"):
        load_task(manifest)


def test_a_moved_model_with_a_summarization_head_loads_and_writes(tmp_path):
    """Item 2: the head uses the model folder's tokenizer, wherever the folder is copied."""
    model = omnivec.build_model("omnivec_tiny", **SMALL_MODEL_OVERRIDES)
    from omnivec.datasets import find_tasks
    from omnivec.finetune_config import TaskSpec
    from omnivec.tasks import head_config

    data = find_tasks(SAMPLE / "acl_summaries")
    model.add_head(
        "summaries",
        head_config(
            "summaries",
            TaskSpec(
                head="summarization", data=["x"], head_args={"dim": 16, "depth": 1, "num_heads": 2, "max_new_tokens": 4}
            ),
            data,
            model.config,
        ),
    )
    model.save_pretrained(tmp_path / "a" / "model")
    assert json.loads((tmp_path / "a" / "model" / "config.json").read_text())["heads"]["summaries"]["tokenizer"] == ""
    shutil.copytree(tmp_path / "a" / "model", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    moved = omnivec.OmniVecModel.from_pretrained(tmp_path / "b").eval()
    assert moved.heads["summaries"].cfg.tokenizer == str(tmp_path / "b" / "tokenizer")
    text = moved.transforms()["text"]("A short abstract about parsing.")
    batch = {k: v[None] for k, v in text.items()}
    with torch.no_grad():
        assert isinstance(moved.predict("summaries", batch)[0], str)


def test_python_api_inputs_are_converted_or_refused(tiny_model):
    """Item 13: each case converted (documented) or refused with an InputError naming the modality."""
    x = omnivec.example_inputs(tiny_model.config, 2)
    with torch.no_grad():
        ref = tiny_model.embed({"image": x["image"]})["image"]
        for dtype in (torch.float64, torch.float16):  # other float precisions: cast to the weights'
            assert torch.allclose(tiny_model.embed({"image": x["image"].to(dtype)})["image"], ref, atol=5e-3)
        for modality in ("video", "point_cloud", "image"):  # an empty batch
            with pytest.raises(InputError, match=f"{modality}: expected a batch of at least one sample"):
                tiny_model.embed({modality: x[modality][:0]})
        with pytest.raises(InputError, match="image: expected model-ready values"):  # finite but overflowing
            tiny_model.embed({"image": torch.full_like(x["image"], 1e38)})
        empty = {
            "input_ids": torch.zeros(1, 4, dtype=torch.long),
            "attention_mask": torch.zeros(1, 4, dtype=torch.long),
        }
        with pytest.raises(InputError, match="text: expected at least one real token per text"):
            tiny_model.embed({"text": empty})
    transforms = tiny_model.transforms()
    grey = torch.randint(0, 256, (5, 20, 20), dtype=torch.uint8)  # [T, H, W]: grey frames
    assert torch.equal(transforms["video"](grey), transforms["video"](grey[..., None].expand(-1, -1, -1, 3)))
    with pytest.raises(InputError, match=r"video: expected frames \[T >= 1"):
        transforms["video"](torch.zeros(0, 20, 20, 3, dtype=torch.uint8))
    audio = transforms["audio"]
    with pytest.raises(InputError, match="audio: expected a positive sample rate, got 0"):
        audio(torch.zeros(1, 800), 0)
    with pytest.raises(InputError, match=r"soundfile's \[samples, channels\] layout pass waveform.T"):
        audio(torch.zeros(16000, 2), 16000)
    pcm = (np.sin(np.arange(16000) / 10) * 16000).astype(np.int16)
    assert torch.allclose(
        audio(torch.from_numpy(pcm)[None], 16000),
        audio(torch.from_numpy(pcm.astype(np.float32) / 32768)[None], 16000),
        atol=1e-4,
    )


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickled_hf_checkpoint_with_code_is_refused_naming_safetensors(tmp_path, capsys):
    """Item 12: a `hf:` folder whose pytorch_model.bin holds a payload: ConfigError, nothing runs,
    and the way on is safetensors (not weights_only=False)."""
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=4,
        ),
        add_pooling_layer=False,
    )
    vit.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "model.safetensors").unlink()
    torch.save({**vit.state_dict(), "payload": Payload()}, tmp_path / "vit" / "pytorch_model.bin")
    with pytest.raises(
        ConfigError, match="modalities.image.pretrained: .*refused and nothing in it ran.*safetensors"
    ) as e:
        omnivec.build_model("omnivec_tiny", **{"modalities.image.pretrained": f"hf:{tmp_path / 'vit'}"})
    assert "weights_only" not in str(e.value) and "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, key", [("betas=[0.9, 1.5]", "betas"), ("seed=-1", "seed"), ("data={image: []}", "data.image")]
)
def test_impossible_loop_values_are_one_error_line(override, key, capsys):
    """Item 12: bad betas, seed and an empty dataset list name their key before any work."""
    assert main(["pretrain", "configs/pretrain/tiny.yaml", override]) == 2
    assert f"error: {key}: expected" in capsys.readouterr().err


def test_search_takes_a_model_when_the_index_outlived_its_folder(tmp_path, tiny_model, capsys):
    """Item 2: an index records its model's absolute folder; --model points at a moved copy."""
    tiny_model.save_pretrained(tmp_path / "m")
    assert (
        main(
            [
                "embed",
                "--model",
                str(tmp_path / "m"),
                "--input",
                str(SAMPLE / "shapes"),
                "--output",
                str(tmp_path / "index"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "index" / "embeddings.json").read_text())["model"] == str((tmp_path / "m").resolve())
    shutil.move(tmp_path / "m", tmp_path / "moved")
    query = sorted((SAMPLE / "shapes").rglob("*.ply"))[0]
    assert main(["search", "--index", str(tmp_path / "index"), "--query", str(query), "-k", "1"]) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--index",
                str(tmp_path / "index"),
                "--query",
                str(query),
                "-k",
                "1",
                "--model",
                str(tmp_path / "moved"),
            ]
        )
        == 0
    )
    assert str(query.resolve()) in capsys.readouterr().out


def test_point_cloud_normals_setting_refuses_a_file_whose_columns_are_colours(tmp_path, tiny_config):
    """normals=true reads columns 3:6 as normals: a coloured cloud without normals has its colours
    there, and is named instead of trained on with colours rotated as if they were normals."""
    from dataclasses import replace

    import open3d as o3d

    from omnivec.datasets.readers import load_sample
    from omnivec.modalities.point_cloud import PointCloudTransform

    rng = np.random.default_rng(0)
    xyz, colours = rng.normal(size=(64, 3)), rng.uniform(size=(64, 3))
    plain, with_normals = tmp_path / "coloured.ply", tmp_path / "normals.ply"
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.colors = o3d.utility.Vector3dVector(colours)
    o3d.io.write_point_cloud(str(plain), cloud)
    cloud.normals = o3d.utility.Vector3dVector(xyz / np.linalg.norm(xyz, axis=1, keepdims=True))
    o3d.io.write_point_cloud(str(with_normals), cloud)
    transform = PointCloudTransform(replace(tiny_config.modalities["point_cloud"], in_chans=6, normals=True))
    with pytest.raises(DataError, match=rf"{plain}: .*normals=true expects unit normals in columns 3:6.*colours"):
        load_sample({"path": plain}, "point_cloud", transform)
    points = load_sample({"path": with_normals}, "point_cloud", transform)  # [num_points, 6]
    assert torch.allclose(points[:, 3:].norm(dim=1), torch.ones(len(points)), atol=1e-5)
    assert transform(np.zeros((5, 6), np.float32)).shape[1] == 6  # zero normals: points without one


@pytest.mark.parametrize("modality", ["image", "video", "audio", "point_cloud"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_tensor_input_is_named(tiny_model, tiny_config, modality, value):
    x = omnivec.example_inputs(tiny_config, 2)[modality].clone()
    x.view(-1)[5] = value
    with pytest.raises(InputError, match=rf"{modality}: expected finite values, got {value}"):
        tiny_model.embed({modality: x})


def test_wrong_sample_rate_and_channels_are_converted(tiny_model):
    """Audio at any rate and channel count becomes the configured mono fbank (resampled, averaged)."""
    transform = tiny_model.transforms()["audio"]
    cfg = tiny_model.config.modalities["audio"]
    t = torch.linspace(0, 1, 8000)
    mono16k = transform(torch.sin(2 * torch.pi * 440 * torch.linspace(0, 1, 16000)), 16000)
    stereo8k = transform(torch.stack([torch.sin(2 * torch.pi * 440 * t)] * 2), 8000)
    assert stereo8k.shape == mono16k.shape == (cfg.target_frames, cfg.num_mel_bins)
    assert torch.isfinite(stereo8k).all()
    # resampled: the 8 kHz tone gives about the 16 kHz tone's fbank (noise differs by ~1.8 per bin)
    assert (stereo8k - mono16k).abs().mean() < 0.25
    assert torch.equal(stereo8k.argmax(1), mono16k.argmax(1))  # its energy in the same mel bin
    # averaged: two channels give the fbank of their mean
    tone = torch.sin(2 * torch.pi * 440 * t)
    torch.testing.assert_close(
        transform(torch.stack([tone, torch.zeros_like(tone)]), 8000), transform(0.5 * tone, 8000)
    )


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_image_mode_becomes_the_configured_channels(tiny_model, mode):
    from PIL import Image

    image = Image.new("RGB", (20, 12), (200, 30, 90)).convert(mode)
    x = tiny_model.transforms()["image"](image)
    cfg = tiny_model.config.modalities["image"]
    assert x.shape == (cfg.in_chans, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()


@pytest.mark.parametrize("shape", [(100, 2), (100,), (0, 3)])
def test_wrong_point_dimension_is_named(tiny_model, shape):
    with pytest.raises(InputError, match=r"point_cloud: expected points \[N >= 1, 3\].*got shape"):
        tiny_model.transforms()["point_cloud"](np.zeros(shape, dtype=np.float32))


def test_extra_point_columns_are_dropped(tiny_model):
    x = tiny_model.transforms()["point_cloud"](np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32))
    assert x.shape == (tiny_model.config.modalities["point_cloud"].num_points, 3)


def test_text_longer_than_the_model_maximum(tiny_model):
    """Files and strings are truncated to max_length by the transform; a tensor that is too long is refused."""
    max_length = tiny_model.config.modalities["text"].max_length
    x = tiny_model.transforms()["text"]("a very long text " * 500)
    assert x["input_ids"].shape == (max_length,)
    too_long = {"input_ids": torch.ones(1, max_length + 1, dtype=torch.long)}
    with pytest.raises(
        InputError, match=rf"text: expected input_ids \[B, L <= {max_length}\].*got length {max_length + 1}"
    ):
        tiny_model.embed({"text": too_long})


def test_corrupt_text_file_is_named(tmp_path, tiny_model):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    (tmp_path / "a" / "empty.txt").write_bytes(b"")
    dataset = TaskDataset(load_task(tmp_path), transform=tiny_model.transforms()["text"])
    names = {Path(r["path"]).name: i for i, r in enumerate(dataset.rows)}
    for name in ("bad.txt", "empty.txt"):
        with pytest.raises(DataError, match=name):
            dataset[names[name]]


@pytest.mark.integration
def test_unknown_label_for_a_trained_head_is_named(tmp_path):
    from omnivec.evaluation import evaluate_saved
    from omnivec.finetune_config import FinetuneConfig
    from omnivec.finetuning import finetune

    base = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "batch_size": 8,
        "num_workers": 0,
        "warmup_steps": 1,
        "save_every": 0,
        "eval_max_batches": 1,
        "device": "cpu",
        "stages": [{"tasks": ["digits"], "steps": 1}],
        "output_dir": str(tmp_path / "run"),
    }
    finetune(
        from_dict(
            FinetuneConfig,
            {**base, "tasks": {"digits": {"head": "classification", "data": [str(SAMPLE / "digits")]}}},
            "",
        )
    )
    data = tmp_path / "more_digits"
    data.mkdir()
    for i in range(2):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", data / f"{i}.png")
    (data / "manifest.jsonl").write_text(
        json.dumps({"path": "0.png", "label": "0", "split": "test"})
        + "\n"
        + json.dumps({"path": "1.png", "label": "eleven", "split": "test"})
        + "\n"
    )
    cfg = from_dict(FinetuneConfig, {**base, "tasks": {"digits": {"head": "classification", "data": [str(data)]}}}, "")
    with pytest.raises(
        DataError, match=r"manifest.jsonl:2: label 'eleven' is not one of the 10 labels the 'digits' head"
    ):
        evaluate_saved(tmp_path / "run" / "model", cfg, "test", tmp_path / "eval")


def test_configs_never_run_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("max_steps: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe_config(PretrainConfig, path)
    assert not Path("pwned").exists()


def test_manifest_paths_cannot_escape_the_dataset_root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.jsonl").write_text(json.dumps({"path": "../secret.png", "label": "a"}) + "\n")
    with pytest.raises(DataError, match=r"manifest.jsonl:1: path .../secret.png. leaves the dataset folder"):
        load_task(tmp_path / "data")


def test_pickled_code_in_a_library_checkpoint_is_refused(tmp_path):
    from omnivec.pretrained.loading import read_weights

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(ConfigError, match="not a weights-only PyTorch checkpoint"):
        read_weights(path)
    assert not Path("pwned").exists()


BILLION_LAUGHS = (
    "\n".join(
        ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    )
    + "\n"
)


def test_a_yaml_alias_bomb_fails_fast(tmp_path):
    """Item 9: nine levels of nine aliases (9**9 values once expanded) plus an override: a
    ConfigError naming the file at once (an address-space limit turns a regression into a
    MemoryError instead of exhausting the machine)."""
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    self_referencing = tmp_path / "loop.yaml"
    self_referencing.write_text("model_overrides: &a {x: [*a]}\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (in_use + 2 * 2**30, hard))
    try:
        started = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"{path}: expands to 490,329,055 values, more than the 100,000"):
            load_recipe_config(PretrainConfig, path, ["max_steps=3"])
        with pytest.raises(ConfigError, match=rf"{self_referencing}: a value contains itself"):
            load_recipe_config(PretrainConfig, self_referencing, ["max_steps=3"])
        with pytest.raises(ConfigError, match="max_steps: expands to"):
            load_recipe_config(
                PretrainConfig,
                pretrain_yaml(tmp_path, "run"),
                ["max_steps=" + BILLION_LAUGHS.replace("\n", ", ").join("{}")],
            )
        from omnivec.recipe_config import merge

        with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
            merge(yaml.safe_load(path.read_text()), {"i": None})
        assert time.perf_counter() - started < 2
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_missing_file_stops_finetuning_before_any_step(tmp_path, capsys):
    """A manifest row whose file is gone is named before training, not when a batch reaches it;
    with skip_bad the dataset is built and the row is skipped when read."""
    root = tmp_path / "digits"
    root.mkdir()
    rows = []
    for i in range(8):
        Image.new("L", (8, 8), 30 * i).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 6 else "test"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "5.png").unlink()
    assert main(["finetune", str(digits_finetune_yaml(tmp_path, root))]) == 2
    err = capsys.readouterr().err
    assert "tasks.digits.data: 1 of the 6 samples in split 'train' name a file that is not there" in err
    assert f"manifest.jsonl:6: {root / '5.png'}" in err
    assert not (tmp_path / "run" / "stages").exists()

    with pytest.raises(DataError, match=r"1 of the 6 samples in split 'train'"):
        TaskDataset(load_task(root), "train")
    assert main(["finetune", str(digits_finetune_yaml(tmp_path, root)), "skip_bad=true", "overwrite=true"]) == 0
    (root / "7.png").unlink()  # evaluation reads every row: skip_bad does not cover the test split
    assert main(["finetune", str(digits_finetune_yaml(tmp_path, root)), "skip_bad=true", "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert "tasks.digits.data: 1 of the 2 samples in split 'test' name a file that is not there" in err
    assert "Fix the manifest (`omnivec data check` lists all)" in err
    ds = TaskDataset(load_task(root), "train", transform=lambda im: torch.zeros(1), skip_bad=True)
    assert [s["index"] for s in (ds[i] for i in range(len(ds))) if "error" in s] == [5]


def test_a_null_path_or_text_in_a_manifest_is_named(tmp_path):
    """JSON null is not the file or text "None": the row and the column are named."""
    root = tmp_path / "notes"
    root.mkdir()
    for column in ("path", "text"):
        (root / "manifest.jsonl").write_text(json.dumps({column: None, "label": "a"}) + "\n")
        with pytest.raises(DataError, match=rf"manifest.jsonl:1: {column} is null: expected a value"):
            load_task(root)


def test_test_classes_never_trained_on_are_warned_about(tmp_path):
    from omnivec.finetune_config import FinetuneConfig
    from omnivec.tasks import load_task_data

    root = tmp_path / "notes"
    root.mkdir()
    rows = [{"text": f"note {i}", "label": "ab"[i % 2], "split": "train"} for i in range(6)]
    rows += [{"text": "odd one", "label": "c", "split": "test"}, {"text": "note", "label": "a", "split": "test"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict(FinetuneConfig, {"tasks": {"notes": {"data": [str(root)]}}, "stages": [{"tasks": ["notes"]}]}, "")
    with pytest.warns(UserWarning, match=r"tasks.notes: the 'test' split holds 1 class\(es\) no 'train' row has \(c\)"):
        load_task_data(cfg)


def test_pretraining_looks_for_the_files_of_the_splits_it_reads_only(tmp_path):
    """A missing test file does not stop pretraining (it reads train and val); a missing val file, or
    a name too long for the file system, is named."""
    from omnivec.datasets.loaders import modality_tasks

    root = tmp_path / "digits"
    root.mkdir()
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        Image.new("L", (8, 8), 30 * i).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": split})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "3.png").unlink()
    assert len(modality_tasks({"image": [str(root)]}, check_files=True)["image"][0].rows) == 4
    (root / "2.png").unlink()
    with pytest.raises(DataError, match=r"^data.image: 1 of the 3 samples name a file that is not there: .*:3: "):
        modality_tasks({"image": [str(root)]}, check_files=True)
    rows[2]["path"] = "b" * 300 + ".png"
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"b+\.png: cannot be looked up \(File name too long\)"):
        modality_tasks({"image": [str(root)]}, check_files=True)
