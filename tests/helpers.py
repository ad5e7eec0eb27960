"""Shared by the tests: the sample data, a very small omnivec_tiny for recipes, a pretraining config
writer, the CLI as a subprocess, run folders to compare, and sample subsets with configs for recipes."""

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

SAMPLE = Path(__file__).parents[1] / "data" / "sample"

# Width 32, one layer, image + text + point cloud only: recipes run in seconds.
SMALL_MODEL_OVERRIDES = {
    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
    "modalities": {
        "video": None,
        "audio": None,
        "text": {"tokenizer": str(SAMPLE / "tokenizer"), "vocab_size": 4000, "max_length": 32},
        "point_cloud": {"num_points": 128, "num_groups": 8, "group_size": 8, "pointnet_dims": [16, 32, 32]},
    },
}


def pretrain_yaml(tmp_path: Path, name: str, **kw) -> Path:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")], "point_cloud": [str(SAMPLE / "shapes")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "max_steps": 12,
        "save_every": 2,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
    }
    data.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def omnivec_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "omnivec", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def logged_steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").is_file():
        return []
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]


def digits_with_bad_files(tmp_path: Path, bad: list[str]) -> Path:
    """Eight sample digits (six train, two val) in a dataset folder, the files named in `bad` corrupted."""
    data = tmp_path / "digits"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        shutil.copy(SAMPLE / "digits" / "images" / f"{i:04d}.png", data / "images" / f"{i:04d}.png")
        rows.append({"path": f"images/{i:04d}.png", "label": str(i % 2), "split": "train" if i < 6 else "val"})
    for name in bad:
        (data / "images" / name).write_bytes(b"\x89PNG not really")
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def fake_run(folder: Path, **files: str) -> dict[str, bytes]:
    """A run folder holding `files` (relative path -> text); returns every file's bytes, to compare later."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def subset(name: str, folder: Path, per_split: int) -> Path:
    """A sample dataset cut to `per_split` rows of each split, evenly spaced (every class kept)."""
    rows = [json.loads(line) for line in (SAMPLE / name / "manifest.jsonl").read_text().splitlines()]
    kept = []
    for split in ("train", "val", "test"):
        of_split = [r for r in rows if r["split"] == split]
        kept += of_split[:: max(1, len(of_split) // per_split)][:per_split]
    for r in kept:
        (folder / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / r["path"]).write_bytes((SAMPLE / name / r["path"]).read_bytes())
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return folder


def small_configs(tmp_path: Path) -> tuple[Path, Path]:
    """A width-32 pretraining config on image and point-cloud subsets, and the two tasks on them."""
    digits, shapes = subset("digits", tmp_path / "digits", 30), subset("shapes", tmp_path / "shapes", 25)
    pretrain = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(digits)], "point_cloud": [str(shapes)]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
    }
    tasks = {
        "tasks": {
            "digits": {"head": "classification", "data": [str(digits)]},
            "shapes": {"head": "classification", "data": [str(shapes)]},
        },
        "stages": [{"tasks": ["digits", "shapes"]}],  # (a fine-tuning config needs one; the recipe reads only the data)
    }
    paths = tmp_path / "pretrain.yaml", tmp_path / "tasks.yaml"
    for path, data in zip(paths, (pretrain, tasks)):
        path.write_text(yaml.safe_dump(data))
    return paths


def refused_before_any_work(main, out: Path, cases: list[tuple[list[str], str]]) -> None:
    """A recipe's `main(["--output", out, *args])` raises ConfigError matching each case's message,
    and leaves no `out` behind."""
    import pytest

    from omnivec.errors import ConfigError

    for args, message in cases:
        with pytest.raises(ConfigError, match=message):
            main(["--output", str(out), *args])
    assert not out.exists()


def load_recipe(name: str, monkeypatch):
    """recipes/NAME.py as a module, with recipes/ on sys.path (its sibling modules) as when run as a script."""
    import importlib.util

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    spec = importlib.util.spec_from_file_location(name, recipes / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_config_args(tmp_path: Path) -> list[str]:
    """`--pretrain-config` and `--finetune-config` naming `small_configs` written into `tmp_path`."""
    pretrain, tasks = small_configs(tmp_path)
    return ["--pretrain-config", str(pretrain), "--finetune-config", str(tasks)]


def change_tiny_variant(monkeypatch) -> None:
    """Make `omnivec_tiny` what a later omnivec might: its text embeddings without their norm (fewer tensors)."""
    from omnivec.registry import MODELS
    from omnivec.variants import omnivec_tiny

    def changed() -> dict:
        variant = omnivec_tiny()
        variant["modalities"]["text"]["embed_norm"] = False
        return variant

    monkeypatch.setitem(MODELS._items, "omnivec_tiny", changed)


def assert_resumed_as_before(before: Path, after: Path) -> None:
    """The `model.safetensors` files `before` and `after` hold the same tensors, the text norm's among them."""
    import torch
    from safetensors.torch import load_file

    whole, resumed = load_file(before), load_file(after)
    assert "encoders.text.embed_norm.weight" in resumed
    assert sorted(whole.keys() ^ resumed.keys()) == []
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
