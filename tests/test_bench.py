"""The benchmark scripts run: device time is short, so a crash must show here first (CPU, batch 2).
Their numbers are not checked: benchmarks measure, tests do not."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    "image masked pretraining step",
    "video masked pretraining step",
    "audio fine-tuning step",
    "mixed multimodal pretraining step",
    "text embedding",
]  # image embedding compiles: minutes on CPU


def run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as bench/device.sh runs them: omnivec from the checkout
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.integration
def test_bench_run_smoke_writes_a_row_and_a_profile_per_implementation(tmp_path):
    run("run.py", "--device", "cpu", "--smoke", "--out", str(tmp_path), "--profile", "--only", *CASES)
    rows = [
        line.split("|")[1:-1]
        for line in (tmp_path / "table.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| benchmark")
    ]
    assert sorted({r[0].strip() for r in rows}) == sorted(CASES)
    assert len(rows) == 10  # omnivec and its reference (or its packed twin) per case
    for row in rows:
        assert float(row[3]) > 0, row  # samples/s
    sections = re.findall(r"^## (.+) \(3 calls\)$", (tmp_path / "profiles.txt").read_text(), re.M)
    assert sections == [f"{r[0].strip()}: {r[1].strip()}" for r in rows]


@pytest.mark.integration
def test_gpu_check_smoke_runs_every_check_on_cpu():
    out = run("gpu_check.py", "--device", "cpu", "--smoke", "--variant", "omnivec_tiny")
    assert out.count("pretrain omnivec_tiny") == 3
    assert out.count("bf16 vs fp32 min cosine") == 5
    assert out.rstrip().endswith("gpu check: ok")


@pytest.mark.integration
def test_index_recall_smoke_prints_recall_and_latency():
    pytest.importorskip("faiss")
    out = run(
        "index_recall.py",
        "--n",
        "4000",
        "--clusters",
        "20",
        "--queries",
        "50",
        "--part-size",
        "1500",
        "--nprobe",
        "4",
        "--rerank",
        "1",
        "8",
        "--set",
        "nlist=16",
        "m=8",
        "nbits=6",
        "--rounds",
        "1",
    )
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| flat") or line.startswith("| ivf")]
    assert [r[0].strip() for r in rows] == ["flat (exact)", "ivf-pq", "ivf-pq"] and float(rows[0][2]) == 1.0
    assert float(rows[2][2]) > float(rows[1][2])  # exact re-ranking raises the PQ codes' recall


@pytest.mark.integration
def test_memory_smoke_measures_both_variants_of_each_step():
    out = run("memory.py", "--variants", "omnivec_tiny", "--batches", "2", "4", "--steps", "1")
    rows = [line for line in out.splitlines() if line.startswith("| omnivec_tiny |") and "| yes |" in line]
    assert len(rows) == 4 + 2  # 2 steps x 2 batches measured with checkpointing, 2 estimate rows
    assert all("(same)" in r for r in rows[:4])


@pytest.mark.integration
def test_objective_cost_smoke_times_every_objective():
    out = run("objective_cost.py", "--batches", "1", "--modalities", "audio")
    rows = [
        line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| audio") or line.startswith("| all")
    ]
    assert [r[0].strip() for r in rows] == ["audio", "all"] and all(len(r) == 6 for r in rows)
    assert all(float(cell.strip().rstrip("s x")) > 0 for r in rows for cell in r[1:])


@pytest.mark.integration
def test_gradient_balance_smoke_measures_a_positive_norm():
    out = run("gradient_balance.py", "--batches", "1", "--modalities", "audio")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| audio")]
    assert len(rows) == 1 and all(float(cell) > 0 for cell in rows[0][1:])
