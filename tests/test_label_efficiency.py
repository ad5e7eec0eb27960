"""recipes/label_efficiency.py and recipes/pretrain_ablation.py end to end on a smoke-test budget."""

import importlib.util
import json
from pathlib import Path

import pytest

import omnivec

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


@pytest.mark.integration
def test_label_efficiency_quick(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs' paths are relative to the repository root
    recipe = load_recipe("label_efficiency")
    out = tmp_path / "le"
    args = [
        "--quick",
        "--tasks",
        "shapes",
        "spoken_mix",
        "--seeds",
        "0",
        "1",
        "--fractions",
        "0.25",
        "1",
        "--device",
        "cpu",
        "--output",
        str(out),
    ]
    recipe.main(args)
    table = (out / "label_efficiency.md").read_text()
    assert (out / "label_efficiency.png").stat().st_size > 0
    rows = [line for line in table.splitlines() if line.startswith(("| shapes", "| spoken_mix"))]
    assert [r.split(" | ")[:3] for r in rows[:4]] == [  # fine-tuning: task, metric, share of the labels
        ["| shapes", "top1", "25%"],
        ["| shapes", "top1", "100%"],
        ["| spoken_mix", "mAP", "25%"],
        ["| spoken_mix", "mAP", "100%"],
    ]
    assert [r.split(" | ")[:2] for r in rows[4:]] == [["| shapes", "top1"], ["| spoken_mix", "mAP"]]  # probes
    assert rows[0].count("±") == 3 and rows[1].count("±") == 2  # target-only pretraining at the smallest fraction
    assert rows[4].count("±") == 6 and rows[5].count("±") == 3  # no k-NN for multi-label
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    finetunes = [r for r in records if r["protocol"] == "finetune"]
    assert len(finetunes) == 2 * 2 * (2 * 2 + 1)  # tasks x seeds x (fractions x inits + target only)
    assert {r["init"] for r in records} == {"pretrained", "scratch", "target_only", "random"}
    assert {p.name for p in out.iterdir() if p.name.startswith("pretrain-")} == {
        "pretrain-all",
        "pretrain-point_cloud",
        "pretrain-audio",
    }
    recipe.main(args)  # a rerun finds every result done and only rewrites the report
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)


