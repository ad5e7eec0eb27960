import json
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES

import omnivec
from omnivec.cli import main
from omnivec.datasets import load_task, read_file
from omnivec.datasets.loaders import collate_for
from omnivec.finetune_config import FinetuneConfig
from omnivec.finetuning import finetune
from omnivec.parsing import from_dict


def _config(tmp_path: Path, **kw) -> FinetuneConfig:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "tasks": {
            "digits": {"head": "classification", "data": [str(SAMPLE / "digits")]},
            "shapes": {"head": "classification", "data": [str(SAMPLE / "shapes")]},
        },
        "stages": [{"tasks": ["digits"], "steps": 2}, {"tasks": ["shapes"], "steps": 2, "freeze": ["encoders"]}],
        "batch_size": 8,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "save_every": 0,
        "eval_batch_size": 64,
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
    }
    data.update(kw)
    return from_dict(FinetuneConfig, data, "")


def _split(model: omnivec.OmniVecModel, task: str, split: str, label_map: dict | None = None):
    """A sample task's split read and transformed file by file, without the training data pipeline:
    (model-ready batch, label names)."""
    task_data = load_task(SAMPLE / task)
    transform = model.transforms()[task_data.modality]
    inputs, labels = [], []
    for row in task_data.split(split):
        raw = read_file(row["path"])
        inputs.append(transform(*raw) if isinstance(raw, tuple) else transform(raw))  # audio: (waveform, rate)
        labels.append((label_map or {}).get(row["label"], row["label"]))
    samples = [{"index": i, "input": x, "target": None} for i, x in enumerate(inputs)]
    return collate_for(model, task_data.modality)(samples)["input"], labels  # audio clips padded


@pytest.mark.integration
def test_two_stage_run_writes_the_forgetting_matrix(tmp_path):
    report = finetune(_config(tmp_path))
    run = tmp_path / "run"
    saved = json.loads((run / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    matrix = saved["forgetting_matrix"]
    assert matrix["tasks"] == ["digits", "shapes"] and matrix["metric"] == {"digits": "top1", "shapes": "top1"}
    assert matrix["rows"][0][1] is None and all(v is not None for v in matrix["rows"][1])
    assert matrix["rows"][1][0] == saved["final"]["digits"]["top1"]
    assert set(saved["final"]["digits"]) == {"top1", "top5", "samples"} and saved["final"]["digits"]["samples"] == 270
    assert saved["baselines"]["shapes"]["chance_top1"] == pytest.approx(0.1)
    assert "Forgetting matrix" in (run / "eval.md").read_text()
    model = omnivec.OmniVecModel.from_pretrained(run / "model")
    assert set(model.heads) == {"digits", "shapes"} and model.config.heads["digits"].labels[3] == "3"
    for stage in ("1_digits", "2_shapes"):  # a checkpoint after each stage
        assert (run / "stages" / stage / "model" / "model.safetensors").is_file()
        assert list((run / "stages" / stage / "checkpoints").glob("step_*"))


@pytest.mark.integration
def test_frozen_parts_do_not_change(tmp_path):
    cfg = _config(tmp_path, stages=[{"tasks": ["digits"], "steps": 2, "freeze": ["backbone", "encoders"]}])
    finetune(cfg)
    torch.manual_seed(cfg.seed)  # the same initialisation as the run's
    start = omnivec.OmniVecModel(omnivec.model_config(cfg.model, **cfg.model_overrides))
    trained = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model")
    for name, p in start.backbone.state_dict().items():
        assert torch.equal(p, trained.backbone.state_dict()[name]), name


@pytest.mark.integration
def test_evaluate_cli_writes_metrics_and_confusion_matrices(tmp_path, capsys):
    finetune(_config(tmp_path, stages=[{"tasks": ["digits"], "steps": 2}]))
    config = tmp_path / "ft.yaml"
    cfg = _config(tmp_path)
    import dataclasses

    import yaml

    config.write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg)))))
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "run" / "model"),
                "--config",
                str(config),
                "--output",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "digits" in out and "top1" in out and "no head in the model for: shapes" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The reported top-1 is the saved model's: recomputed here from its logits on the test split
    model = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model").eval()
    x, labels = _split(model, "digits", "test")
    with torch.no_grad():
        predicted = model({"image": x}).logits["digits"].argmax(1)
    names = model.config.heads["digits"].labels
    correct = sum(names[p] == label for p, label in zip(predicted.tolist(), labels))
    assert metrics["split"] == "test" and metrics["metrics"]["digits"]["samples"] == len(labels) == 270
    assert metrics["metrics"]["digits"]["top1"] == pytest.approx(correct / len(labels), abs=1e-6)  # float32 mean
    assert (tmp_path / "eval" / "confusion_digits.png").stat().st_size > 1000


def test_unknown_task_in_a_stage_is_a_config_error(tmp_path):
    with pytest.raises(omnivec.ConfigError, match=r"stages\.0\.tasks"):
        _config(tmp_path, stages=[{"tasks": ["digitz"], "steps": 2}])
    with pytest.raises(omnivec.ConfigError, match=r"stages\.0\.freeze"):
        _config(tmp_path, stages=[{"tasks": ["digits"], "freeze": ["heads"]}])


