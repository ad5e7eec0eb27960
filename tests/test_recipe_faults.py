"""Red-team faults of the evaluation protocols and the recipes (issue 27): k-NN at a small
temperature, and the recipes' arguments refused before any work as one line `error: ...`."""

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import omnivec
from omnivec.pretraining import PretrainConfig
from omnivec.probes import Features, knn_evaluate, knn_scores
from omnivec.recipe_config import load_recipe_config
from omnivec.run_dir import as_json

ROOT = Path(__file__).resolve().parents[1]
QUICK_PRETRAIN = ["device=cpu", "overwrite=true", "save_every=0", "eval_every=0"]  # what pretrain_ablation sets


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def run_script(name: str, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python recipes/NAME.py ARGS` in this process -> (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [f"recipes/{name}.py", *args])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name="__main__")
    return exit.value.code, capsys.readouterr().err


# 6. k-NN votes at a small temperature


def test_knn_votes_do_not_overflow_at_a_small_temperature():
    # the nearest neighbour (cosine 1) of class 1 against two of class 0 at cosine 0.99
    near = torch.tensor([[1.0, 0.0]])
    other = torch.tensor([[0.99, (1 - 0.99**2) ** 0.5]] * 2)
    f = Features(torch.cat([near, other]), torch.tensor([1, 0, 0]), near, torch.tensor([1]), num_classes=2)
    sims = (f.test @ f.train.T)[0].double()
    for temperature in (0.011, 0.005, 0.012):  # exp(1 / T) overflows float32 below T = 0.0113
        scores = knn_scores(f, k=3, temperature=temperature)
        votes = torch.stack([(sims[1:] / temperature).exp().sum(), (sims[0] / temperature).exp()])
        assert torch.isfinite(scores).all(), temperature
        assert torch.allclose(scores[0].double(), votes / votes.max()), temperature  # DINO's weights, rescaled
        assert scores.argmax(1).item() == 1, temperature
    assert knn_scores(f, k=3, temperature=1e-300).tolist() == [[0.0, 1.0]]  # the nearest alone, not NaN


def test_knn_top1_at_a_small_temperature_is_that_of_a_slightly_larger_one():
    # four close classes (cosines near 1): a test sample's neighbours mix them, their weights decide
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(16, generator=g) + 0.05 * torch.randn(4, 16, generator=g)
    y = torch.arange(4).repeat_interleave(20)
    train = F.normalize(centres[y] + 0.08 * torch.randn(len(y), 16, generator=g), dim=-1)
    test = F.normalize(centres[y] + 0.08 * torch.randn(len(y), 16, generator=g), dim=-1)
    f = Features(train, y, test, y, num_classes=4)
    assert knn_evaluate(f, temperature=0.011)["top1"] == knn_evaluate(f, temperature=0.012)["top1"] > 0.8


# 10. pretrain_ablation: a model of other settings is not reused; --blocks


def quick_record(folder: Path, modality: str, *overrides: str) -> PretrainConfig:
    """What a `--quick` run of pretrain_ablation leaves in `folder`: its config record and summary."""
    cfg = load_recipe_config(
        PretrainConfig,
        ROOT / "configs/pretrain/tiny.yaml",
        [f"output_dir={folder}", *QUICK_PRETRAIN, "max_steps=3", "eval_batches=1", "plot_samples=1", *overrides],
    )
    cfg.data = {modality: cfg.data[modality]}
    cfg.weights = {m: w for m, w in cfg.weights.items() if m == modality}
    folder.mkdir(parents=True)
    (folder / "run_config.json").write_text(json.dumps({"recipe": "pretrain", "config": as_json(cfg)}))
    (folder / "summary.json").write_text(json.dumps({"modalities": {modality: {"val_end": 1.0}}}))
    return cfg


def test_pretrain_ablation_refuses_a_model_pretrained_with_other_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pretrain_ablation")
    out = tmp_path / "ablation"
    quick_record(out / "baseline", "point_cloud")  # a 3-step seed-0 model
    with pytest.raises(omnivec.ConfigError, match=r"max_steps: 3 there, 1000 now.*seed: 0 there, 1 now"):
        recipe.main(["--task", "shapes", "--variants", "baseline", "--seed", "1", "--output", str(out)])
    (out / "baseline" / "run_config.json").unlink()  # an older run: its settings are unknown
    with pytest.raises(omnivec.ConfigError, match="without a readable run_config.json"):
        recipe.main(["--quick", "--task", "shapes", "--variants", "baseline", "--output", str(out)])


@pytest.mark.parametrize("blocks", ["99", "-1", "0"])
def test_pretrain_ablation_refuses_blocks_the_backbone_does_not_have(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pretrain_ablation")
    args = ["--quick", "--task", "shapes", "--variants", "baseline", "--blocks", "2", blocks]
    with pytest.raises(omnivec.ConfigError, match=rf"--blocks: expected block counts in 1..4 .*, got {blocks}$"):
        recipe.main([*args, "--output", str(tmp_path / "ablation")])
    assert not (tmp_path / "ablation").exists()


# 11. label_efficiency: fractions, steps scale (and seeds) refused before any work


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fractions", "0.5", "nan"], "--fractions: expected shares of the training labels in (0, 1], got nan"),
        (["--fractions", "-0.5"], "--fractions: expected shares of the training labels in (0, 1], got -0.5"),
        (["--fractions", "0"], "--fractions: expected shares of the training labels in (0, 1], got 0.0"),
        (["--fractions", "1.5"], "--fractions: expected shares of the training labels in (0, 1], got 1.5"),
        (["--steps-scale", "0"], "--steps-scale: expected a finite number > 0"),
        (["--steps-scale", "nan"], "--steps-scale: expected a finite number > 0"),
        (["--steps-scale", "inf"], "--steps-scale: expected a finite number > 0"),
        (["--seeds", "0", "-1"], "--seeds: expected ints in [0, 2**32), got -1"),
        (["--pretrain-steps", "0"], "--pretrain-steps: expected an int > 0, got 0"),
    ],
)
def test_label_efficiency_refuses_bad_numbers_before_any_work(args, message, tmp_path):
    recipe = load_recipe("label_efficiency")
    out = tmp_path / "le"
    with pytest.raises(omnivec.ConfigError) as error:
        recipe.main(["--quick", "--tasks", "shapes", "--seeds", "0", "--output", str(out), *args])
    assert str(error.value).startswith(message)
    assert not out.exists()


# 24. the recipes' entry points: one line `error: ...`, exit code 2, no traceback


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "-1"], "error: --seeds: expected ints in [0, 2**32), got -1"),
        (["--steps-scale", "nan"], "error: --steps-scale: expected a finite number > 0"),
        (["--tasks", "nonexistent"], "error: --tasks: ['nonexistent'] are not tasks of"),
        (["--set", "foo=1"], "error: foo: unknown key"),
        (["--set", "seed=3"], "error: --set seed=3: the recipe sets init, seed"),
        (["--pretrained", "/missing"], "error: /missing: no such model folder"),
    ],
)
def test_label_efficiency_reports_bad_arguments_in_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "le"
    code, err = run_script("label_efficiency", ["--quick", "--output", str(out), *args], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(message), err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nonexistent"], "error: --task: expected a task of configs/finetune/sample_sequential.yaml ("),
        (["--task", "acl_summaries"], "error: --task acl_summaries: not a classification task"),
        (["--variants", "no such"], "error: --variants: expected settings among ['baseline', "),
        (["--seed", "-1"], "error: --seed: expected an int in [0, 2**32), got -1"),
        (["--split", "train"], "error: --split: expected val (to choose a setting) or test, got 'train'"),
        (["--blocks", "99"], "error: --blocks: expected block counts in 1..4 (the backbone's depth), got 99"),
        (["--pretrain-config", "/missing.yaml"], "error: /missing.yaml: config file not found"),
    ],
)
def test_pretrain_ablation_reports_bad_arguments_in_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "ablation"
    code, err = run_script("pretrain_ablation", ["--quick", "--output", str(out), *args], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(message), err
    assert not out.exists()


def test_pretrain_ablation_needs_the_task_modality_in_the_pretrain_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "image_only.yaml"
    config.write_text((ROOT / "configs/pretrain/tiny.yaml").read_text().replace("  point_cloud:", "  #"))
    args = ["--quick", "--task", "shapes", "--pretrain-config", str(config), "--output", str(tmp_path / "a")]
    code, err = run_script("pretrain_ablation", args, monkeypatch, capsys)
    assert code == 2 and err.strip().startswith(f"error: {config}: data: expected point_cloud data"), err


# 30. k-NN on a multi-label task: skipped, not NaN


def test_pretrain_ablation_says_knn_is_skipped_on_a_multi_label_task(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pretrain_ablation")
    out = tmp_path / "ablation"
    cfg = quick_record(out / "baseline", "audio")  # a finished run of these settings: reused, not pretrained
    torch.manual_seed(1)
    omnivec.build_model(cfg.model, **cfg.model_overrides).save_pretrained(out / "baseline" / "model")
    recipe.main(["--quick", "--task", "spoken_mix", "--variants", "baseline", "--output", str(out)])
    rows = {
        cells[0]: cells[3:]  # setting: k-NN, linear
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in (out / "ablation.md").read_text().splitlines()
            if line.startswith("| baseline") or line.startswith("| random init")
        )
    }
    assert list(rows) == ["baseline", "random init"]
    for knn, linear in rows.values():
        assert knn == "skipped: multi-label" and linear.startswith("mAP 0."), rows
    results = json.loads((out / "ablation.json").read_text())
    assert results["random init"]["knn"] == {"skipped": "multi-label"}
