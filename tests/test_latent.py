"""The latent objective (omnivec/latent.py): the EMA teacher, its targets, several masks per teacher
pass, bitwise resume with the teacher in the checkpoint, the collapse guard, and the CLI."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY
from helpers import SAMPLE, SMALL_MODEL_OVERRIDES
from safetensors.torch import load_file

import omnivec
from omnivec.checkpointing import latest_checkpoint
from omnivec.errors import ConfigError, TrainingError
from omnivec.latent import LatentConfig, LatentTargets, average_layers, feature_std, instance_norm, teacher_decay
from omnivec.mae import DecoderConfig, MaskedPretrainer
from omnivec.parsing import from_dict
from omnivec.pretraining import PretrainConfig, objectives_of, pretrain
from omnivec.recipe_config import load_recipe_config

DECODER = DecoderConfig(dim=32, depth=1, num_heads=2)


def latent_pretrainer(config, modalities, **latent) -> MaskedPretrainer:
    torch.manual_seed(0)
    return MaskedPretrainer(
        omnivec.OmniVecModel(config),
        DECODER,
        objectives={m: "latent" for m in modalities},
        latent=LatentConfig(**latent),
    )


def test_teacher_decay_is_annealed_linearly_then_constant():
    cfg = LatentConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10)
    assert [teacher_decay(cfg, s) for s in (0, 5, 10, 11, 1000)] == pytest.approx([0.9, 0.945, 0.99, 0.99, 0.99])
    assert teacher_decay(LatentConfig(ema_decay=0.5, ema_end_decay=0.7, ema_anneal_steps=0), 1) == 0.7


def test_ema_update_by_hand(tiny_config):
    p = latent_pretrainer(tiny_config, ["image"], ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10)
    teacher = p.latent.teacher.module
    assert {k.split(".")[0] for k, _ in teacher.named_parameters()} == {"encoders", "backbone"}
    assert list(teacher.encoders) == ["image"]  # only the latent modalities' encoders
    assert not any(q.requires_grad for q in p.latent.parameters())
    student = p.model.state_dict()
    for k, v in teacher.state_dict().items():  # a copy of the student to begin with
        assert torch.equal(v, student[k]), k
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for q in p.model.parameters():
            q.add_(torch.randn_like(q))
    p.after_step(5)  # decay 0.945
    now = {k: v.clone() for k, v in p.model.state_dict().items()}
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.945 * before[k] + 0.055 * now[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(teacher.backbone.blocks[0].attn.qkv.weight, p.model.backbone.blocks[0].attn.qkv.weight)
    frozen = latent_pretrainer(tiny_config, ["image"], ema_decay=1.0, ema_end_decay=1.0)
    start = copy.deepcopy(frozen.latent.teacher.module.state_dict())
    with torch.no_grad():
        for q in frozen.model.parameters():
            q.add_(1.0)
    frozen.after_step(1)
    assert all(torch.equal(v, start[k]) for k, v in frozen.latent.teacher.module.state_dict().items())


def test_teacher_stays_in_eval_mode(tiny_config):
    p = latent_pretrainer(tiny_config, ["image"])
    p.train()
    assert p.model.training and not p.latent.teacher.module.training
    assert not any(m.training for m in p.latent.teacher.modules())


def test_instance_norm_and_layer_average_by_hand():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 4, generator=g) * (i + 1) + i for i in range(3)]  # K=3 layers [B, L, D]
    # no padding: F.instance_norm over the token axis, per sample and channel
    for h in layers:
        torch.testing.assert_close(instance_norm(h), F.instance_norm(h.transpose(1, 2)).transpose(1, 2))
    padding_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected = torch.zeros(2, 5, 4)
    for h in layers:
        for b in range(2):
            real = h[b, padding_mask[b]]  # [n, D]
            mean, var = real.mean(0), ((real - real.mean(0)) ** 2).mean(0)  # biased, as instance norm
            expected[b] += (h[b] - mean) / torch.sqrt(var + 1e-5) / 3
    torch.testing.assert_close(average_layers(layers, padding_mask, layer_norm=False), expected)
    mean, var = expected.mean(-1, keepdim=True), expected.var(-1, keepdim=True, correction=0)
    with_ln = average_layers(layers, padding_mask)
    torch.testing.assert_close(with_ln, (expected - mean) / torch.sqrt(var + 1e-5))
    changed = [h.clone() for h in layers]
    for h in changed:
        h[1, 3:] = 1e6  # padding never shifts the real tokens' targets
    torch.testing.assert_close(average_layers(changed, padding_mask)[1, :3], with_ln[1, :3])
    same = torch.ones(7, 4)  # every token alike: no spread
    assert feature_std(same) == pytest.approx(1e-3) and feature_std(torch.randn(4000, 3, generator=g)) > 0.95


def test_targets_are_the_teacher_s_top_k_block_outputs():
    config = omnivec.model_config("omnivec_tiny", **{**TINY, "backbone": {"dim": 32, "depth": 3, "num_heads": 2}})
    p = latent_pretrainer(config, ["text"], top_k=2)
    x = omnivec.example_inputs(config, 3)["text"]
    teacher = p.latent.teacher.module
    out = teacher.encoders["text"](x)
    layers = teacher.backbone.block_outputs(out.tokens, "text", out.padding_mask)  # (no prefix tokens here)
    assert len(layers) == 3
    last = teacher.backbone(out.tokens, "text", out.padding_mask)  # forward: the last block's output, normed
    torch.testing.assert_close(teacher.backbone.norm(layers[-1]), last)
    torch.testing.assert_close(p.latent.targets("text", x), average_layers(layers[1:], out.padding_mask))
    with pytest.raises(ConfigError, match="latent.top_k: expected at most the backbone's 3 blocks, got 4"):
        latent_pretrainer(config, ["text"], top_k=4)


def test_several_masks_share_one_teacher_pass(tiny_config):
    p = latent_pretrainer(tiny_config, ["image"], num_masks=3)
    calls = {"teacher": 0, "teacher_block": 0, "student": []}
    teacher = p.latent.teacher.module
    teacher.encoders["image"].register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    teacher.backbone.blocks[0].register_forward_hook(
        lambda *a: calls.__setitem__("teacher_block", calls["teacher_block"] + 1)
    )
    p.model.encoders["image"].register_forward_hook(lambda m, args, out: calls["student"].append(len(args[0])))
    x = omnivec.example_inputs(tiny_config, 2)["image"]
    p.train()
    losses = p({"image": {"input": x}})
    assert calls["teacher"] == 1 and calls["teacher_block"] == 1  # one teacher pass over the 2 samples
    assert calls["student"] == [6]  # the student sees 2 samples x 3 masks
    masking, out = p.encode("image", x, torch.Generator().manual_seed(1))
    targets = p.latent.targets("image", x)  # [2, L, D]
    assert out.target.shape == (6, *targets.shape[1:])
    for i in range(6):  # copies of a sample are adjacent and share its targets
        assert torch.equal(out.target[i], targets[i // 3])
    assert len({tuple(row.tolist()) for row in masking.mask}) == 6  # a mask of its own for each copy
    assert torch.isfinite(losses["image"])
    ((step, modality, target_std, _),) = p.latent.history
    assert (step, modality) == (1, "image") and target_std > 0.5


def test_packed_latent_step_gives_the_same_losses(tiny_config):
    plain = latent_pretrainer(tiny_config, ["image", "text", "point_cloud"], num_masks=2)
    packed = copy.deepcopy(plain)
    packed.pack = True
    batch = {m: {"input": x} for m, x in omnivec.example_inputs(tiny_config, 3).items()}
    losses = [module(batch, step=2) for module in (plain, packed)]
    assert losses[0].keys() == set(tiny_config.modalities)
    for m in losses[0]:
        torch.testing.assert_close(losses[1][m], losses[0][m], atol=1e-5, rtol=1e-5)


def test_latent_config_errors_name_the_key():
    data = {"image": ["x"], "audio": ["y"]}
    for kw, key in [
        ({"objective": "jepa"}, "objective"),
        ({"objectives": {"text": "latent"}}, "objectives.text"),
        ({"objectives": {"audio": "pixels"}}, "objectives.audio"),
        ({"latent": {"num_masks": 0}}, "latent.num_masks"),
        ({"latent": {"ema_decay": 1.5}}, "latent.ema_decay"),
        ({"latent": {"loss": "huber"}}, "latent.loss"),
        ({"latent": {"top_k": 0}}, "latent.top_k"),
        ({"latent": {"min_target_std": -1}}, "latent.min_target_std"),
        ({"latent": {"num_mask": 2}}, "latent.num_mask"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            from_dict(PretrainConfig, {"data": data, **kw}, "")
    cfg = from_dict(PretrainConfig, {"data": data, "objective": "latent", "objectives": {"audio": "mae"}}, "")
    assert objectives_of(cfg) == {"image": "latent", "audio": "mae"}


def image_config(tmp_path: Path, name: str, **kw) -> dict:
    data = {
        "model": "omnivec_tiny",
        "model_overrides": SMALL_MODEL_OVERRIDES,
        "data": {"image": [str(SAMPLE / "digits")]},
        "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
        "objective": "latent",
        "latent": {"num_masks": 2},
        "batch_size": 4,
        "num_workers": 0,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_batches": 1,
        "plot_samples": 1,
        "max_steps": 6,
        "save_every": 3,
        "output_dir": str(tmp_path / name),
        "device": "cpu",
    }
    data.update(kw)
    return data


def records(run: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if "lr" in r}


@pytest.mark.integration
def test_resume_gives_the_uninterrupted_student_and_teacher(tmp_path):
    """A run stopped at step 3 (its checkpoint copied alone into a new folder) and resumed ends with
    the weights, teacher included, and the losses of a run never stopped, bit for bit."""
    pretrain(from_dict(PretrainConfig, image_config(tmp_path / "a", "run"), ""))
    full = tmp_path / "a" / "run"
    resumed = tmp_path / "b" / "run"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    pretrain(from_dict(PretrainConfig, image_config(tmp_path / "b", "run", resume="auto"), ""))
    a, b = (load_file(run / "checkpoints" / "step_00000006" / "state" / "model.safetensors") for run in (full, resumed))
    assert a.keys() == b.keys() and any(k.startswith("latent.teacher.module.backbone.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    qkv = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(a[f"latent.teacher.module.{qkv}"], a[f"model.{qkv}"])  # the teacher lags the student
    first, again = records(full), records(resumed)
    assert sorted(again) == [4, 5, 6]
    for step in again:
        for key in ("loss/image", "target_std/image", "pred_std/image", "teacher_decay"):
            assert again[step][key] == first[step][key], (step, key)


def test_collapsed_targets_stop_the_run_naming_modality_and_step(tmp_path, monkeypatch):
    """The teacher's image encoder zeroed after step 2 (decay 1: it stays so): every token gets the
    same features, the step-3 targets have no spread; the step-2 checkpoint stays the newest."""
    real = LatentTargets.update

    def collapse_after_step_2(self, model, step):
        real(self, model, step)
        if step == 2:
            for q in self.teacher.module.encoders["image"].parameters():
                q.data.zero_()

    monkeypatch.setattr(LatentTargets, "update", collapse_after_step_2)
    cfg = from_dict(
        PretrainConfig,
        image_config(tmp_path, "run", save_every=2, latent={"num_masks": 1, "ema_decay": 1.0, "ema_end_decay": 1.0}),
        "",
    )
    with pytest.raises(
        TrainingError,
        match=r"^step 3: the 'image' latent targets collapsed \(their std over the "
        r"hidden tokens is 0.001 < latent.min_target_std 0.1",
    ) as error:
        pretrain(cfg)
    run = tmp_path / "run"
    assert latest_checkpoint(run) == run / "checkpoints" / "step_00000002"
    assert str(latest_checkpoint(run)) in str(error.value)
    assert not (run / "model").exists() and max(records(run)) == 2
    assert records(run)[2]["target_std/image"] > 0.5  # healthy before


@pytest.mark.integration
def test_latent_pretraining_through_the_cli(tmp_path):
    """`omnivec pretrain` with objective: latent (image, text) and an MAE override for point clouds."""
    data = image_config(tmp_path, "run", max_steps=3, save_every=0, objectives={"point_cloud": "mae"})
    data["data"].update(text=[str(SAMPLE / "acl_highlights")], point_cloud=[str(SAMPLE / "shapes")])
    config = tmp_path / "latent.yaml"
    config.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "omnivec", "pretrain", str(config), "latent.top_k=1"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    last = records(run)[3]
    assert {"loss/image", "loss/text", "loss/point_cloud", "target_std/image", "target_std/text"} <= set(last)
    assert "target_std/point_cloud" not in last and last["target_std/image"] > 0.1
    saved = load_recipe_config(PretrainConfig, config, ["latent.top_k=1"])
    assert json.loads((run / "run_config.json").read_text())["config"]["latent"]["top_k"] == saved.latent.top_k == 1
    model = omnivec.OmniVecModel.from_pretrained(run / "model")  # the student alone
    assert not any(k.startswith("latent.") for k in model.state_dict())
    assert (run / "reconstructions.png").is_file()  # the point clouds (MAE) are drawn


@pytest.mark.integration
def test_latent_is_refused_under_fsdp(tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(image_config(tmp_path, "run", max_steps=2)))
    from test_distributed import FSDP_ENV

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(Path(__file__).parent / "fsdp_on_cpu.py"),
            "pretrain",
            str(config),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **FSDP_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode != 0
    assert "objective: latent is not supported under FSDP" in result.stdout + result.stderr
