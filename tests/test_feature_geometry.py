"""recipes/feature_geometry.py: the measures of a task's frozen-feature geometry, and its refusals."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import load_recipe

from omnivec.errors import ConfigError
from omnivec.probes import Features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(monkeypatch):
    monkeypatch.chdir(ROOT)
    return load_recipe("feature_geometry", monkeypatch)


def test_spectrum_of_a_line_and_of_a_sphere(recipe):
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])  # [10, 3], one direction
    assert recipe.spectrum(line)["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert recipe.spectrum(line)["top5_share"] == pytest.approx(1.0)
    spread = torch.eye(8).repeat(4, 1)  # [32, 8]: eight directions, equal variance
    assert recipe.spectrum(spread)["effective_rank"] == pytest.approx(7.0, abs=1e-3)  # centring takes one
    assert recipe.spectrum(spread)["top5_share"] == pytest.approx(5 / 7, abs=1e-4)


def test_nearest_same_and_centring(recipe):
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert recipe.nearest_same(x, ["a", "a", "b", "b"]) == 1.0
    assert recipe.nearest_same(x, ["a", "b", "a", "b"]) == 0.0
    shifted = F.normalize(x + 5.0, dim=1)  # a common offset: every cosine near 1
    f = recipe.centred(Features(shifted, torch.tensor([0, 0, 1, 1]), shifted[:1], torch.tensor([0]), 2))
    assert shifted[0] @ shifted[2] > 0.95  # before: the two groups point the same way
    assert f.train[0] @ f.train[2] < 0 and torch.allclose(f.train.norm(dim=1), torch.ones(4))  # after: apart, unit


def test_a_run_on_the_sample_writes_every_measure(recipe, tmp_path):
    out = recipe.main(["--random", "0", "--group", "voice", "--output", str(tmp_path)])
    result = json.loads((out / "geometry.json").read_text())["random, seed 0"]
    assert set(result) == {
        "knn_val", "knn_centred_val", "knn_test", "knn_centred_test", "top5_share", "effective_rank",
        "nearest_same_class", "nearest_same_voice",
    }  # fmt: skip
    assert 1.0 <= result["effective_rank"] <= 128 and 0 < result["top5_share"] <= 1
    # every train voice says each digit once: a neighbour of the same digit is another voice
    assert result["nearest_same_class"] + result["nearest_same_voice"] <= 1.0
    assert "| random, seed 0 |" in (out / "geometry.md").read_text()


def test_a_group_the_manifest_lacks_is_refused_before_any_work(recipe, tmp_path):
    with pytest.raises(ConfigError, match=r"manifest.jsonl:1 has no column 'speaker'; expected one of \["):
        recipe.main(["--random", "0", "--group", "speaker", "--output", str(tmp_path / "g")])
    assert not (tmp_path / "g").exists()
