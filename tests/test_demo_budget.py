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
        (["--steps", "5", "--seeds", "1", "1"], r"--seeds: expected distinct seeds, got \[1, 1\]"),
        (["--steps", "5", "--pretrain-config", "configs/pretrain/tiny.yml"], r"tiny\.yml: config file not found"),
    ]
    refused_before_any_work(recipe.main, tmp_path / "out", cases)


def test_the_demos_first_stage_is_what_the_recipe_pretrains(monkeypatch, tmp_path):
    """demo.pretrain_backbone: the demo's overrides (440 steps, a validation loss every 100, no
    checkpoints) and the recipe's seed, on configs/pretrain/tiny.yaml with paths under the root."""
    import omnivec.pretraining
    from omnivec.demo import PRETRAIN_STEPS, pretrain_backbone

    seen = []
    monkeypatch.setattr(omnivec.pretraining, "pretrain", seen.append)
    model = pretrain_backbone(ROOT, tmp_path / "pre", PRETRAIN_STEPS[False], "cpu", overrides=["seed=2"])
    (cfg,) = seen
    assert model == tmp_path / "pre" / "model" and cfg.output_dir == str(tmp_path / "pre")
    assert (cfg.max_steps, cfg.eval_every, cfg.save_every, cfg.seed, cfg.device) == (440, 100, 0, 2, "cpu")
    assert cfg.data["image"] == [str(ROOT / "data/sample/digits")]
    assert cfg.model_overrides["modalities.text"]["tokenizer"] == str(ROOT / "data/sample/tokenizer")


def test_the_demo_pretrains_through_pretrain_backbone(monkeypatch, tmp_path):
    """`omnivec demo`'s first stage is `demo.pretrain_backbone` with the demo's steps (what the recipe runs)."""
    import omnivec.demo
    from omnivec.demo import PRETRAIN_STEPS, run_demo

    class Stop(Exception):
        pass

    calls = []

    def stop(*args):
        calls.append(args)
        raise Stop  # no further stage runs

    monkeypatch.setattr(omnivec.demo, "pretrain_backbone", stop)
    with pytest.raises(Stop):
        run_demo(tmp_path / "demo", device="cpu")
    assert calls == [(ROOT, tmp_path / "demo" / "pretrain", PRETRAIN_STEPS[False], "cpu", False)]


def test_table_lists_each_seed_and_a_dash_where_a_task_has_no_knn(recipe):
    def run(knn: float, above: bool) -> dict:
        rows = [
            {"task": "digits", "modality": "image", "knn_gap": knn - 0.4, "above_2sd": above}
            | {"knn": {"pretrained": knn, "random_mean": 0.4, "random_sd": 0.01}}
            | {"linear": {"pretrained": knn + 0.1, "random_mean": 0.3, "random_sd": 0.02}},
            {"task": "spoken_mix", "modality": "audio", "knn_gap": None, "above_2sd": None}
            | {"linear": {"pretrained": 0.7, "random_mean": 0.6, "random_sd": 0.05}},
        ]
        return {"pretrain_seconds": 1.0, "record": {"rows": rows}}

    lines = recipe.table({10: {0: run(0.5, True), 1: run(0.41, False)}})
    assert lines[2] == "| digits | image | 0.400 ± 0.010 | 0.500 / 0.410 (1 of 2), 0.600 / 0.510 | 0.300 ± 0.020 |"
    assert lines[3] == "| spoken_mix | audio | - | -, 0.700 / 0.700 | 0.600 ± 0.050 |"


@pytest.mark.integration
def test_quick_budget_scores_on_val_reuses_and_refuses_other_settings(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "budget"
    args = ["--quick", "--steps", "2", "3", "--output", str(out), *small_config_args(tmp_path)]
    recipe.main([*args, "--seeds", "0", "1"])
    budget = json.loads((out / "budget.json").read_text())
    assert list(budget["results"]) == ["2", "3"] and list(budget["results"]["3"]) == ["0", "1"]
    for steps, by_seed in budget["results"].items():
        for seed, result in by_seed.items():
            record = result["record"]
            assert record["split"] == "val" and record["fit_split"] == "train" and record["random_seeds"] == [0, 1, 2]
            assert [r["task"] for r in record["rows"]] == ["digits", "shapes"]
            assert set(record["modalities_above"]) == {"image", "point_cloud"}
            run = json.loads((out / f"steps-{steps}-seed-{seed}" / "pretrain" / "run_config.json").read_text())
            assert run["config"]["max_steps"] == int(steps) and run["config"]["seed"] == int(seed)
            assert run["config"]["eval_every"] == 0  # the demo's --quick pretraining
    text = (out / "budget.md").read_text()
    digits = [budget["results"]["3"][s]["record"]["rows"][0] for s in ("0", "1")]
    random = f"{digits[0]['knn']['random_mean']:.3f} ± {digits[0]['knn']['random_sd']:.3f}"
    knn = " / ".join(f"{d['knn']['pretrained']:.3f}" for d in digits)
    assert (
        f"| digits | image | {random} | " in text and f" | {knn} ({sum(d['above_2sd'] for d in digits)} of 2), " in text
    )
    assert "- 3 steps (" in text and "; seed 1: " in text

    stamp = (out / "steps-2-seed-0" / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns
    recipe.main(args)  # a rerun reuses the finished runs (here seed 0's, the default)
    assert (out / "steps-2-seed-0" / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert list(json.loads((out / "budget.json").read_text())["results"]["2"]) == ["0"]
    with pytest.raises(ConfigError, match=r"backbones were made with other settings \(.*quick: True there, False now"):
        recipe.main([a for a in args if a != "--quick"])
