import subprocess
import sys

import pytest

from omnivec.cli import main


def test_models_details_prints_parameters_per_part(capsys):
    assert main(["models", "--details"]) == 0
    out = capsys.readouterr().out
    base = out[out.index("omnivec_base"):out.index("omnivec_small")]
    backbone = float(base.split("backbone ")[-1].split("M")[0])
    assert 84 < backbone < 87
    for part in ("encoder.image", "encoder.video", "encoder.audio", "encoder.text", "encoder.point_cloud", "total"):
        assert part in base


@pytest.mark.integration
def test_demo_runs_from_the_console_script():
    result = subprocess.run([sys.executable, "-m", "omnivec", "demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for modality in ("image", "video", "audio", "text", "point_cloud"):
        assert f"{modality}" in result.stdout
    assert "done: 5 modalities embedded" in result.stdout


@pytest.mark.integration
def test_pretrain_cli_on_the_sample_data(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "omnivec", "pretrain", "configs/pretrain/tiny.yaml", "max_steps=2", "eval_batches=1",
         "batch_size=4", "num_workers=0", f"output_dir={run}", "backbone_typo=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "backbone_typo: unknown key" in result.stderr  # fails before any work
    assert not run.exists()
    result = subprocess.run(
        [sys.executable, "-m", "omnivec", "pretrain", "configs/pretrain/tiny.yaml", "max_steps=2", "eval_batches=1",
         "batch_size=4", "num_workers=0", f"output_dir={run}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "pretrained 2 steps" in result.stdout + result.stderr
    for name in ("model/model.safetensors", "metrics.jsonl", "reconstructions.png", "loss.png", "summary.json"):
        assert (run / name).is_file(), name
