"""Crashes, bad input and untrusted files: each fails loudly, naming what was wrong, and loses no work."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import omnivec
from omnivec import ConfigError, DataError, InputError
from omnivec.config import from_dict, load_recipe_config
from omnivec.datasets.dataset import TaskDataset
from omnivec.datasets.manifest import load_task
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.training import latest_checkpoint
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES


def pretrain_yaml(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny", "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")], "point_cloud": [str(SAMPLE / "shapes")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4, "num_workers": 0, "warmup_steps": 1, "log_every": 1, "eval_batches": 1, "plot_samples": 1,
        "max_steps": 12, "save_every": 2, "output_dir": str(tmp_path / name), "device": "cpu",
    }
    data.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def omnivec_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "omnivec", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def logged_steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").is_file():
        return []
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]


@pytest.mark.integration
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """SIGKILL a real pretraining process at a random step, resume with resume=auto: the final
    weights equal an uninterrupted run's, bit for bit."""
    subprocess.run(omnivec_cli("pretrain", str(pretrain_yaml(tmp_path, "full"))), env=ENV, check=True,
                   capture_output=True, timeout=600)
    config = pretrain_yaml(tmp_path, "killed")
    kill_at = random.Random(os.getpid()).randint(3, 10)
    process = subprocess.Popen(omnivec_cli("pretrain", str(config)), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not logged_steps(tmp_path / "killed") or logged_steps(tmp_path / "killed")[-1] < kill_at:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it really died before the end
    resumed = subprocess.run(omnivec_cli("pretrain", str(config), "resume=auto"), env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), f"{name} differs (killed after step {kill_at})"


KILL_DURING_SAVE = """
import os, signal, sys
import omnivec.model
calls = []
real = omnivec.model.save_model
def dying_save(model, filename, *args, **kwargs):
    calls.append(filename)
    if len(calls) == 2:  # the second checkpoint: write part of the file, then die
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, filename, *args, **kwargs)
omnivec.model.save_model = dying_save
from omnivec.cli import main
sys.exit(main(["pretrain", sys.argv[1]]))
"""


@pytest.mark.integration
def test_a_kill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=6)
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(config)], env=ENV, capture_output=True,
                            timeout=600)
    assert result.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / ".tmp-step_00000004").is_dir()  # the half-written one stays aside
    assert latest_checkpoint(tmp_path / "run") == checkpoints / "step_00000002"
    omnivec.OmniVecModel.from_pretrained(checkpoints / "step_00000002" / "model")  # complete and loadable
    cfg = load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=4"])
    summary = pretrain(cfg)  # resumes from step 2, replaces the half-written step 4
    assert summary["steps"] == 4 and not list(checkpoints.glob(".tmp-*"))


@pytest.mark.integration
def test_resuming_a_checkpoint_of_another_config_names_the_tensors(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=2)
    pretrain(load_recipe_config(PretrainConfig, config))
    other = load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=4", "model_overrides.backbone.dim=64"])
    with pytest.raises(ConfigError, match=r"step_00000002: written for a different configuration.*wrong shapes"):
        pretrain(other)


@pytest.mark.integration
def test_skipped_samples_are_listed_at_the_end(tmp_path):
    data = tmp_path / "digits"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", data / "images" / f"{i:04d}.png")
        rows.append({"path": f"images/{i:04d}.png", "label": str(i % 2), "split": "train" if i < 6 else "val"})
    (data / "images" / "0003.png").write_bytes(b"\x89PNG not really")
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=3, save_every=0,
                                                           data={"image": [str(data)]}), ["skip_bad=true"])
    summary = pretrain(cfg)
    assert summary["steps"] == 3
    assert summary["skipped_samples"] and all("0003.png" in s for s in summary["skipped_samples"])
    with pytest.raises(DataError, match="0003.png"):  # without skip_bad the run stops on it
        pretrain(load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "strict", max_steps=3, save_every=0,
                                                                  data={"image": [str(data)]})))


# --- bad tensors and files, one per case -------------------------------------------------------


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
    torch.testing.assert_close(transform(torch.stack([tone, torch.zeros_like(tone)]), 8000), transform(0.5 * tone, 8000))


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
    with pytest.raises(InputError, match=rf"text: expected input_ids \[B, L <= {max_length}\].*got length {max_length + 1}"):
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
    from omnivec.finetuning import FinetuneConfig, evaluate_saved, finetune

    base = {"model": "omnivec_tiny", "model_overrides": SMALL_MODEL_OVERRIDES, "batch_size": 8, "num_workers": 0,
            "warmup_steps": 1, "save_every": 0, "eval_max_batches": 1, "device": "cpu",
            "stages": [{"tasks": ["digits"], "steps": 1}], "output_dir": str(tmp_path / "run")}
    finetune(from_dict(FinetuneConfig, {**base, "tasks": {"digits": {"head": "classification",
                                                                      "data": [str(SAMPLE / "digits")]}}}, ""))
    data = tmp_path / "more_digits"
    data.mkdir()
    for i in range(2):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", data / f"{i}.png")
    (data / "manifest.jsonl").write_text(json.dumps({"path": "0.png", "label": "0", "split": "test"}) + "\n"
                                         + json.dumps({"path": "1.png", "label": "eleven", "split": "test"}) + "\n")
    cfg = from_dict(FinetuneConfig, {**base, "tasks": {"digits": {"head": "classification", "data": [str(data)]}}}, "")
    with pytest.raises(DataError, match=r"manifest.jsonl:2: label 'eleven' is not one of the 10 labels the 'digits' head"):
        evaluate_saved(tmp_path / "run" / "model", cfg, "test", tmp_path / "eval")


# --- untrusted files ---------------------------------------------------------------------------


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


@pytest.mark.integration
def test_every_torch_load_on_resume_is_weights_only(tmp_path, monkeypatch):
    """Model weights are safetensors; accelerate's optimizer / scheduler / RNG files are read with
    torch.load(weights_only=True), which cannot run pickled code."""
    config = pretrain_yaml(tmp_path, "run", max_steps=2)
    pretrain(load_recipe_config(PretrainConfig, config))
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=3"]))
    assert calls and all(w is True for w in calls), calls


def test_pickled_code_in_a_library_checkpoint_is_refused(tmp_path):
    from omnivec.encoders.loading import read_weights

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(ConfigError, match="not a weights-only PyTorch checkpoint"):
        read_weights(path)
    assert not Path("pwned").exists()
