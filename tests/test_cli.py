import json
import re
import subprocess
import sys

import pytest

from omnivec.cli import main


@pytest.mark.integration  # 6-9 s on 2 busy cores: builds every variant
def test_models_details_prints_parameters_per_part(capsys):
    assert main(["models", "--details"]) == 0
    out = capsys.readouterr().out
    base = out[out.index("omnivec_base") : out.index("omnivec_small")]
    backbone = float(base.split("backbone ")[-1].split("M")[0])
    assert 84 < backbone < 87
    for part in ("encoder.image", "encoder.video", "encoder.audio", "encoder.text", "encoder.point_cloud", "total"):
        assert part in base


@pytest.mark.integration
def test_quick_demo_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "omnivec", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    for section in (
        "## Results",
        "## Frozen probes: pretrained vs random backbones",
        "## Forgetting matrix",
        "## Pretraining",
        "## Fine-tuning loss curves",
        "## Confusion matrices",
        "## Embeddings",
        "## Time per stage",
    ):
        assert section in report, section
    probes = report[report.index("## Frozen probes") : report.index("## Forgetting matrix")]
    for task, modality in (
        ("digits", "image"),
        ("spoken_digits", "audio"),
        ("shapes", "point_cloud"),
        ("moving_digits", "video"),
        ("acl_highlights", "text"),
    ):  # k-NN pretrained, random mean ± sd, the gap, > 2 sd, linear pretrained, random mean ± sd
        cells = r"[\d.]+ \| [\d.]+ ± [\d.]+ \| [+-][\d.]+ \| (yes|no) \| [\d.]+ \| [\d.]+ ± [\d.]+ \|$"
        assert re.search(rf"^\| {task} \| {modality} \| top1 \| {cells}", probes, re.M), task
    assert re.search(r"^\| spoken_mix \| audio \| mAP \|  \|  \|  \| - \| [\d.]+ \| [\d.]+ ± [\d.]+ \|$", probes, re.M)
    assert re.search(r"^pretrained k-NN above random by > 2 sd on \d of 5 modalities", probes, re.M)
    assert "scored on the test split" in probes and "acl_summaries" not in probes
    assert "voices of two accents never heard in training" in report
    assert "frozen probes" in json.loads((out / "timings.json").read_text())
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (out / image).is_file(), image
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "<table>" in html
    assert "[7/7] report" in result.stdout + result.stderr


@pytest.mark.integration
def test_pretrain_cli_on_the_sample_data(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "pretrain",
            "configs/pretrain/tiny.yaml",
            "max_steps=2",
            "eval_batches=1",
            "batch_size=4",
            "num_workers=0",
            f"output_dir={run}",
            "backbone_typo=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "backbone_typo: unknown key" in result.stderr  # fails before any work
    assert not run.exists()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "pretrain",
            "configs/pretrain/tiny.yaml",
            "max_steps=2",
            "eval_batches=1",
            "batch_size=4",
            "num_workers=0",
            f"output_dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "pretrained 2 steps" in result.stdout + result.stderr
    for name in ("model/model.safetensors", "metrics.jsonl", "reconstructions.png", "loss.png", "summary.json"):
        assert (run / name).is_file(), name


@pytest.mark.integration
def test_finetune_and_evaluate_cli_on_the_sample_data(tmp_path):
    run = tmp_path / "run"
    steps = [f"stages.{i}.steps=1" for i in range(5)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "finetune",
            "configs/finetune/sample_sequential.yaml",
            "init=none",
            f"output_dir={run}",
            "batch_size=4",
            "num_workers=0",
            "eval_split=val",
            "eval_max_batches=1",
            "tasks.acl_summaries.head_args.max_new_tokens=4",
            *steps,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "eval.json").read_text())
    matrix = report["forgetting_matrix"]
    assert len(matrix["rows"]) == 5 and len(matrix["tasks"]) == 7
    assert set(report["final"]["acl_summaries"]) >= {"rouge1", "rouge2", "rougeL"}
    assert set(report["final"]["spoken_mix"]) >= {"mAP"} and set(report["final"]["moving_digits"]) >= {"top1", "top5"}
    assert "lead-1" in report["baselines"]["acl_summaries"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "evaluate",
            "--model",
            str(run / "model"),
            "--config",
            "configs/finetune/sample_sequential.yaml",
            "--split",
            "val",
            "--output",
            str(tmp_path / "eval"),
            "eval_max_batches=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for task in ("digits", "spoken_digits", "shapes", "moving_digits", "acl_highlights"):
        assert (tmp_path / "eval" / f"confusion_{task}.png").is_file()


def test_a_command_leaves_the_process_group_even_when_it_fails(tmp_path, capsys):
    """Under torchrun each command ends by destroying the process group (else gloo may abort at exit)."""
    import torch.distributed as dist

    for argv, status in ((["models"], 0), (["finetune", str(tmp_path / "missing.yaml")], 2)):
        store = dist.FileStore(str(tmp_path / f"store-{status}"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        assert main(argv) == status
        assert not dist.is_initialized()
    assert "missing.yaml" in capsys.readouterr().err
