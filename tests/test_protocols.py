"""SSL evaluation protocols: weighted k-NN and the linear probe on frozen features, the attentive
probe on frozen tokens, the `omnivec evaluate --protocol` command, and the stratified label
subsample fine-tuning uses."""

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLE

import omnivec
from omnivec.attentive import TokenFeatures, attentive_evaluate, attentive_probe
from omnivec.cli import main
from omnivec.datasets import load_task
from omnivec.embedding_store import open_store
from omnivec.errors import ConfigError
from omnivec.finetune_config import FinetuneConfig
from omnivec.parsing import from_dict
from omnivec.probes import Features, FrozenPass, knn_evaluate, knn_scores, linear_evaluate, linear_probe
from omnivec.protocols import knn_protocol
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
    votes = torch.stack([(sims[0] / 0.5).exp(), (sims[1:] / 0.5).exp().sum()])
    assert torch.allclose(knn_scores(f, k=3, temperature=0.5)[0], votes / (sims[0] / 0.5).exp())  # nearest weighs 1


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


def token_features(n_per_class: int, seed: int, multi_label: bool = False) -> TokenFeatures:
    """Tokens [N, 16, 16] of noise; one token per sample, at a random place, is marked (feature 0)
    and carries the class centre in the other features, which a mean over the tokens dilutes 14-16
    fold; the last two slots of odd samples are padding holding junk."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * F.normalize(torch.randn(4, 15, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.arange(4).repeat_interleave(n_per_class)
    tokens = torch.randn(len(y), 16, 16, generator=g)
    tokens[..., 0] = 0
    marked = torch.arange(len(y)), torch.randint(0, 14, (len(y),), generator=g)
    tokens[marked + (0,)] = 4.0
    tokens[marked + (slice(1, None),)] += centres[y]
    mask = torch.ones(len(y), 16, dtype=torch.bool)
    mask[1::2, 14:] = False
    tokens[~mask] = 50.0
    target = F.one_hot(y, 4).float() if multi_label else y
    order = torch.randperm(len(y), generator=g)
    train, test = order[: len(y) * 3 // 4], order[len(y) * 3 // 4 :]
    return TokenFeatures(tokens[train], target[train], tokens[test], target[test], 4, mask[train], mask[test])


def test_attentive_probe_finds_the_token_that_carries_the_class():
    f = token_features(40, seed=0)
    result = attentive_evaluate(f, epochs=30, lr=1e-2, batch_size=16, num_heads=2)
    assert set(result) == {"top1", "top5", "_probe"}
    mean_pooled = Features(masked(f.train, f.train_mask), f.train_y, masked(f.test, f.test_mask), f.test_y, 4)
    linear = linear_evaluate(mean_pooled, epochs=30)["top1"]
    assert result["top1"] > 0.8 and linear < 0.5  # chance: 0.25
    multi = token_features(10, seed=0, multi_label=True)
    assert set(attentive_evaluate(multi, epochs=2, batch_size=16)) == {"mAP", "_probe"}


def masked(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.normalize((tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)


def test_attentive_probe_is_deterministic_and_leaves_the_global_rng_alone():
    f = token_features(5, seed=1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = attentive_probe(f, epochs=2, batch_size=8, seed=5)(f.test, f.test_mask)
    assert torch.rand(1) == before
    assert torch.equal(a, attentive_probe(f, epochs=2, batch_size=8, seed=5)(f.test, f.test_mask))
    assert not torch.equal(a, attentive_probe(f, epochs=2, batch_size=8, seed=6)(f.test, f.test_mask))


def test_knn_protocol_on_a_frozen_model(tiny_model):
    result = knn_protocol(tiny_model, [load_task(SAMPLE / "shapes")], FrozenPass("cpu"), k=5)
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


def test_evaluate_cli_attentive_saves_a_probe_that_embed_uses(tmp_path, tiny_config, capsys):
    torch.manual_seed(0)
    omnivec.OmniVecModel(tiny_config).save_pretrained(tmp_path / "model")
    config = tmp_path / "tasks.yaml"
    config.write_text(
        json.dumps({"tasks": {"shapes": {"data": [str(SAMPLE / "shapes")]}}, "stages": [{"tasks": ["shapes"]}]})
    )
    args = [
        "evaluate",
        "--model",
        str(tmp_path / "model"),
        "--config",
        str(config),
        "--output",
        str(tmp_path / "eval"),
        "--protocol",
        "attentive",
        "--epochs",
        "2",
        "--layers",
        "mean1",
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "eval" / "attentive.json").read_text())
    assert set(report["metrics"]["shapes"]) == {"top1", "top5", "samples"}
    assert report["settings"]["attentive_epochs"] == 2 and report["settings"]["epochs"] == 90  # linear's untouched
    probe = json.loads((tmp_path / "eval" / "attentive" / "shapes" / "probe.json").read_text())
    assert probe["layers"] == "mean1" and probe["num_classes"] == 10 and len(probe["classes"]) == 10
    embed = [
        "embed",
        "--model",
        str(tmp_path / "model"),
        "--input",
        str(SAMPLE / "shapes"),
        "--num-workers",
        "0",
        "--output",
        str(tmp_path / "emb"),
        "--pool",
        "attentive",
        "--layers",
        "mean1",
    ]
    assert main(embed) == 2 and "pool: 'attentive' needs a trained attentive pooler" in capsys.readouterr().err
    assert main([*embed, "--pooler", str(tmp_path / "eval" / "attentive" / "shapes")]) == 0
    meta = open_store(tmp_path / "emb").meta
    assert meta["pool"] == "attentive" and meta["layers"] == "mean1" and meta["pooler"].endswith("shapes")
    assert main([*args[:-2], "--layers", "mean9"]) == 2
    assert "layers: expected last, meanK (K in 1..1)" in capsys.readouterr().err


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


def test_attentive_heads_that_do_not_divide_the_width_fail_before_any_extraction(tiny_model, monkeypatch):
    from omnivec import protocols
    from omnivec.protocols import ProtocolSettings, run_protocols

    monkeypatch.setattr(protocols, "task_tokens", lambda *a: pytest.fail("tokens extracted before the check"))
    data = {"digits": [load_task(SAMPLE / "digits")]}
    width = tiny_model.config.backbone.dim
    with pytest.raises(
        ConfigError, match=rf"attentive_heads \(--heads\): 3 does not divide the backbone's width {width}"
    ):
        run_protocols(tiny_model, data, ["attentive"], ProtocolSettings(attentive_heads=3), "cpu")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenizer", "train", "--input", "x", "--output", "y", "--vocab-size", "0"], "expected at least 1, got 0"),
        (["evaluate", "--model", "m", "--config", "c", "--split", "tset"], "invalid choice: 'tset'"),
    ],
)
def test_cli_numbers_and_splits_are_checked_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
