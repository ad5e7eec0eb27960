"""recipes/mask_ratio_screen.py: the choice per modality, refusals before any work, and a --quick run
that reads only train and val."""

import json
from pathlib import Path

import pytest
from helpers import load_recipe, refused_before_any_work, small_config_args

from omnivec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(monkeypatch):
    return load_recipe("mask_ratio_screen", monkeypatch)


def rows(**knn: float | None) -> dict:
    """A probes.json record with one row per task `name=k-NN` (None: no k-NN, a multi-label task)."""
    modality = {"digits": "image", "more_digits": "image", "spoken_mix": "audio", "shapes": "point_cloud"}
    return {
        "rows": [
            {"task": t, "modality": modality[t], "knn_gap": None if v is None else 0.0, "knn": {"pretrained": v}}
            for t, v in knn.items()
        ]
    }


def test_choice_is_the_best_mean_val_knn_of_the_modalitys_tasks(recipe):
    chosen = recipe.choose(
        {
            "low": rows(digits=0.9, more_digits=0.1, shapes=0.5, spoken_mix=None),
            "mid": rows(digits=0.6, more_digits=0.6, shapes=0.5, spoken_mix=None),
        }
    )
    assert chosen["image"] == {"ratio": 0.75, "setting": "mid", "knn": {"low": 0.5, "mid": 0.6}}
    assert chosen["point_cloud"]["setting"] == "low"  # a tie goes to the first setting
    assert "audio" not in chosen  # no k-NN on a multi-label task: nothing to choose by


def test_arguments_are_refused_before_any_work(recipe, tmp_path):
    cases = [
        (["--steps", "0"], r"--steps: expected a positive number of steps, got 0"),
        (["--settings", "huge"], r"--settings: expected settings among \['low', 'mid', 'high'\], got 'huge'"),
    ]
    refused_before_any_work(recipe.main, tmp_path / "out", cases)


@pytest.mark.integration
def test_quick_screen_scores_on_val_reuses_and_refuses_other_settings(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "screen"
    args = ["--quick", "--settings", "low", "high", "--output", str(out)]
    args += small_config_args(tmp_path)
    recipe.main(args)
    screen = json.loads((out / "screen.json").read_text())
    assert set(screen["chosen"]) == {"image", "point_cloud"}
    for modality, choice in screen["chosen"].items():
        assert choice["ratio"] == recipe.SETTINGS[choice["setting"]][modality]
        assert set(choice["knn"]) == {"low", "high"}
    for name in ("low", "high"):
        probes = screen["results"][name]
        assert probes["split"] == "val" and probes["fit_split"] == "train"
        saved = json.loads((out / name / "model" / "config.json").read_text())
        assert saved["modalities"]["image"]["mask_ratio"] == recipe.SETTINGS[name]["image"]
    assert "| digits | image | 0.6, " in (out / "screen.md").read_text()

    stamp = (out / "low" / "model" / "model.safetensors").stat().st_mtime_ns
    recipe.main(args)  # a rerun reuses the finished settings
    assert (out / "low" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"backbones were made with other settings \(quick: True there, False now"):
        recipe.main([a for a in args if a != "--quick"])
