"""SSL evaluation protocols: weighted k-NN and the linear probe on frozen features, the
`omnivec evaluate --protocol` command, and the stratified label subsample fine-tuning uses."""

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLE

import omnivec
from omnivec.cli import main
from omnivec.datasets import load_task
from omnivec.errors import ConfigError
from omnivec.finetune_config import FinetuneConfig
from omnivec.parsing import from_dict
from omnivec.protocols import Features, knn_evaluate, knn_protocol, knn_scores, linear_evaluate, linear_probe
from omnivec.tasks import load_task_data, subsample_train


def clusters(n_per_class: int, classes: int = 4, dim: int = 16, noise: float = 0.3, seed: int = 0):
    """Unit vectors around one random centre per class -> (features [N, dim], class ids [N])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return F.normalize(centres[y] + noise * torch.randn(len(y), dim, generator=g), dim=-1), y


def features(noise: float = 0.2) -> Features:
    train, train_y = clusters(30, noise=noise, seed=0)
    test, test_y = clusters(10, noise=noise, seed=0)  # same centres, other noise draws below
    test = F.normalize(test + noise * torch.randn(test.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    return Features(train, train_y, test, test_y, num_classes=4)


def test_knn_votes_are_weighted_by_similarity():
    # one very close neighbour of class 0 against two farther ones of class 1
    train = F.normalize(torch.tensor([[1.0, 0.05], [0.7, 0.7], [0.7, 0.71]]), dim=-1)
    f = Features(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), torch.tensor([0]), num_classes=2)
    assert knn_scores(f, k=3, temperature=0.07).argmax(1).item() == 0  # sharp weights: the nearest wins
    assert knn_scores(f, k=3, temperature=100.0).argmax(1).item() == 1  # nearly uniform: the majority wins
    sims = (f.test @ train.T)[0]
    assert torch.allclose(
        knn_scores(f, k=3, temperature=0.5)[0], torch.stack([(sims[0] / 0.5).exp(), (sims[1:] / 0.5).exp().sum()])
    )


def test_knn_and_linear_probe_separate_clusters_and_not_noise():
    good = features()
    assert knn_evaluate(good)["top1"] > 0.9
    assert linear_evaluate(good, epochs=30)["top1"] > 0.9
    shuffled = Features(
        good.train,
        good.train_y[torch.randperm(len(good.train_y), generator=torch.Generator().manual_seed(0))],
        good.test,
        good.test_y,
        4,
    )
    assert knn_evaluate(shuffled)["top1"] < 0.6  # labels unrelated to the features: near chance (0.25)


def test_linear_probe_is_deterministic_and_leaves_the_global_rng_alone():
    f = features()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = linear_probe(f, epochs=3, seed=5)(f.test)
    assert torch.rand(1) == before
    assert torch.equal(a, linear_probe(f, epochs=3, seed=5)(f.test))
    assert not torch.equal(a, linear_probe(f, epochs=3, seed=6)(f.test))
    assert not any(
        p.numel() and p.requires_grad for p in linear_probe(f, epochs=1)[0].parameters()
    )  # BN without affine


def test_multi_label_gets_map_from_the_linear_probe_and_no_knn():
    f = features()
    multi = Features(f.train, F.one_hot(f.train_y, 4).float(), f.test, F.one_hot(f.test_y, 4).float(), 4)
    assert set(linear_evaluate(multi, epochs=30)) == {"mAP"} and linear_evaluate(multi, epochs=30)["mAP"] > 0.9
    with pytest.raises(ConfigError, match="multi-label"):
        knn_evaluate(multi)


def test_knn_protocol_on_a_frozen_model(tiny_model):
    result = knn_protocol(tiny_model, [load_task(SAMPLE / "shapes")], k=5, device="cpu")
    assert set(result) == {"top1", "top5"} and 0 <= result["top1"] <= result["top5"] <= 1


def test_evaluate_cli_knn_and_linear(tmp_path, tiny_config, capsys):
    torch.manual_seed(0)
    omnivec.OmniVecModel(tiny_config).save_pretrained(tmp_path / "model")
    config = tmp_path / "tasks.yaml"
    config.write_text(
        json.dumps(
            {
                "tasks": {
                    "shapes": {"data": [str(SAMPLE / "shapes")]},
                    "spoken_mix": {"head": "multi_label", "data": [str(SAMPLE / "spoken_mix")]},
                },
                "stages": [{"tasks": ["shapes", "spoken_mix"]}],
            }
        )
    )
    args = ["evaluate", "--model", str(tmp_path / "model"), "--config", str(config), "--output", str(tmp_path / "eval")]
    assert main([*args, "--protocol", "knn", "-k", "10"]) == 0
    report = json.loads((tmp_path / "eval" / "knn.json").read_text())
    assert set(report["metrics"]) == {"shapes"} and report["settings"]["k"] == 10
    assert "multi-label" in report["skipped"]["spoken_mix"]
    assert report["baselines"]["shapes"]["chance_top1"] == pytest.approx(0.1)
    assert "(skipped spoken_mix: multi-label" in capsys.readouterr().out
    assert main([*args, "--protocol", "linear", "--epochs", "2"]) == 0
    report = json.loads((tmp_path / "eval" / "linear.json").read_text())
    assert (
        set(report["metrics"]["spoken_mix"]) == {"mAP", "samples"} and report["metrics"]["spoken_mix"]["samples"] == 9
    )
    assert main([*args, "--protocol", "knn", "-k", "0"]) == 2  # a clear error, no traceback
    assert "k: expected a positive number" in capsys.readouterr().err


def test_train_fraction_is_a_stratified_subsample_fixed_by_the_seed():
    task = load_task(SAMPLE / "digits")
    train = Counter(r["label"] for r in task.split("train"))
    small = subsample_train(task, 0.25, seed=0)
    kept = Counter(r["label"] for r in small.split("train"))
    assert kept == {c: max(1, round(n * 0.25)) for c, n in train.items()}
    assert small.split("test") == task.split("test") and small.split("val") == task.split("val")
    paths = lambda t: sorted(r["path"] for r in t.split("train"))  # noqa: E731
    assert paths(small) == paths(subsample_train(task, 0.25, seed=0))
    assert paths(small) != paths(subsample_train(task, 0.25, seed=1))
    tiny = Counter(r["label"] for r in subsample_train(load_task(SAMPLE / "shapes"), 0.05, seed=0).split("train"))
    assert set(tiny.values()) == {1} and len(tiny) == 10  # every class keeps one sample


def test_train_fraction_in_a_finetune_config():
    cfg = from_dict(
        FinetuneConfig,
        {
            "tasks": {"digits": {"data": [str(SAMPLE / "digits")], "train_fraction": 0.05}},
            "stages": [{"tasks": ["digits"]}],
            "seed": 3,
        },
        "",
    )
    assert (
        len(load_task_data(cfg)["digits"][0].split("train"))
        == len(subsample_train(load_task(SAMPLE / "digits"), 0.05, 3).split("train"))
        < 100
    )
    with pytest.raises(ConfigError, match=r"tasks.digits.train_fraction: expected a number in \(0, 1\]"):
        from_dict(
            FinetuneConfig,
            {"tasks": {"digits": {"data": ["x"], "train_fraction": 0}}, "stages": [{"tasks": ["digits"]}]},
            "",
        )
