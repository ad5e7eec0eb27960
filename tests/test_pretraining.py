import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES

import omnivec
from omnivec.mae import MaskedPretrainer
from omnivec.modalities.base import fill_hidden
from omnivec.modalities.point_cloud import chamfer_l2
from omnivec.parsing import from_dict
from omnivec.pretraining import PretrainConfig, format_summary, pretrain


def test_image_target_is_normalised_pixels_per_patch(tiny_model):
    enc = tiny_model.encoders["image"]  # 16 px, patch 4: a 4x4 grid of patches
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 0:4, 4:8] = torch.arange(16.0).reshape(4, 4)  # patch (row 0, col 1): token 1
    target = enc.tokenize(x, with_target=True).target
    assert target.shape == (1, 16, 3 * 16)
    expected = torch.arange(16.0).repeat(3)
    expected = (expected - expected.mean()) / (expected.var() + 1e-6).sqrt()
    torch.testing.assert_close(target[0, 1], expected)
    assert target[0, 0].abs().max() == 0  # a flat patch normalises to zeros


def test_video_target_orders_tubelets_time_major(tiny_model):
    enc = tiny_model.encoders["video"]  # 4 frames, tubelet 2, 16 px, patch 8: grid (2, 2, 2)
    x = torch.zeros(1, 4, 3, 16, 16)
    x[0, 2:4, :, 8:16, 0:8] = torch.arange(2 * 3 * 64.0).reshape(2, 3, 8, 8)  # second tube in time, bottom-left
    target = enc.tokenize(x, with_target=True).target
    assert target.shape == (1, 8, 2 * 3 * 64)
    token = 1 * 4 + 1 * 2 + 0  # t=1, h=1, w=0
    values = torch.arange(2 * 3 * 64.0)
    torch.testing.assert_close(target[0, token], (values - values.mean()) / (values.var() + 1e-6).sqrt())
    assert target[0, :token].abs().max() == 0


def test_audio_target_is_time_major(tiny_model):
    enc = tiny_model.encoders["audio"]  # 48 frames x 32 mel, patch 16: grid (2 freq, 3 time)
    x = torch.zeros(1, 48, 32)
    x[0, 16:32, 0:16] = torch.arange(256.0).reshape(16, 16).T  # time 1, freq 0 -> token 1 * 2 + 0
    target = enc.tokenize(x, with_target=True).target
    assert target.shape == (1, 6, 256)
    values = torch.arange(256.0)
    torch.testing.assert_close(target[0, 2], (values - values.mean()) / (values.var() + 1e-6).sqrt())
    assert target[0, :2].abs().max() == 0 and target[0, 3:].abs().max() == 0
    torch.testing.assert_close(enc.unpatchify(enc.patchify(x)), x)  # the figures' inverse, in the same order


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_norm_pix_loss_false_targets_the_raw_patches(modality):
    cfg = omnivec.model_config("omnivec_tiny", **TINY, **{f"modalities.{modality}.norm_pix_loss": False})
    enc = omnivec.OmniVecModel(cfg).encoders[modality]
    x = omnivec.example_inputs(cfg, 2)[modality]
    raw = enc.patchify(x)  # [B, L, P]
    torch.testing.assert_close(enc.tokenize(x, with_target=True).target, raw)
    mask = torch.zeros(raw.shape[:2], dtype=torch.bool)
    mask[:, ::2] = True
    pred = torch.randn(int(mask.sum()), raw.shape[-1])
    assert torch.equal(fill_hidden(raw, pred, mask, standardised=False)[1][mask], pred)  # figures show it as is
    assert not torch.allclose(fill_hidden(raw, pred, mask)[1][mask], pred)  # rescaled by each patch's statistics


def test_point_target_is_groups_around_their_centres(tiny_model):
    enc = tiny_model.encoders["point_cloud"]  # 64 points, 8 groups of 8
    offsets = torch.tensor([[i * 10.0, 0, 0] for i in range(8)])
    cluster = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    x = (offsets[:, None] + cluster[None]).reshape(1, 64, 3)  # 8 far-apart clusters of 8 points
    out = enc.tokenize(x, with_target=True)
    assert out.target.shape == (1, 8, 24) and out.positions.shape == (1, 8, 3)
    groups = out.target.reshape(8, 8, 3) + out.positions[0, :, None]  # back in the cloud's frame
    clusters = (groups[..., 0] / 10).round()  # [G, K] which cluster each point came from
    assert (clusters == clusters[:, :1]).all()  # a group is one whole cluster (its 8 nearest points)
    assert sorted(clusters[:, 0].tolist()) == list(range(8))  # farthest point sampling visits every cluster
    for g in range(8):  # the centre is one of the group's points, stored relative to it
        assert (out.target.reshape(8, 8, 3)[g].norm(dim=-1) < 1e-6).any()