@pytest.mark.integration
def test_replay_rehearses_earlier_tasks(tmp_path):
    cfg = _config(
        tmp_path, stages=[{"tasks": ["digits"], "steps": 1}, {"tasks": ["shapes"], "steps": 3, "replay": ["digits"]}]
    )
    report = finetune(cfg)
    assert report["stages"][1]["replay"] == ["digits"]
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "stages" / "2_shapes" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("loss/digits" in r and "loss/shapes" in r for r in records if "lr" in r)  # both in every step
    with pytest.raises(omnivec.ConfigError, match=r"stages\.0\.replay"):
        _config(tmp_path, stages=[{"tasks": ["digits"], "replay": ["shapes"]}, {"tasks": ["shapes"]}])


def test_backbone_lr_scale_sets_the_param_group_rates():
    from omnivec.finetune_module import FinetuneModule
    from omnivec.optim import param_groups

    model = omnivec.build_model("omnivec_tiny", **{"backbone.depth": 1})
    model.add_head("digits", omnivec.heads.classification.ClassificationHeadConfig(modality="image", num_classes=10))
    groups = param_groups(FinetuneModule(model, 0.1), 0.05, 1e-3, FinetuneModule(model, 0.1).lr_scales())
    head_ids = {id(p) for p in model.heads.parameters()}
    for g in groups:
        is_head = {id(p) in head_ids for p in g["params"]}
        assert len(is_head) == 1  # heads never share a group with the backbone
        assert g["lr"] == pytest.approx(1e-3 if is_head.pop() else 1e-4)


def test_cross_modal_alignment_loss_prefers_same_class_neighbours():
    from omnivec.finetune_module import cross_modal_alignment

    labels = torch.tensor([0, 1, 2, 0])
    aligned = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.01, dim=-1)
    shuffled = torch.nn.functional.normalize(torch.eye(3)[torch.tensor([1, 2, 0, 2])] + 0.01, dim=-1)
    good = cross_modal_alignment({"a": (aligned, labels), "b": (aligned, labels)}, 0.1)
    bad = cross_modal_alignment({"a": (aligned, labels), "b": (shuffled, labels)}, 0.1)
    assert good < 0.8 < bad  # same-class mass ~1 (two "0" positives) vs ~0


@pytest.mark.integration
def test_label_map_and_aligned_stage(tmp_path):
    numbers = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
    cfg = _config(
        tmp_path,
        tasks={
            "digits": {"head": "classification", "data": [str(SAMPLE / "digits")]},
            "spoken": {"head": "classification", "data": [str(SAMPLE / "spoken_digits")], "label_map": numbers},
        },
        stages=[{"tasks": ["digits", "spoken"], "steps": 2, "align": ["digits", "spoken"]}],
        model_overrides={**SMALL_MODEL_OVERRIDES, "modalities": {**SMALL_MODEL_OVERRIDES["modalities"], "audio": {}}},
    )
    report = finetune(cfg)
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "stages" / "1_digits+spoken" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("loss/align" in r for r in records if "lr" in r)
    assert set(report["retrieval"]) == {"digits->spoken", "spoken->digits"}
    # precision@5 recomputed from the saved model: for each spoken test clip, the share of its 5
    # nearest test digit images (cosine of the embeddings) that show its number
    model = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model").eval()
    (audio, spoken_labels), (images, digit_labels) = (
        _split(model, "spoken_digits", "test", numbers),
        _split(model, "digits", "test"),
    )
    with torch.no_grad():
        queries, keys = model.embed({"audio": audio})["audio"], model.embed({"image": images})["image"]
    neighbours = (queries @ keys.T).topk(5, dim=1).indices
    hits = [sum(digit_labels[j] == label for j in row) for row, label in zip(neighbours.tolist(), spoken_labels)]
    assert report["retrieval"]["spoken->digits"]["precision@5"] == pytest.approx(sum(hits) / (5 * len(hits)), abs=1e-6)
    assert report["retrieval"]["spoken->digits"]["chance"] == pytest.approx(0.1, abs=0.02)
    model = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model")
    assert list(model.config.heads["spoken"].labels) == [str(i) for i in range(10)]


def test_label_map_of_an_unknown_label_and_mismatched_spaces(tmp_path):
    with pytest.raises(omnivec.ConfigError, match=r"tasks.spoken.label_map: 'eleven' is not a label"):
        finetune(
            _config(
                tmp_path,
                tasks={
                    "spoken": {
                        "head": "classification",
                        "data": [str(SAMPLE / "spoken_digits")],
                        "label_map": {"eleven": "11"},
                    }
                },
                stages=[{"tasks": ["spoken"], "steps": 1}],
            )
        )
    with pytest.raises(
        omnivec.ConfigError, match=r"stages\.0\.align: expected classification tasks with one label space"
    ):
        finetune(_config(tmp_path, stages=[{"tasks": ["digits", "shapes"], "steps": 1, "align": ["digits", "shapes"]}]))
