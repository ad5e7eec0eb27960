"""omnivec/channel.py (the telephone-channel proxy) and recipes/channel_robustness.py on a smoke-test budget."""

import importlib.util
import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES, folder_bytes

import omnivec
from omnivec.channel import channel_copy, telephone
from omnivec.config import augment_configs
from omnivec.datasets import check_path, load_task

ROOT = Path(__file__).resolve().parents[1]

RATE = 16000
LABELS = ("zero", "one", "two")


def load_recipe():
    spec = importlib.util.spec_from_file_location("channel_robustness", ROOT / "recipes" / "channel_robustness.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def high_share(waveform: torch.Tensor, rate: int, above: float = 4100.0) -> float:
    """The share of a clip's energy above `above` Hz."""
    power = torch.fft.rfft(waveform.reshape(-1).double()).abs() ** 2
    return float(power[torch.fft.rfftfreq(waveform.shape[-1], 1 / rate) > above].sum() / power.sum())


@pytest.fixture
def spoken(tmp_path: Path) -> Path:
    """Three digits of the sample's spoken_digits: four training voices each, and every val and test clip."""
    out = tmp_path / "spoken"
    (out / "clips").mkdir(parents=True)
    rows, train = [], dict.fromkeys(LABELS, 0)
    for line in (SAMPLE / "spoken_digits" / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["label"] not in LABELS or (row["split"] == "train" and train[row["label"]] == 4):
            continue
        train[row["label"]] += row["split"] == "train"
        shutil.copy(SAMPLE / "spoken_digits" / row["path"], out / row["path"])
        rows.append(row)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_the_channel_leaves_nothing_above_4_khz_but_the_noise_floor(tmp_path):
    t = torch.arange(RATE // 2) / RATE
    tones = 0.4 * torch.sin(2 * math.pi * 1000 * t) + 0.4 * torch.sin(2 * math.pi * 6000 * t)  # [S]
    (tmp_path / "tones" / "clips").mkdir(parents=True)
    sf.write(tmp_path / "tones" / "clips" / "a.wav", tones.numpy(), RATE, subtype="PCM_16")
    (tmp_path / "tones" / "manifest.jsonl").write_text(json.dumps({"path": "clips/a.wav", "split": "val"}) + "\n")
    channel_copy(load_task(tmp_path / "tones"), tmp_path / "proxy", snr_db=20.0)
    proxy, rate = sf.read(next((tmp_path / "proxy" / "clips").glob("*.wav")), dtype="float32")
    assert rate == RATE and proxy.shape == tones.shape  # back at 16 kHz, same length
    assert high_share(tones, RATE) > 0.49
    assert high_share(torch.from_numpy(proxy), RATE) < 1e-3  # the 6 kHz tone is gone, the noise is band-limited too
    spectrum = torch.fft.rfft(torch.from_numpy(proxy).double()).abs()
    assert spectrum[500] > 100 * spectrum[3000]  # the 1 kHz tone stays (bins of 1 Hz)

    clip, rate = sf.read(SAMPLE / "spoken_digits" / "clips" / "000_zero.flac", dtype="float32", always_2d=True)
    clean = torch.from_numpy(clip.T)  # [1, S]
    narrow = telephone(clean, rate, 20.0, torch.Generator().manual_seed(0))
    assert narrow.shape == clean.shape
    assert high_share(narrow, rate) < 0.1 * high_share(clean, rate)


def test_the_proxy_is_deterministic_and_keeps_labels_and_splits(spoken, tmp_path):
    source = load_task(spoken)
    first = channel_copy(source, tmp_path / "a", snr_db=20.0, seed=0).parent
    second = channel_copy(source, tmp_path / "b", snr_db=20.0, seed=0).parent
    assert folder_bytes(first) == folder_bytes(second)
    assert folder_bytes(channel_copy(source, tmp_path / "c", seed=1).parent) != folder_bytes(first)
    proxy = load_task(first)  # read back as any dataset
    kept = [r for r in source.rows if r["split"] in ("val", "test")]
    assert [(r["label"], r["split"]) for r in proxy.rows] == [(r["label"], r["split"]) for r in kept]
    assert len(kept) == 12 and proxy.classes == source.classes and proxy.modality == "audio"
    assert check_path(first, workers=1)[0].bad == []  # `omnivec data check` finds every clip usable
    with pytest.raises(omnivec.DataError, match="no rows in the splits"):
        channel_copy(source, tmp_path / "d", splits=("nonsense",))


def tiny_config(tmp_path: Path, data: Path) -> Path:
    """A fine-tuning config of spoken_digits alone on a one-layer, 32-wide model with a small audio encoder."""
    overrides = {
        "backbone": SMALL_MODEL_OVERRIDES["backbone"],
        "modalities": {"image": None, "video": None, "text": None, "point_cloud": None},
    }
    overrides["modalities"]["audio"] = {"num_mel_bins": 32, "target_frames": 48}
    path = tmp_path / "tiny.yaml"
    config = {
        "model": "omnivec_tiny",
        "model_overrides": overrides,
        "tasks": {"spoken_digits": {"head": "classification", "data": [str(data)]}},
        "stages": [{"tasks": ["spoken_digits"], "steps": 2}],
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--steps", "0"], "error: --steps: expected an int > 0, got 0"),
        (["--seeds", "-1"], "error: --seeds: expected ints in [0, 2**32), got -1"),
        (["--snr-db", "nan"], "error: --snr-db: expected a finite number of decibels, got nan"),
        (
            ["--augment", "loud"],
            "error: --augment: expected settings among ['off', 'audio', 'band_limit', 'band_only'], got",
        ),
        (["--device", "tpu"], "error: --device: expected auto or cpu"),
        (["--set", "seed=3"], "error: --set seed=3: the recipe sets init, seed"),
        (["--set", "augment.audio.band_limit=1"], "error: --set augment.audio.band_limit=1: the recipe sets"),
        (["--set", "nonsense=1"], "error: nonsense: unknown key"),
        (["--task", "nope"], "error: --task: expected a task of configs/finetune/sample_sequential.yaml ("),
        (["--task", "digits"], "error: --task digits: expected an audio classification task"),
        (["--task", "spoken_mix"], "error: --task spoken_mix: expected an audio classification task"),
        (["--init", "/missing"], "error: /missing: no such model folder"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, bad, message):
    monkeypatch.chdir(ROOT)  # the default config's paths are relative to it
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["recipes/channel_robustness.py", "--quick", "--output", str(out), *bad])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(ROOT / "recipes" / "channel_robustness.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(message), err
    assert not out.exists()


def test_channel_robustness_quick(spoken, tmp_path):
    recipe = load_recipe()
    out = tmp_path / "channel"
    args = ["--quick", "--finetune-config", str(tiny_config(tmp_path, spoken)), "--device", "cpu", "--output", str(out)]
    recipe.main(args + ["--seeds", "3", "4"])
    table = (out / "channel.md").read_text().splitlines()
    assert "| augmentation | augment | val clean | val proxy | test clean | test proxy |" in table
    rows = [line for line in table if line.startswith("| ") and "±" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| off", "| audio", "| band_limit", "| band_only"]
    assert all(r.count("±") == 4 for r in rows)
    assert any(line.startswith("Best on val proxy: **") for line in table)
    report = json.loads((out / "channel.json").read_text())
    assert [(r["setting"], r["seed"]) for r in report["runs"]] == [(s, 3) for s in recipe.DEFAULT_SETTINGS]
    assert report["best_on_val_proxy"] in recipe.SETTINGS
    for run in report["runs"]:
        assert all(0 <= run[c] <= 1 for c in recipe.COLUMNS)
    saved = json.loads((out / "runs" / "band_limit-seed3" / "run_config.json").read_text())["config"]
    assert saved["augment"] == {"audio": {**saved["augment"]["audio"], "band_limit": 0.5}}
    assert saved["stages"][0]["steps"] == 3 and saved["init"] is None
    assert (out / "runs" / "band_limit-seed3" / "model" / "model.safetensors").is_file()
    proxy = load_task(out / "proxy")
    assert {r["split"] for r in proxy.rows} == {"val", "test"} and len(proxy.rows) == 12

    lines = (out / "runs.jsonl").read_text()
    recipe.main(args + ["--seeds", "3"])  # the same settings: every run is done, only the report is written again
    assert (out / "runs.jsonl").read_text() == lines
    with pytest.raises(omnivec.ConfigError, match=r"proxy.snr_db: 20.0 there, 10.0 now"):
        recipe.main(args + ["--seeds", "3", "--snr-db", "10"])
    with pytest.raises(omnivec.ConfigError, match=r"steps: 3 there, 300 now"):
        recipe.main(args[1:] + ["--seeds", "3"])


def test_every_setting_is_a_valid_augment_config():
    recipe = load_recipe()
    configs = {name: augment_configs(augment, "augment") for name, augment in recipe.SETTINGS.items()}
    assert configs["off"] == {} and configs["audio"]["audio"].band_limit == 0
    assert configs["band_limit"]["audio"].band_limit == 0.5 and configs["band_limit"]["audio"].time_mask == 192
    only = configs["band_only"]["audio"]
    assert only.band_limit == 0.5 and not (only.speed or only.time_shift or only.gain_db or only.noise_snr_db)
    assert not (only.freq_mask or only.time_mask)
