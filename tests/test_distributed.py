"""Two CPU processes (torchrun -> accelerate MULTI_CPU over gloo): the same loss curve as one process
with the combined batch, only the main process writes, and resuming works with two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import SAMPLE, SMALL_MODEL_OVERRIDES

pytestmark = pytest.mark.integration


def finetune_config(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny", "model_overrides": SMALL_MODEL_OVERRIDES,
        "tasks": {"digits": {"head": "classification", "data": [str(SAMPLE / "digits")]}},
        "stages": [{"tasks": ["digits"], "steps": 4}],
        "batch_size": 16, "num_workers": 0, "warmup_steps": 1, "log_every": 1, "save_every": 0,
        "eval_max_batches": 1, "output_dir": str(tmp_path / name), "device": "cpu",
    }
    data.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(args: list[str], processes: int = 1, **overrides) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "omnivec"] if processes > 1 else [sys.executable, "-m", "omnivec"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(launcher + args + [f"{k}={v}" for k, v in overrides.items()], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss/digits" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice: only the main process may write"
    return {r["step"]: r["loss/digits"] for r in records if "loss/digits" in r}


def test_two_processes_match_one_process_with_the_combined_batch(tmp_path):
    run(["finetune", str(finetune_config(tmp_path, "one", batch_size=16))])
    run(["finetune", str(finetune_config(tmp_path, "two", batch_size=8))], processes=2)
    one, two = losses(tmp_path / "one" / "stages" / "1_digits"), losses(tmp_path / "two" / "stages" / "1_digits")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:  # same samples per step, gradients averaged by DDP: equal up to float reordering
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    assert (tmp_path / "two" / "eval.json").is_file() and (tmp_path / "two" / "model" / "model.safetensors").is_file()


def test_two_process_pretraining_resumes(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({
        "model": "omnivec_tiny", "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")], "text": [str(SAMPLE / "acl_highlights")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4, "num_workers": 0, "warmup_steps": 1, "log_every": 1, "eval_batches": 1, "plot_samples": 1,
        "save_every": 2, "max_steps": 4, "output_dir": str(tmp_path / "run"), "device": "cpu",
    }))
    run(["pretrain", str(config)], processes=2)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000004"]  # written once, by the main process
    result = run(["pretrain", str(config)], processes=2, max_steps=6, resume="auto")
    assert "resumed from" in result.stdout + result.stderr
    steps = losses_any(tmp_path / "run")
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run appended steps 5 and 6 only


def losses_any(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "lr" in r]
