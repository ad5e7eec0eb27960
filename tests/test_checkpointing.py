"""Checkpoints (omnivec/checkpointing.py): a kill at any moment loses only the steps since the last
one, resume is exact, a checkpoint of another config or holding NaN is refused, nothing is unpickled."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import (
    ENV,
    assert_resumed_as_before,
    change_tiny_variant,
    logged_steps,
    omnivec_cli,
    pretrain_yaml,
)
from safetensors.torch import load_file
from torch import nn

import omnivec
from omnivec import ConfigError, ModelError
from omnivec.checkpointing import latest_checkpoint
from omnivec.errors import CheckpointError
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.recipe_config import load_recipe_config


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


def test_a_run_resumes_after_its_variant_changed_and_ends_as_if_never_stopped(tmp_path, monkeypatch):
    """A later omnivec may change a variant's defaults (here: omnivec_tiny's text embeddings lose their
    norm, which drops tensors). A run recorded under the old defaults resumes from its checkpoint's
    saved model, not today's variant, and ends with the weights it had without the stop."""
    import shutil

    config = pretrain_yaml(tmp_path, "run", max_steps=4)  # checkpoints at steps 2 and 4
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    shutil.copytree(run / "model", tmp_path / "whole")
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if it had stopped after step 2
    change_tiny_variant(monkeypatch)
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    assert_resumed_as_before(tmp_path / "whole" / "model.safetensors", run / "model" / "model.safetensors")
    assert (run / "model" / "config.json").read_text() == (tmp_path / "whole" / "config.json").read_text()


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


def test_a_saved_model_with_a_nan_weight_is_refused_naming_the_file_and_tensor(tmp_path, tiny_model):
    from safetensors.torch import save_file

    tiny_model.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    state = load_file(weights)
    state["backbone.norm.weight"][3] = float("nan")
    save_file(state, weights)
    with pytest.raises(ModelError, match=rf"{weights}: tensor backbone.norm.weight holds NaN or Inf"):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "model")


DAMAGE = {
    "weights": ("state/model.safetensors", "its weights header"),
    "optimizer": ("state/optimizer.bin", "its training state"),
    "trainer_state": ("trainer_state.json", "trainer_state.json"),
}


@pytest.mark.integration
def test_resume_auto_passes_a_damaged_checkpoint_for_the_one_before_it(tmp_path):
    """A truncated file in the newest checkpoint (weights, optimizer, trainer state): resume=auto warns,
    naming it and the part, and continues from the checkpoint before; the same damage in every
    checkpoint, or a damaged checkpoint named explicitly, is one `CheckpointError`, not a traceback."""
    config = pretrain_yaml(tmp_path, "run", max_steps=4)
    pretrain(load_recipe_config(PretrainConfig, config))
    checkpoints = tmp_path / "run" / "checkpoints"
    pristine = tmp_path / "pristine"
    shutil.copytree(checkpoints, pristine)
    for file, part in DAMAGE.values():
        shutil.rmtree(checkpoints)
        shutil.copytree(pristine, checkpoints)
        damaged = checkpoints / "step_00000004" / file
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        with pytest.warns(UserWarning, match=rf"step_00000004: cannot read {part}.*the checkpoint before it"):
            summary = pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=6"]))
        assert summary["steps"] == 6 and logged_steps(tmp_path / "run")[:4] == [1, 2, 3, 4]
    for step in ("step_00000004", "step_00000006"):  # every checkpoint the run kept is damaged
        (checkpoints / step / "trainer_state.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"resume=auto: no checkpoint in .* can be read: .*step_00000006"):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=8"]))
    with pytest.raises(CheckpointError, match=r"step_00000004: cannot read trainer_state.json"):
        pretrain(load_recipe_config(PretrainConfig, config, [f"resume={checkpoints / 'step_00000004'}", "max_steps=8"]))
