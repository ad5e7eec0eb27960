"""recipes/pretraining_payoff.py: the budget plan, refusals before any work, and a --quick smoke run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, load_recipe, refused_before_any_work, small_config_args

from omnivec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretraining_payoff.py"


@pytest.fixture
def recipe(monkeypatch):
    return load_recipe("pretraining_payoff", monkeypatch)


def test_plan_fits_the_budget(recipe):
    timings = {
        "mae": {"all": {"step_s": 1.0, "overhead_s": 10.0}, "image": {"step_s": 0.4, "overhead_s": 5.0}},
        "latent": {"all": {"step_s": 2.0, "overhead_s": 12.0}, "image": {"step_s": 0.8, "overhead_s": 6.0}},
    }
    scopes = {"all": ["digits"], "image": ["digits"]}
    steps, expected = recipe.plan_steps(3600, timings, {"digits": 5.0}, scopes, seeds=3, points=4)
    # fixed: 3 seeds x (overheads 33 s + 4 probes x 5 s in each of 4 runs); the rest shared out by step time
    fixed = 3 * (33 + 4 * 4 * 5)
    seconds = (3600 - fixed) / (3 * (1 + 0.4 + 1 + 0.4))  # each all-data run's share
    assert steps == {"mae": int(seconds) // 4 * 4, "latent": int(seconds / 2) // 4 * 4}
    assert 3600 - 3 * 6 * 2 <= expected <= 3600  # within a few steps of the budget, never over it
    assert recipe.plan_steps(200, timings, {"digits": 5.0}, scopes, seeds=3, points=4)[0] == {"mae": 0, "latent": 0}


def test_arguments_are_refused_before_any_work(recipe, tmp_path):
    cases = [
        (["--minutes", "0"], r"--minutes: expected a positive number of minutes, got 0.0"),
        (["--minutes", "nan"], r"--minutes: expected a positive number"),
        (["--points", "0"], r"--points: expected at least 1"),
        (["--seeds", "0", "0"], r"--seeds: expected distinct ints"),
        (["--set", "max_steps=5"], r"--set max_steps=5: the recipe sets output_dir, max_steps"),
        (["--set", "nonsense=1"], r"nonsense"),
        (["--tasks", "nope"], r"--tasks: \['nope'\] are not tasks of"),
        (["--tasks", "acl_summaries"], r"--tasks: acl_summaries is not a classification task"),
        (["--device", "tpu"], r"argument --device: invalid choice"),
    ]
    refused_before_any_work(recipe.main, tmp_path / "out", cases)


@pytest.mark.integration
def test_quick_run_writes_the_grid_and_refuses_other_settings(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "payoff"
    args = ["--quick", "--seeds", "0", "--device", "cpu", "--output", str(out)]
    args += small_config_args(tmp_path)
    recipe.main(args)
    printed = capsys.readouterr().out
    assert "plan: --quick: 2 steps a run, 2 backbones each" in printed
    assert printed.strip().splitlines()[-1].startswith("payoff: 6 runs and 1 random backbones")

    payoff = json.loads((out / "payoff.json").read_text())
    assert payoff["tasks"] == {
        "digits": {"modality": "image", "multi_label": False},
        "shapes": {"modality": "point_cloud", "multi_label": False},
    }
    grid = {(r["objective"], r["data"], r["seed"]) for r in payoff["runs"]}
    assert grid == {(o, d, 0) for o in ("mae", "latent") for d in ("all", "image", "point_cloud")}
    for run in payoff["runs"]:
        assert run["steps"] == 2 and [p["step"] for p in run["points"]] == [1, 2]
        assert 0 < run["points"][0]["seconds"] <= run["points"][1]["seconds"] == run["seconds"]
        probed = {"all": {"digits", "shapes"}, "image": {"digits"}, "point_cloud": {"shapes"}}[run["data"]]
        assert set(run["points"][-1]["probes"]) == probed
        for probes in run["points"][-1]["probes"].values():
            assert set(probes) == {"knn", "linear"} and set(probes["knn"]) == {"val", "test"}
            assert set(probes["linear"]["test"]) == {"top1", "top5"}
    assert [r["seed"] for r in payoff["random"]] == [0]
    assert not list(out.glob("runs/*/checkpoints"))  # probed, then dropped; the final model stays
    assert all((out / "runs" / f"{o}-{d}-seed0" / "model").is_dir() for o, d, _ in grid)
    tables = payoff["tables"]
    assert [(r["task"], r["protocol"]) for r in tables["vs_random"]] == [
        ("digits", "knn"),
        ("digits", "linear"),
        ("shapes", "knn"),
        ("shapes", "linear"),
    ]
    assert len(tables["latent_vs_mae"]) == 2 * 2 and len(tables["all_vs_alone"]) == 2 * 2 * 2
    md = (out / "payoff.md").read_text()
    for heading in ("## 1. The better objective", "## 2. Latent against MAE", "## 3. All the data against"):
        assert heading in md
    assert md.count("| digits |") == 1 * 2 + 2 + 2 * 2  # vs random, latent vs MAE, all vs alone
    assert (out / "payoff.png").stat().st_size > 0

    # The same command reuses every run; other settings are refused before any work, naming the difference.
    results = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    recipe.main(args)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == results
    with pytest.raises(ConfigError, match=r"plan.json: the grid's plan was made with other settings \(pretraining.lr"):
        recipe.main(args + ["--set", "lr=2e-3"])
    (out / "plan.json").unlink()  # no plan to compare with: each finished run is still checked
    with pytest.raises(
        ConfigError, match=r"result.json: this run was made with other settings \(pretraining.lr: 0.001 "
    ):
        recipe.main(args + ["--set", "lr=2e-3"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == results
    assert not (out / "plan.json").exists()


@pytest.mark.integration
def test_a_refusal_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECIPE), "--output", str(tmp_path / "x"), "--points", "0"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr) == (2, "error: --points: expected at least 1 backbone per run, got 0\n")
