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
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES
from safetensors.torch import load_file
from torch import nn

import omnivec
from omnivec import ConfigError, DataError, InputError, ModelError
from omnivec.checkpointing import latest_checkpoint
from omnivec.datasets.dataset import TaskDataset
from omnivec.datasets.sources import load_task
from omnivec.parsing import from_dict
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.recipe_config import load_recipe_config


def pretrain_yaml(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")], "point_cloud": [str(SAMPLE / "shapes")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "max_steps": 12,
        "save_every": 2,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
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
    subprocess.run(
        omnivec_cli("pretrain", str(pretrain_yaml(tmp_path, "full"))),
        env=ENV,
        check=True,
        capture_output=True,
        timeout=600,
    )
    config = pretrain_yaml(tmp_path, "killed")
    kill_at = random.Random(os.getpid()).randint(3, 10)
    process = subprocess.Popen(
        omnivec_cli("pretrain", str(config)), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not logged_steps(tmp_path / "killed") or logged_steps(tmp_path / "killed")[-1] < kill_at:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it really died before the end
    resumed = subprocess.run(
        omnivec_cli("pretrain", str(config), "resume=auto"), env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), f"{name} differs (killed after step {kill_at})"


KILL_DURING_SAVE = """
import os, signal, sys
import omnivec.saved_model
calls = []
real = omnivec.saved_model.save_file
def dying_save(tensors, filename, *args, **kwargs):
    calls.append(filename)
    if len(calls) == 2:  # the second checkpoint: write part of the file, then die
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, filename, *args, **kwargs)
omnivec.saved_model.save_file = dying_save
from omnivec.cli import main
sys.exit(main(["pretrain", sys.argv[1]]))
"""


@pytest.mark.integration
def test_a_kill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=6)
    result = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(config)], env=ENV, capture_output=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / ".tmp-step_00000004").is_dir()  # the half-written one stays aside
    assert latest_checkpoint(tmp_path / "run") == checkpoints / "step_00000002"
    omnivec.OmniVecModel.from_pretrained(checkpoints / "step_00000002" / "model")  # complete and loadable
    cfg = load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=4"])
    summary = pretrain(cfg)  # resumes from step 2, replaces the half-written step 4
    assert summary["steps"] == 4 and not list(checkpoints.glob(".tmp-*"))