@pytest.mark.integration
def test_label_efficiency_overrides_and_no_target_only(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("label_efficiency")
    out = tmp_path / "le"
    args = [
        "--quick",
        "--tasks",
        "shapes",
        "--seeds",
        "0",
        "--fractions",
        "0.5",
        "--no-target-only",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--pretrain-set",
        "model_overrides.modalities.point_cloud.mask_ratio=0.5",
    ]
    recipe.main(args + ["--set", "lr=1e-3", "--set", "tasks.shapes.head_args.dropout=0.2"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["init"] for r in records} == {"pretrained", "scratch", "random"}
    assert {p.name for p in out.iterdir() if p.name.startswith("pretrain-")} == {"pretrain-all"}
    pretrained = json.loads((out / "pretrain-all" / "model" / "config.json").read_text())
    assert pretrained["modalities"]["point_cloud"]["mask_ratio"] == 0.5
    finetuned = json.loads((out / "finetune" / "shapes-scratch-0.5-seed0" / "run_config.json").read_text())["config"]
    assert finetuned["lr"] == 1e-3 and finetuned["tasks"]["shapes"]["head_args"] == {"dropout": 0.2}
    assert (
        "Fine-tuning overrides: `lr=1e-3 tasks.shapes.head_args.dropout=0.2`"
        in (out / "label_efficiency.md").read_text()
    )
    # the same settings spelled otherwise extend the folder; other settings are refused before any work
    recipe.main(args + ["--seeds", "1", "--set", "tasks.shapes.head_args.dropout=0.2", "lr=0.001"])
    assert len((out / "results.jsonl").read_text().splitlines()) > len(records)
    with pytest.raises(omnivec.ConfigError, match=r"fine-tuning.lr: 0.001 there, 0.002 now"):
        recipe.main(args + ["--seeds", "2", "--set", "lr=2e-3", "tasks.shapes.head_args.dropout=0.2"])
    with pytest.raises(omnivec.ConfigError, match=r"pretraining.model_overrides.modalities.point_cloud.mask_ratio"):
        recipe.main(
            args[:-1]
            + [
                "model_overrides.modalities.point_cloud.mask_ratio=0.7",
                "--set",
                "lr=1e-3",
                "tasks.shapes.head_args.dropout=0.2",
            ]
        )
    with pytest.raises(omnivec.ConfigError, match="the recipe sets init, seed"):
        recipe.main(["--quick", "--output", str(tmp_path / "bad"), "--set", "seed=3"])
    with pytest.raises(omnivec.ConfigError, match="nonsense"):  # a bad key fails before any work
        recipe.main(["--quick", "--tasks", "shapes", "--output", str(tmp_path / "bad"), "--pretrain-set", "nonsense=1"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_pretrain_ablation_quick(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pretrain_ablation")
    out = tmp_path / "ablation"
    args = ["--quick", "--task", "shapes", "--variants", "baseline", "mask 0.5", "--blocks", "1", "--output", str(out)]
    recipe.main(args)
    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == [
        "baseline",
        "mask 0.5",
        "random init",
        "random init, block 1",
        "baseline, block 1",
        "mask 0.5, block 1",
    ]
    assert results["mask 0.5"]["overrides"] == ["model_overrides.modalities.point_cloud.mask_ratio=0.5"]
    saved = {name: json.loads((out / name / "model" / "config.json").read_text()) for name in ("baseline", "mask_0.5")}
    assert [saved[n]["modalities"]["point_cloud"]["mask_ratio"] for n in saved] == [0.6, 0.5]
    for name, r in results.items():
        assert 0 <= r["knn"]["top1"] <= 1 and 0 <= r["linear"]["top1"] <= 1, name
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == len(results) + 1  # header and one row per setting
    recipe.main(args)  # a rerun reuses the pretrained models
    assert json.loads((out / "ablation.json").read_text()).keys() == results.keys()


@pytest.mark.integration
def test_pretrain_ablation_compares_another_architecture_with_its_own_random_twin(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pretrain_ablation")
    out = tmp_path / "ablation"
    recipe.main(["--quick", "--task", "moving_digits", "--variants", "patch 8", "--seed", "3", "--output", str(out)])
    results = json.loads((out / "ablation.json").read_text())
    assert list(results) == ["patch 8", "random init", "random init, patch 8"]  # omnivec_tiny's video: patch 4
    run = json.loads((out / "patch_8" / "run_config.json").read_text())["config"]
    assert run["seed"] == 3 and run["model_overrides"]["modalities"]["video"]["patch_size"] == 8
    assert "one seed (3)" in (out / "ablation.md").read_text()


def test_a_given_pretrained_model_reports_the_steps_its_pretraining_run_recorded(tmp_path):
    recipe = load_recipe("label_efficiency")
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    assert recipe.recorded_steps(model_dir) is None  # no record beside it
    record = tmp_path / "run" / "run_config.json"
    record.write_text(json.dumps({"recipe": "pretrain", "config": {"max_steps": 3000}}))
    assert recipe.recorded_steps(model_dir) == 3000
    record.write_text(json.dumps({"recipe": "finetune", "config": {"max_steps": 150}}))
    assert recipe.recorded_steps(model_dir) is None  # a fine-tuned model: not pretraining steps


def test_pretrain_ablation_gives_audio_patches_a_stride_as_long_as_the_patch():
    recipe = load_recipe("pretrain_ablation")
    assert recipe.variant_overrides("patch 8", "video") == ["model_overrides.modalities.video.patch_size=8"]
    audio = recipe.variant_overrides("patch 8", "audio")
    assert audio == ["model_overrides.modalities.audio.patch_size=8", "model_overrides.modalities.audio.patch_stride=8"]
    overrides = dict(o.removeprefix("model_overrides.").split("=") for o in audio)
    cfg = omnivec.model_config("omnivec_tiny", **{k: int(v) for k, v in overrides.items()})
    assert cfg.modalities["audio"].grid == (1, 16)  # 128 frames in frame patches of 8: half the default's tokens
