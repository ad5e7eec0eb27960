"""recipes/demo_budget.py: refusals before any work, and a --quick run that pretrains as the demo
does, scores only on val, reuses finished step counts and refuses a folder made otherwise."""

import json
from pathlib import Path

import pytest
from helpers import load_recipe, refused_before_any_work, small_config_args

from omnivec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(monkeypatch):
    return load_recipe("demo_budget", monkeypatch)


def test_arguments_are_refused_before_any_work(recipe, tmp_path):
    cases = [
        (["--steps", "0"], r"--steps: expected positive numbers of steps, got 0"),
        (["--steps", "5", "5"], r"--steps: expected distinct step counts, got \[5, 5\]"),
    ]
    refused_before_any_work(recipe.main, tmp_path / "out", cases)


@pytest.mark.integration
def test_quick_budget_scores_on_val_reuses_and_refuses_other_settings(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "budget"
    args = ["--quick", "--steps", "2", "3", "--output", str(out), *small_config_args(tmp_path)]
    recipe.main(args)
    budget = json.loads((out / "budget.json").read_text())
    assert list(budget["results"]) == ["2", "3"]
    for steps, result in budget["results"].items():
        record = result["record"]
        assert record["split"] == "val" and record["fit_split"] == "train" and record["random_seeds"] == [0, 1, 2]
        assert [r["task"] for r in record["rows"]] == ["digits", "shapes"]
        assert set(record["modalities_above"]) == {"image", "point_cloud"}
        run = json.loads((out / f"steps-{steps}" / "pretrain" / "run_config.json").read_text())["config"]
        assert run["max_steps"] == int(steps) and run["eval_every"] == 0  # the demo's --quick pretraining
    text = (out / "budget.md").read_text()
    digits = budget["results"]["3"]["record"]["rows"][0]
    assert f"| digits | image | {digits['knn']['random_mean']:.3f} ± {digits['knn']['random_sd']:.3f} |" in text
    assert "- 3 steps (" in text

    stamp = (out / "steps-2" / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns
    recipe.main(args)  # a rerun reuses the finished step counts
    assert (out / "steps-2" / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"backbones were made with other settings \(quick: True there, False now"):
        recipe.main([a for a in args if a != "--quick"])