@pytest.mark.parametrize("fused", [False, True])
def test_filled_optimizer_state_is_the_state_adamw_would_create(fused):
    """`fill_optimizer_state` (before FSDP checkpoints) gives a parameter that has had no gradient
    the state AdamW creates at its first update, so training goes on bitwise as without it."""
    from omnivec.checkpointing import fill_optimizer_state

    def train(fill: bool) -> tuple[nn.Module, torch.optim.AdamW]:
        torch.manual_seed(0)
        model = nn.ModuleDict({"used": nn.Linear(4, 4), "idle": nn.Linear(4, 4)})
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.05, fused=fused)
        for step in range(4):
            model["used"](torch.randn(2, 4)).square().sum().backward()
            if step >= 2:  # the idle module's turn comes after the fill
                model["idle"](torch.randn(2, 4)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 0 and fill:
                assert not optimizer.state[model["idle"].weight]
                fill_optimizer_state(optimizer)
                state = optimizer.state[model["idle"].weight]
                assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
        return model, optimizer

    (filled, filled_opt), (plain, plain_opt) = train(True), train(False)
    for (name, a), b in zip(filled.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(filled.parameters(), plain.parameters()):
        for key, value in plain_opt.state[b].items():
            assert filled_opt.state[a][key].dtype == value.dtype and filled_opt.state[a][key].device == value.device
            assert torch.equal(filled_opt.state[a][key], value), key


@pytest.mark.integration
def test_resuming_a_checkpoint_of_another_config_names_the_tensors(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=2)
    pretrain(load_recipe_config(PretrainConfig, config))
    other = load_recipe_config(
        PretrainConfig, config, ["resume=auto", "max_steps=4", "model_overrides.backbone.dim=64"]
    )
    with pytest.raises(
        ConfigError, match=r"holds a run of another config \(model_overrides.backbone.dim: 32 there, 64 now\)"
    ):
        pretrain(other)  # refused up front, from the run's run_config.json
    (tmp_path / "run" / "run_config.json").unlink()  # a run of an older omnivec: the checkpoint's tensors tell
    with pytest.raises(ConfigError, match=r"step_00000002: written for a different configuration.*wrong shapes"):
        pretrain(other)


def digits_with_bad_files(tmp_path: Path, bad: list[str]) -> Path:
    """Eight sample digits (six train, two val) in a dataset folder, the files named in `bad` corrupted."""
    data = tmp_path / "digits"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", data / "images" / f"{i:04d}.png")
        rows.append({"path": f"images/{i:04d}.png", "label": str(i % 2), "split": "train" if i < 6 else "val"})
    for name in bad:
        (data / "images" / name).write_bytes(b"\x89PNG not really")
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.integration
def test_skipped_samples_are_listed_at_the_end(tmp_path):
    data = digits_with_bad_files(tmp_path, ["0003.png"])
    cfg = load_recipe_config(
        PretrainConfig,
        pretrain_yaml(tmp_path, "run", max_steps=3, save_every=0, data={"image": [str(data)]}),
        ["skip_bad=true"],
    )
    summary = pretrain(cfg)
    assert summary["steps"] == 3
    assert summary["skipped_samples"] and all("0003.png" in s for s in summary["skipped_samples"])
    with pytest.raises(DataError, match="0003.png"):  # without skip_bad the run stops on it
        pretrain(
            load_recipe_config(
                PretrainConfig,
                pretrain_yaml(tmp_path, "strict", max_steps=3, save_every=0, data={"image": [str(data)]}),
            )
        )


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
    from omnivec.pretrained.loading import read_weights

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(ConfigError, match="not a weights-only PyTorch checkpoint"):
        read_weights(path)
    assert not Path("pwned").exists()


# --- issue 14: nothing lost, nothing silent ------------------------------------------------------


def nan_image_loss_at(step_index: int):
    """A `MaskedPretrainer.forward` whose image loss is NaN at 0-based step `step_index` (logged as step + 1)."""
    from omnivec.mae import MaskedPretrainer

    real = MaskedPretrainer.forward

    def forward(self, batch, step=0, **kwargs):
        losses = real(self, batch, step, **kwargs)
        if step == step_index:
            losses["image"] = losses["image"] * float("nan")
        return losses

    return forward


@pytest.mark.parametrize("log_every, save_every", [(5, 2), (2, 0)])
def test_a_nan_loss_stops_the_run_naming_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, log_every, save_every
):
    """Item 3: the NaN at step 3 is found at the next log or checkpoint, whichever comes first; the
    step-2 checkpoint (if any) stays the newest, and no model holding NaN weights is written."""
    from omnivec.errors import TrainingError
    from omnivec.mae import MaskedPretrainer

    monkeypatch.setattr(MaskedPretrainer, "forward", nan_image_loss_at(2))
    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=8, log_every=log_every, save_every=save_every)
    )
    with pytest.raises(TrainingError, match=r"step 3: the 'image' loss is nan; training stopped") as error:
        pretrain(cfg)
    run = tmp_path / "run"
    assert not (run / "model").exists()
    if save_every:
        assert latest_checkpoint(run) == run / "checkpoints" / "step_00000002"
        assert str(latest_checkpoint(run)) in str(error.value)
        kept = omnivec.OmniVecModel.from_pretrained(latest_checkpoint(run) / "model")  # refuses NaN weights
        assert all(torch.isfinite(p).all() for p in kept.parameters())
    else:
        assert latest_checkpoint(run) is None and "no checkpoint" in str(error.value)
    assert max(logged_steps(run), default=0) < 3  # nothing of the bad interval was logged as a result


@pytest.mark.parametrize("schedule", ["all", "round_robin"])
def test_each_modality_s_logged_loss_is_its_mean_over_the_steps_that_had_it(tmp_path, monkeypatch, schedule):
    """round_robin trains one modality per step: its logged loss is the mean over its own steps,
    not diluted by the other modalities' steps."""
    from omnivec.mae import MaskedPretrainer

    real = MaskedPretrainer.forward
    monkeypatch.setattr(
        MaskedPretrainer,
        "forward",
        lambda self, batch, step=0, generator=None: {
            m: v * 0 + {"image": 1.0, "point_cloud": 3.0}[m] for m, v in real(self, batch, step, generator).items()
        },
    )
    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=4, log_every=4, save_every=0, schedule=schedule)
    )
    pretrain(cfg)
    record = next(
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"lr"' in line
    )
    assert record["loss/image"] == pytest.approx(1.0) and record["loss/point_cloud"] == pytest.approx(3.0)


