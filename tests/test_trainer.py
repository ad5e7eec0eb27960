"""The training loop (omnivec/trainer.py): per-modality losses as logged, a NaN or a diverging run
stops naming its step, bad samples skipped and listed, training configs checked before any work."""

import json
from pathlib import Path

import pytest
import torch
from helpers import (
    digits_with_bad_files,
    logged_steps,
    pretrain_yaml,
)

import omnivec
from omnivec import ConfigError, DataError
from omnivec.checkpointing import latest_checkpoint
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.recipe_config import load_recipe_config


@pytest.mark.integration
def test_skipped_samples_are_listed_at_the_end(tmp_path):
    data = digits_with_bad_files(tmp_path, ["0003.png"])
    cfg = load_recipe_config(
        PretrainConfig,
        pretrain_yaml(tmp_path, "run", max_steps=3, save_every=0, data={"image": [str(data)]}),
        ["skip_bad=true"],
    )
    summary = pretrain(cfg)
    assert summary["steps"] == 3
    assert summary["skipped_samples"] and all("0003.png" in s for s in summary["skipped_samples"])
    with pytest.raises(DataError, match="0003.png"):  # without skip_bad the run stops on it
        pretrain(
            load_recipe_config(
                PretrainConfig,
                pretrain_yaml(tmp_path, "strict", max_steps=3, save_every=0, data={"image": [str(data)]}),
            )
        )


def nan_image_loss_at(step_index: int):
    """A `MaskedPretrainer.forward` whose image loss is NaN at 0-based step `step_index` (logged as step + 1)."""
    from omnivec.mae import MaskedPretrainer

    real = MaskedPretrainer.forward

    def forward(self, batch, step=0, **kwargs):
        losses = real(self, batch, step, **kwargs)
        if step == step_index:
            losses["image"] = losses["image"] * float("nan")
        return losses

    return forward


@pytest.mark.parametrize("log_every, save_every", [(5, 2), (2, 0)])
def test_a_nan_loss_stops_the_run_naming_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, log_every, save_every
):
    """Item 3: the NaN at step 3 is found at the next log or checkpoint, whichever comes first; the
    step-2 checkpoint (if any) stays the newest, and no model holding NaN weights is written."""
    from omnivec.errors import TrainingError
    from omnivec.mae import MaskedPretrainer

    monkeypatch.setattr(MaskedPretrainer, "forward", nan_image_loss_at(2))
    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=8, log_every=log_every, save_every=save_every)
    )
    with pytest.raises(TrainingError, match=r"step 3: the 'image' loss is nan; training stopped") as error:
        pretrain(cfg)
    run = tmp_path / "run"
    assert not (run / "model").exists()
    if save_every:
        assert latest_checkpoint(run) == run / "checkpoints" / "step_00000002"
        assert str(latest_checkpoint(run)) in str(error.value)
        kept = omnivec.OmniVecModel.from_pretrained(latest_checkpoint(run) / "model")  # refuses NaN weights
        assert all(torch.isfinite(p).all() for p in kept.parameters())
    else:
        assert latest_checkpoint(run) is None and "no checkpoint" in str(error.value)
    assert max(logged_steps(run), default=0) < 3  # nothing of the bad interval was logged as a result


@pytest.mark.parametrize("schedule", ["all", "round_robin"])
def test_each_modality_s_logged_loss_is_its_mean_over_the_steps_that_had_it(tmp_path, monkeypatch, schedule):
    """round_robin trains one modality per step: its logged loss is the mean over its own steps,
    not diluted by the other modalities' steps."""
    from omnivec.mae import MaskedPretrainer

    real = MaskedPretrainer.forward
    monkeypatch.setattr(
        MaskedPretrainer,
        "forward",
        lambda self, batch, step=0, generator=None: {
            m: v * 0 + {"image": 1.0, "point_cloud": 3.0}[m] for m, v in real(self, batch, step, generator).items()
        },
    )
    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=4, log_every=4, save_every=0, schedule=schedule)
    )
    pretrain(cfg)
    record = next(
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"lr"' in line
    )
    assert record["loss/image"] == pytest.approx(1.0) and record["loss/point_cloud"] == pytest.approx(3.0)


def test_a_diverging_learning_rate_stops_the_run(tmp_path):
    """Item 3, no injection: lr=1e30 without clipping blows the weights up within a few steps."""
    from omnivec.errors import TrainingError

    cfg = load_recipe_config(
        PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=6, log_every=3), ["lr=1e30", "clip_grad=0"]
    )
    with pytest.raises(TrainingError, match=r"step \d: the '(image|point_cloud)' loss is (nan|inf|-inf)"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "model").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step_*"):  # whatever was saved holds finite weights
        omnivec.OmniVecModel.from_pretrained(checkpoint / "model")


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=inf", "lr"),
        ("weight_decay=.inf", "weight_decay"),
        ("min_lr=.nan", "min_lr"),
        ("clip_grad=-.inf", "clip_grad"),
        ("betas=[0.9, .nan]", r"betas\.1"),
        ("weights={image: .inf}", r"weights\.image"),
        ("decoder.mlp_ratio=.inf", r"decoder\.mlp_ratio"),
    ],
)
def test_non_finite_numbers_in_a_training_config_are_named(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number, got (nan|inf|-inf)"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), [override])


def test_a_negative_cache_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"^cache_mb: expected a number >= 0, got -1"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), ["cache_mb=-1"])


@pytest.mark.parametrize(
    "weights, key",
    [
        ({"image": -1}, r"weights\.image: expected a number >= 0"),
        ({"audio": 1.0}, r"weights\.audio: expected a weight for one of the modalities in data"),
        ({"image": 0, "point_cloud": 0}, r"weights: expected a positive weight"),
    ],
)
def test_pretraining_loss_weights_are_checked(tmp_path, weights, key):
    """Item 11 (non-finite weights: test_non_finite_numbers_in_a_training_config_are_named)."""
    with pytest.raises(ConfigError, match=rf"^{key}"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run", weights=weights))
    with pytest.raises(ConfigError, match=r"^weights: expected no weights with schedule=round_robin"):
        load_recipe_config(
            PretrainConfig, pretrain_yaml(tmp_path, "run", weights={"image": 2.0}, schedule="round_robin")
        )


def test_skip_bad_lists_each_bad_file_once(tmp_path):
    """Item 14: two bad files met in each of three epochs are listed once each."""
    data = digits_with_bad_files(tmp_path, ["0001.png", "0003.png"])
    cfg = load_recipe_config(
        PretrainConfig,
        pretrain_yaml(tmp_path, "run", max_steps=9, save_every=0, batch_size=2, data={"image": [str(data)]}),
        ["skip_bad=true"],
    )
    summary = pretrain(cfg)  # 9 steps of 2 samples: three epochs of 6
    skipped = summary["skipped_samples"]
    assert len(skipped) == 2 and sorted(Path(s.split(":")[0]).name for s in skipped) == ["0001.png", "0003.png"]
