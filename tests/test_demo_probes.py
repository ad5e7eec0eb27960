"""The demo's frozen-probe evidence (issue 26): the pretrained backbone against random ones, per task;
and omnivec_tiny's video tubelets, which leave enough visible tokens to learn from."""

import json
import logging

import pytest
import torch
from conftest import TINY
from helpers import SAMPLE

import omnivec
from omnivec.demo_probes import RANDOM_SEEDS, modalities_above, probe_backbones, probe_row
from omnivec.demo_report import probe_count, probe_table
from omnivec.finetune_config import FinetuneConfig
from omnivec.mae import MIN_VISIBLE, DecoderConfig, MaskedPretrainer
from omnivec.parsing import from_dict
from omnivec.protocols import ProtocolSettings, knn_protocol
from omnivec.tasks import load_task_data


def test_omnivec_tiny_leaves_enough_visible_tokens_on_every_modality(caplog):
    model = omnivec.build_model("omnivec_tiny")
    video, audio = model.encoders["video"], model.encoders["audio"]
    assert video.grid == (4, 8, 8) and video.num_tokens == 256  # 8 frames of 32 px in 2 x 4 x 4 tubelets
    assert video.visible_tokens() == 24 >= MIN_VISIBLE  # tube masking at 0.9: 6 of 64 places x 4 time steps
    assert audio.cfg.grid == (1, 32)  # 128 frames in frame patches of 4 (every mel bin)
    assert audio.num_tokens == 32 and audio.visible_tokens() == 16 >= MIN_VISIBLE  # mask 0.5, chosen on val
    with caplog.at_level(logging.WARNING, logger="omnivec.mae"):
        MaskedPretrainer(model, DecoderConfig())
    assert not [r.getMessage() for r in caplog.records if "visible tokens" in r.getMessage()]


def knn(pretrained: float, randoms: list[float]) -> dict:
    return {"knn": {"top1": pretrained}, "linear": {"top1": pretrained}}, [
        {"knn": {"top1": r}, "linear": {"top1": r}} for r in randoms
    ]


def test_a_row_compares_the_pretrained_knn_with_the_random_mean_and_twice_their_sd():
    row = probe_row("digits", "image", *knn(0.61, [0.3, 0.4, 0.5]))  # random: mean 0.4, sd 0.1
    assert row["knn"]["random"] == [0.3, 0.4, 0.5]
    assert row["knn"]["random_mean"] == pytest.approx(0.4) and row["knn"]["random_sd"] == pytest.approx(0.1)
    assert row["knn_gap"] == pytest.approx(0.21) and row["above_2sd"] is True
    assert probe_row("digits", "image", *knn(0.59, [0.3, 0.4, 0.5]))["above_2sd"] is False  # 0.19 < 0.2
    multi = probe_row("spoken_mix", "audio", {"linear": {"mAP": 0.5}}, [{"linear": {"mAP": m}} for m in (0.4, 0.5)])
    assert "knn" not in multi and multi["linear"]["metric"] == "mAP"
    assert multi["knn_gap"] is None and multi["above_2sd"] is None


def test_a_modality_counts_when_every_task_with_knn_is_above():
    rows = [
        probe_row("spoken_digits", "audio", *knn(0.9, [0.3, 0.4, 0.5])),
        probe_row("spoken_mix", "audio", {"linear": {"mAP": 0.5}}, [{"linear": {"mAP": 0.4}}] * 3),
        probe_row("digits", "image", *knn(0.4, [0.3, 0.4, 0.5])),
        probe_row("digits_too", "image", *knn(0.9, [0.3, 0.4, 0.5])),
    ]
    assert modalities_above(rows) == {"audio": True, "image": False}
    assert probe_count(modalities_above(rows)) == "pretrained k-NN above random by > 2 sd on 1 of 2 modalities (audio)."
    table = probe_table(rows)
    assert table[0].startswith("| task | modality | metric | k-NN pretrained | k-NN random | k-NN pretrained - random")
    assert table[2] == "| spoken_digits | audio | top1 | 0.900 | 0.400 ± 0.100 | +0.500 | yes | 0.900 | 0.400 ± 0.100 |"
    assert table[3] == "| spoken_mix | audio | mAP |  |  |  | - | 0.500 | 0.400 ± 0.000 |"
    assert table[4] == "| digits | image | top1 | 0.400 | 0.400 ± 0.100 | +0.000 | no | 0.400 | 0.400 ± 0.100 |"