def test_a_diverging_learning_rate_stops_the_run(tmp_path):
    """Item 3, no injection: lr=1e30 without clipping blows the weights up within a few steps."""
    from omnivec.errors import TrainingError

    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=6, log_every=3), ["lr=1e30", "clip_grad=0"]
    )
    with pytest.raises(TrainingError, match=r"step \d: the '(image|point_cloud)' loss is (nan|inf|-inf)"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "model").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step_*"):  # whatever was saved holds finite weights
        omnivec.OmniVecModel.from_pretrained(checkpoint / "model")


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """Item 3: weights that turn NaN while the losses stay finite (here: the unused text decoder)
    are caught when the checkpoint is about to be written."""
    from omnivec.errors import TrainingError
    from omnivec.mae import MaskedPretrainer

    real = MaskedPretrainer.forward

    def forward(self, batch, step=0, **kwargs):
        if step == 2:
            with torch.no_grad():
                self.decoders["text"].pred.weight[0, 0] = float("inf")
        return real(self, batch, step, **kwargs)

    monkeypatch.setattr(MaskedPretrainer, "forward", forward)
    cfg = load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=6, log_every=1))
    with pytest.raises(TrainingError, match=r"step 4: the weights hold NaN or Inf \(decoders.text.pred.weight\)"):
        pretrain(cfg)
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step_00000002"


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=inf", "lr"),
        ("weight_decay=.inf", "weight_decay"),
        ("min_lr=.nan", "min_lr"),
        ("clip_grad=-.inf", "clip_grad"),
        ("betas=[0.9, .nan]", r"betas\[1\]"),
        ("weights={image: .inf}", r"weights\.image"),
        ("decoder.mlp_ratio=.inf", r"decoder\.mlp_ratio"),
    ],
)
def test_non_finite_numbers_in_a_training_config_are_named(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number, got (nan|inf|-inf)"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), [override])


def test_a_saved_model_with_a_nan_weight_is_refused_naming_the_file_and_tensor(tmp_path, tiny_model):
    from safetensors.torch import save_file

    tiny_model.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    state = load_file(weights)
    state["backbone.norm.weight"][3] = float("nan")
    save_file(state, weights)
    with pytest.raises(ModelError, match=rf"{weights}: tensor backbone.norm.weight holds NaN or Inf"):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "model")


