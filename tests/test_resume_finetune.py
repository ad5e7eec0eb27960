"""Sequential fine-tuning killed (SIGKILL) at a random step of each stage and resumed with
resume=auto ends with the weights of a run never interrupted, bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES, assert_resumed_as_before, change_tiny_variant
from safetensors.torch import load_file

pytestmark = pytest.mark.integration
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STAGES = [("1_digits", 8), ("2_shapes", 8)]


def finetune_yaml(tmp_path: Path, name: str) -> Path:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "tasks": {"digits": {"data": [str(SAMPLE / "digits")]}, "shapes": {"data": [str(SAMPLE / "shapes")]}},
        "stages": [{"tasks": ["digits"], "steps": 8}, {"tasks": ["shapes"], "steps": 8, "replay": ["digits"]}],
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "save_every": 3,
        "eval_split": "val",
        "eval_max_batches": 1,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "omnivec", "finetune", str(config), *extra],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_step(stage_dir: Path) -> int:
    metrics = stage_dir / "metrics.jsonl"
    steps = (
        [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"lr"' in line]
        if metrics.is_file()
        else []
    )
    return steps[-1] if steps else 0


def kill_at(config: Path, stage_dir: Path, step: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "omnivec", "finetune", str(config), "resume=auto"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while last_step(stage_dir) < step:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("stage", [0, 1])
def test_sigkill_in_any_stage_then_resume_gives_the_uninterrupted_weights(tmp_path, stage):
    run(finetune_yaml(tmp_path, "full"))
    config = finetune_yaml(tmp_path, "killed")
    name, steps = STAGES[stage]
    step = random.Random(os.getpid() + stage).randint(1, steps - 1)
    kill_at(config, tmp_path / "killed" / "stages" / name, step)
    assert not (tmp_path / "killed" / "model").exists()  # it died before the end
    run(config, "resume=auto")
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), f"{key} differs (killed in stage {stage + 1} after step {step})"
    reports = [json.loads((tmp_path / run / "eval.json").read_text()) for run in ("full", "killed")]
    assert reports[0]["final"] == reports[1]["final"]
    assert reports[0]["forgetting_matrix"] == reports[1]["forgetting_matrix"]


def test_a_run_stopped_in_its_first_stage_resumes_after_its_variant_changed(tmp_path, monkeypatch):
    """A later omnivec may change a variant's defaults (here: omnivec_tiny's text embeddings lose their
    norm, which drops tensors). A from-scratch run stopped in stage 1 resumes from the model config
    that stage saved, not today's variant, and ends with the weights it had without the stop."""
    import shutil

    from omnivec.finetune_config import FinetuneConfig
    from omnivec.finetuning import finetune
    from omnivec.recipe_config import load_recipe_config

    config = finetune_yaml(tmp_path, "run")
    finetune(load_recipe_config(FinetuneConfig, config))
    run_dir = tmp_path / "run"
    shutil.copytree(run_dir / "model", tmp_path / "whole")
    stage = run_dir / "stages" / STAGES[0][0]
    for path in [run_dir / "model", run_dir / "eval.json", run_dir / "stages" / STAGES[1][0], stage / "done.json"]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(stage / "model")
    for checkpoint in sorted((stage / "checkpoints").glob("step_*"))[1:]:  # as if it stopped after the first one
        shutil.rmtree(checkpoint)
    change_tiny_variant(monkeypatch)
    finetune(load_recipe_config(FinetuneConfig, config, ["resume=auto"]))
    assert_resumed_as_before(tmp_path / "whole" / "model.safetensors", run_dir / "model" / "model.safetensors")