def test_text_target_is_the_token_ids(tiny_model, tiny_config):
    x = omnivec.example_inputs(tiny_config, 2)["text"]
    assert torch.equal(tiny_model.encoders["text"].tokenize(x, with_target=True).target[..., 0], x["input_ids"])


def test_chamfer_known_values():
    a = torch.rand(2, 5, 3)
    assert chamfer_l2(a, a) == 0
    torch.testing.assert_close(chamfer_l2(a, a + torch.tensor([0.01, 0, 0])), torch.tensor(2 * 0.01**2))


@pytest.mark.integration  # 6-8 s on 2 busy cores: every modality
def test_losses_only_look_at_hidden_tokens(tiny_model, tiny_config):
    torch.manual_seed(0)
    pretrainer = MaskedPretrainer(tiny_model, from_dict(omnivec.pretraining.DecoderConfig, {"dim": 32, "depth": 1}, ""))
    batch = omnivec.example_inputs(tiny_config, 2)
    for modality, x in batch.items():
        r = pretrainer.reconstruct(modality, x, torch.Generator().manual_seed(0))
        assert r["pred"].shape[0] == r["mask"].sum() and torch.isfinite(r["loss"])
    losses = pretrainer({m: {"input": x} for m, x in batch.items()})
    sum(losses.values()).backward()
    grads = [p.grad for p in pretrainer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _config(tmp_path: Path, **kw) -> PretrainConfig:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {
            "image": [str(SAMPLE / "digits")],
            "text": [str(SAMPLE / "acl_highlights")],
            "point_cloud": [str(SAMPLE / "shapes")],
        },
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
    }
    data.update(kw)
    return from_dict(PretrainConfig, data, "")


def _losses(run: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "lr" in r}


@pytest.mark.integration
def test_two_step_run_writes_a_loadable_checkpoint(tmp_path):
    summary = pretrain(_config(tmp_path, max_steps=2))
    run = tmp_path / "run"
    assert summary["steps"] == 2 and set(summary["modalities"]) == {"image", "text", "point_cloud"}
    for name in ("metrics.jsonl", "summary.json", "loss.png", "reconstructions.png", "run_config.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run_config.json").read_text())["config"]["max_steps"] == 2
    checkpoint = run / "checkpoints" / "step_00000002"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2
    loaded = omnivec.OmniVecModel.from_pretrained(checkpoint / "model")
    final = omnivec.OmniVecModel.from_pretrained(run / "model")
    for k, v in final.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.integration
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    n = 3
    pretrain(_config(tmp_path / "a", max_steps=2 * n, save_every=n))
    full = _losses(tmp_path / "a" / "run")
    # A second run starts from a copy of the first run's step-n checkpoint only.
    resumed_dir = tmp_path / "b" / "run"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "a" / "run" / "checkpoints" / f"step_{n:08d}", resumed_dir / "checkpoints" / f"step_{n:08d}"
    )
    pretrain(_config(tmp_path / "b", max_steps=2 * n, save_every=n, resume="auto"))
    resumed = _losses(resumed_dir)
    assert sorted(resumed) == list(range(n + 1, 2 * n + 1))
    for step in resumed:
        for key in ("loss/image", "loss/text", "loss/point_cloud"):
            assert resumed[step][key] == pytest.approx(full[step][key], abs=1e-6), (step, key)


def test_bad_config_fails_before_training(tmp_path):
    with pytest.raises(omnivec.ConfigError, match="data.smell"):
        pretrain(_config(tmp_path, data={"smell": [str(SAMPLE / "digits")]}))
    with pytest.raises(omnivec.ConfigError, match="max_stepz"):
        _config(tmp_path, max_stepz=3)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_summary_line_counts_skipped_samples_in_words():
    summary = {"steps": 4, "seconds": 3.0, "modalities": {}, "skipped_samples": ["a.png: truncated"]}
    assert ", 1 bad sample skipped;" in format_summary(summary, Path("run"))
    summary["skipped_samples"].append("b.png: truncated")
    assert ", 2 bad samples skipped;" in format_summary(summary, Path("run"))
    assert "skipped" not in format_summary({**summary, "skipped_samples": []}, Path("run"))