def fake_run(folder: Path, **files: str) -> dict[str, bytes]:
    """A run folder holding `files` (relative path -> text); returns every file's bytes, to compare later."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_folder_is_not_replaced_without_a_word(tmp_path):
    """Item 1: another run's folder is refused before any work unless resume=auto with the same
    config (max_steps may change) or overwrite=true; nothing in it changes when refused."""
    config = pretrain_yaml(tmp_path, "run", max_steps=2, save_every=0)
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    before = folder_bytes(run)
    with pytest.raises(
        ConfigError, match=rf"output_dir: {run} already holds a run \(model, checkpoints, metrics.jsonl"
    ):
        pretrain(load_recipe_config(PretrainConfig, config))
    with pytest.raises(ConfigError, match=r"holds a run of another config \(decoder.dim: 32 there, 16 now\)"):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto", "decoder.dim=16", "decoder.num_heads=2"]))
    with pytest.raises(ConfigError, match=r"^overwrite: expected false when resume is set"):
        load_recipe_config(PretrainConfig, config, ["resume=auto", "overwrite=true"])
    assert folder_bytes(run) == before
    summary = pretrain(
        load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=3"])
    )  # the same run, longer
    assert summary["steps"] == 3 and logged_steps(run) == [1, 2, 3]


def test_resume_auto_over_a_fine_tuned_run_is_refused(tmp_path):
    """Item 1, the reported case: pretraining with resume=auto into a fine-tuning run's folder,
    with its run_config.json or from before there was one."""
    config = pretrain_yaml(tmp_path, "ft", max_steps=2)
    ft = tmp_path / "ft"
    before = fake_run(
        ft,
        **{
            "model/config.json": "{}",
            "eval.json": "{}",
            "stages/1_digits/done.json": "{}",
            "run_config.json": json.dumps({"recipe": "finetune", "config": {}}),
        },
    )
    with pytest.raises(
        ConfigError, match=rf"output_dir: {ft} holds a finetune run; this pretrain run cannot resume it"
    ):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    (ft / "run_config.json").unlink()
    with pytest.raises(
        ConfigError,
        match=r"holds a run \(model, stages, eval.json\) with no run_config.json and no "
        r"checkpoint to resume from",
    ):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    before.pop("run_config.json")
    assert folder_bytes(ft) == before


def test_overwrite_removes_the_old_runs_outputs_only(tmp_path):
    """Item 1: overwrite=true leaves no stale tokenizer, eval.json or checkpoint of the old run,
    and no old metrics; files that are not run outputs stay."""
    run = tmp_path / "run"
    fake_run(
        run,
        **{
            "model/tokenizer/stale.txt": "old",
            "eval.json": "{}",
            "metrics.jsonl": '{"step": 0, "val/x": 1}\n',
            "checkpoints/step_00000009/trainer_state.json": "{}",
            "notes.txt": "mine",
        },
    )
    pretrain(
        load_recipe_config(
            PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=1, save_every=0), ["overwrite=true"]
        )
    )
    assert not (run / "model" / "tokenizer" / "stale.txt").exists() and not (run / "eval.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 1]
    assert (run / "notes.txt").read_text() == "mine"
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["recipe"] == "pretrain" and saved["config"]["max_steps"] == 1
    omnivec.OmniVecModel.from_pretrained(run / "model")


def test_resume_drops_the_records_logged_after_the_last_checkpoint(tmp_path):
    """Item 1: a run killed after logging steps past its last checkpoint logs them once when resumed."""
    config = pretrain_yaml(tmp_path, "run", max_steps=4, save_every=2)
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    shutil.rmtree(run / "model")  # as if killed after logging step 4, before its checkpoint
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    assert logged_steps(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("case", ["file", "under_a_file", "read_only"])
def test_an_output_dir_that_cannot_be_written_fails_before_any_work(tmp_path, monkeypatch, case):
    """Item 10: checked before the model is built (a file, a folder under a file, a read-only folder)."""
    import omnivec.pretraining
    import omnivec.run_dir

    if case == "read_only" and os.geteuid() == 0:  # root writes into read-only folders: refuse as the OS would

        def read_only(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(dir))

        monkeypatch.setattr(omnivec.run_dir.tempfile, "TemporaryFile", read_only)
    target = {"file": tmp_path / "taken", "under_a_file": tmp_path / "taken" / "run", "read_only": tmp_path / "ro"}[
        case
    ]
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "ro").mkdir(mode=0o555)
    monkeypatch.setattr(omnivec.pretraining, "build_model_for", lambda cfg: pytest.fail("the model was built"))
    cfg = load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), [f"output_dir={target}"])
    with pytest.raises(ConfigError, match=rf"^output_dir: {target} is a file|^output_dir: cannot write in {target} "):
        pretrain(cfg)


@pytest.mark.parametrize(
    "weights, key",
    [
        ({"image": -1}, r"weights\.image: expected a number >= 0"),
        ({"audio": 1.0}, r"weights\.audio: expected a weight for one of the modalities in data"),
        ({"image": 0, "point_cloud": 0}, r"weights: expected a positive weight"),
    ],
)
def test_pretraining_loss_weights_are_checked(tmp_path, weights, key):
    """Item 11 (non-finite weights: test_non_finite_numbers_in_a_training_config_are_named)."""
    with pytest.raises(ConfigError, match=rf"^{key}"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run", weights=weights))
    with pytest.raises(ConfigError, match=r"^weights: expected no weights with schedule=round_robin"):
        load_recipe_config(
            PretrainConfig, pretrain_yaml(tmp_path, "run", weights={"image": 2.0}, schedule="round_robin")
        )


def test_skip_bad_lists_each_bad_file_once(tmp_path):
    """Item 14: two bad files met in each of three epochs are listed once each."""
    data = digits_with_bad_files(tmp_path, ["0001.png", "0003.png"])
    cfg = load_recipe_config(
        PretrainConfig,
        pretrain_yaml(tmp_path, "run", max_steps=9, save_every=0, batch_size=2, data={"image": [str(data)]}),
        ["skip_bad=true"],
    )
    summary = pretrain(cfg)  # 9 steps of 2 samples: three epochs of 6
    skipped = summary["skipped_samples"]
    assert len(skipped) == 2 and sorted(Path(s.split(":")[0]).name for s in skipped) == ["0001.png", "0003.png"]


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
