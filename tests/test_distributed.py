"""Two CPU processes (torchrun -> accelerate MULTI_CPU over gloo): the same loss curve as one process
with the combined batch, only the main process writes, resuming works with two processes, and under
FSDP2 the saved models hold full weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES
from safetensors.torch import load_file

import omnivec

pytestmark = pytest.mark.integration


def finetune_config(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "tasks": {"digits": {"head": "classification", "data": [str(SAMPLE / "digits")]}},
        "stages": [{"tasks": ["digits"], "steps": 4}],
        "batch_size": 16,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "save_every": 0,
        "eval_max_batches": 1,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
    }
    data.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# configs/accelerate/fsdp_base.yaml as the environment `accelerate launch` sets from it
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
}


def run(args: list[str], processes: int = 1, fsdp: bool = False, **overrides) -> subprocess.CompletedProcess:
    program = [str(Path(__file__).parent / "fsdp_on_cpu.py")] if fsdp else ["-m", "omnivec"]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *program]
        if processes > 1
        else [sys.executable, *program]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(FSDP_ENV if fsdp else {})}
    result = subprocess.run(
        launcher + args + [f"{k}={v}" for k, v in overrides.items()],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
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


def pretrain_config(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")], "text": [str(SAMPLE / "acl_highlights")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "save_every": 2,
        "max_steps": 4,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
    }
    data.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_process_pretraining_resumes(tmp_path):
    config = pretrain_config(tmp_path, "run")
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


def test_fsdp2_saves_full_weights_that_load_on_one_process(tmp_path):
    run(["finetune", str(finetune_config(tmp_path, "one", batch_size=16, save_every=2))])
    run(["finetune", str(finetune_config(tmp_path, "fsdp", batch_size=8, save_every=2))], processes=2, fsdp=True)
    one, fsdp, stage = tmp_path / "one", tmp_path / "fsdp", Path("stages") / "1_digits"
    checkpoint = stage / "checkpoints" / "step_00000002"
    assert (fsdp / checkpoint / "state" / "pytorch_model_fsdp.bin").is_file()  # FSDP did run
    for folder in (Path("model"), stage / "model", checkpoint / "model"):
        expected, saved = (load_file(run_dir / folder / "model.safetensors") for run_dir in (one, fsdp))
        assert saved.keys() == expected.keys(), folder
        # Whole tensors, trained alike: the same samples per step (Adam's lr 1e-3 steps differ by float order).
        for name in expected:
            assert saved[name].shape == expected[name].shape, f"{folder}: {name}"
            torch.testing.assert_close(saved[name], expected[name], atol=1e-4, rtol=0, msg=f"{folder}: {name}")
    model, reference = (omnivec.OmniVecModel.from_pretrained(run_dir / "model") for run_dir in (fsdp, one))
    inputs = omnivec.example_inputs(model.config, batch_size=2)
    expected = reference.embed(inputs)
    for modality, embedding in model.embed(inputs).items():
        torch.testing.assert_close(embedding, expected[modality], atol=1e-4, rtol=0)


def test_fsdp2_bf16_pretraining_saves_fp32_master_weights(tmp_path):
    run(["pretrain", str(pretrain_config(tmp_path, "bf16", precision="bf16"))], processes=2, fsdp=True)
    run_dir = tmp_path / "bf16"
    assert (run_dir / "summary.json").is_file() and (run_dir / "reconstructions.png").is_file()
    for folder in (run_dir / "model", run_dir / "checkpoints" / "step_00000002" / "model"):
        weights = load_file(folder / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.float32}, folder
        trained = weights["backbone.blocks.0.mlp.fc1.weight"]
        assert not torch.equal(trained, trained.bfloat16().float()), folder  # fp32 values, not bf16 ones widened
    omnivec.OmniVecModel.from_pretrained(run_dir / "model")


def test_fsdp2_pretraining_resumes_where_it_stopped(tmp_path):
    """The model has three modalities and the data two, so the point-cloud encoder never gets a
    gradient: the checkpoint still holds optimizer state for it (torch's FSDP loader refuses one
    without), and the resumed steps are the uninterrupted run's."""
    straight = pretrain_config(tmp_path, "straight", max_steps=6)
    run(["pretrain", str(straight)], processes=2, fsdp=True)
    checkpoint = tmp_path / "straight" / "checkpoints" / "step_00000004"
    result = run(
        ["pretrain", str(straight)], processes=2, fsdp=True, output_dir=tmp_path / "resumed", resume=checkpoint
    )
    assert "resumed from" in result.stdout + result.stderr
    records = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("straight", "resumed")
    }
    losses = {
        name: {(r["step"], k): v for r in rs if "lr" in r for k, v in r.items() if k.startswith("loss/")}
        for name, rs in records.items()
    }
    assert sorted(losses["resumed"]) == [(5, "loss/image"), (5, "loss/text"), (6, "loss/image"), (6, "loss/text")]
    for key, value in losses["resumed"].items():
        assert value == pytest.approx(losses["straight"][key], abs=1e-5), key


def test_fsdp2_with_activation_checkpointing_trains_as_without(tmp_path):
    """The trunk's blocks, each an FSDP2 unit, recomputed in the backward pass (their all-gather runs
    again there): the same losses and saved weights as the plain FSDP2 run."""
    run(["finetune", str(finetune_config(tmp_path, "plain", batch_size=8))], processes=2, fsdp=True)
    run(
        ["finetune", str(finetune_config(tmp_path, "ckpt", batch_size=8, activation_checkpointing=True))],
        processes=2,
        fsdp=True,
    )
    plain, ckpt = (losses(tmp_path / name / "stages" / "1_digits") for name in ("plain", "ckpt"))
    assert sorted(plain) == sorted(ckpt) == [1, 2, 3, 4]
    for step in plain:
        assert ckpt[step] == pytest.approx(plain[step], abs=1e-6), step
    expected, saved = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("plain", "ckpt"))
    for name in expected:
        torch.testing.assert_close(saved[name], expected[name], atol=1e-6, rtol=0, msg=name)