def test_probe_backbones_against_random_twins_of_the_same_seeds(tmp_path):
    torch.manual_seed(7)
    model = omnivec.build_model("omnivec_tiny", **{**TINY, "heads": {}})
    model.save_pretrained(tmp_path / "model")
    tasks = {"shapes": "classification", "spoken_mix": "multi_label", "moving_digits": "action"}
    cfg = from_dict(
        FinetuneConfig,
        {
            "tasks": {t: {"head": head, "data": [str(SAMPLE / t)], "train_fraction": 0.5} for t, head in tasks.items()},
            "stages": [{"tasks": list(tasks)}],
        },
        "",
    )
    rng = torch.get_rng_state()
    record = probe_backbones(tmp_path / "model", cfg, tmp_path / "probes.json", ProtocolSettings(epochs=2), "cpu")
    assert torch.equal(torch.get_rng_state(), rng)  # the random twins' seeds leave the global RNG alone
    assert json.loads((tmp_path / "probes.json").read_text()) == json.loads(json.dumps(record))
    assert record["random_seeds"] == list(RANDOM_SEEDS) == [0, 1, 2] and record["split"] == "test"
    rows = {r["task"]: r for r in record["rows"]}
    assert {t: r["modality"] for t, r in rows.items()} == {
        "shapes": "point_cloud",
        "spoken_mix": "audio",
        "moving_digits": "video",
    }
    assert rows["spoken_mix"]["above_2sd"] is None and rows["spoken_mix"]["linear"]["metric"] == "mAP"
    assert record["skipped"] == {"knn/spoken_mix": "multi-label: no k-NN protocol (the linear probe reports mAP)"}
    assert set(record["modalities_above"]) == {"point_cloud", "video"}
    data = load_task_data(cfg, ["train", "test"])
    shapes = rows["shapes"]["knn"]
    assert (
        shapes["pretrained"]
        == knn_protocol(omnivec.OmniVecModel.from_pretrained(tmp_path / "model"), data["shapes"])["top1"]
    )
    torch.manual_seed(1)
    twin = omnivec.OmniVecModel(model.config)  # what the second random backbone is
    assert shapes["random"][1] == knn_protocol(twin, data["shapes"])["top1"]
    assert len(shapes["random"]) == 3


def test_random_cache_probes_each_twin_once_per_context(tmp_path, monkeypatch):
    """A shared `random_cache`: two pretrained backbones probed against the same random twins, which
    are probed once (the records as without the cache); another split probes them again."""
    import omnivec.demo_probes

    cfg = from_dict(
        FinetuneConfig,
        {
            "tasks": {"shapes": {"head": "classification", "data": [str(SAMPLE / "shapes")], "train_fraction": 0.5}},
            "stages": [{"tasks": ["shapes"]}],
        },
        "",
    )
    for seed in (3, 4):
        torch.manual_seed(seed)
        omnivec.build_model("omnivec_tiny", **{**TINY, "heads": {}}).save_pretrained(tmp_path / f"model-{seed}")
    settings = ProtocolSettings(epochs=2)
    uncached = [probe_backbones(tmp_path / f"model-{s}", cfg, tmp_path / "u.json", settings, "cpu") for s in (3, 4)]
    runs = []
    real = omnivec.demo_probes.run_protocols
    monkeypatch.setattr(omnivec.demo_probes, "run_protocols", lambda *a: runs.append(a[4]) or real(*a))
    cache: dict = {}
    cached = [
        probe_backbones(tmp_path / f"model-{s}", cfg, tmp_path / "c.json", settings, "cpu", random_cache=cache)
        for s in (3, 4)
    ]
    assert cached == uncached and len(runs) == 1 + 3 + 1  # the second backbone: only itself
    probe_backbones(tmp_path / "model-3", cfg, tmp_path / "v.json", settings, "cpu", split="val", random_cache=cache)
    assert len(runs) == 5 + 1 + 3 and len(cache) == 6
