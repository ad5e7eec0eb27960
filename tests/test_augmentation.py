"""Training augmentation per modality, mixup with soft targets, EMA, drop path and TensorBoard logs."""

import random

import numpy as np
import pytest
import torch
from timm.loss import SoftTargetCrossEntropy

import omnivec
from omnivec.config import augment_configs
from omnivec.datasets.dataset import seeded
from omnivec.finetune_config import FinetuneConfig
from omnivec.finetune_module import FinetuneModule, mixers
from omnivec.parsing import from_dict
from omnivec.registry import MODALITIES

# Every augmentation of a modality off; each case below switches one on from here.
OFF = {
    "image": {"hflip": 0.0, "rand_augment": "", "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0},
    "audio": {
        "speed": [],
        "band_limit": 0.0,
        "time_shift": 0.0,
        "gain_db": 0.0,
        "noise_snr_db": [],
        "freq_mask": 0,
        "time_mask": 0,
    },
    "video": {"rand_augment_ops": 0},
    "point_cloud": {"rotation": 0.0, "scale": [], "translate": 0.0, "jitter": 0.0, "point_dropout": 0.0},
}
ON = [
    ("image", "hflip", 1.0),
    ("image", "rand_augment", "rand-m9-mstd0.5-inc1"),
    ("image", "random_erasing", 1.0),
    ("audio", "speed", [1.1]),
    ("audio", "band_limit", 1.0),
    ("audio", "time_shift", 0.1),
    ("audio", "gain_db", 6.0),
    ("audio", "noise_snr_db", [10.0, 20.0]),
    ("audio", "freq_mask", 8),
    ("audio", "time_mask", 12),
    ("video", "rand_augment_ops", 2),
    ("point_cloud", "rotation", 180.0),
    ("point_cloud", "scale", [0.5, 2.0]),
    ("point_cloud", "translate", 0.2),
    ("point_cloud", "jitter", 0.01),
    ("point_cloud", "point_dropout", 0.5),
]


def raw_sample(modality: str):
    """A decoded file of each modality, as its reader returns it."""
    g = torch.Generator().manual_seed(0)
    if modality == "image":
        return (torch.rand(3, 20, 20, generator=g) * 255).to(torch.uint8)
    if modality == "audio":  # 0.4 s of a tone in noise: 38 fbank frames (target_frames 48: not padded)
        t = torch.arange(6400) / 16000
        return (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(6400, generator=g))[None], 16000
    if modality == "video":
        return (torch.rand(6, 20, 20, 3, generator=g) * 255).to(torch.uint8)
    return torch.randn(100, 3, generator=g)


def transform(config, modality: str, train: bool, augment=None):
    build = MODALITIES.get(modality).build_transform
    fn = (
        build(config.modalities[modality], train, augment)
        if augment is not None
        else build(config.modalities[modality], train)
    )
    raw = raw_sample(modality)
    return lambda: fn(*raw) if isinstance(raw, tuple) else fn(raw)


def augment(modality: str, **settings):
    return augment_configs({modality: {**OFF[modality], **settings}}, "augment")[modality]


@pytest.mark.parametrize("modality,key,value", ON, ids=[f"{m}-{k}" for m, k, _ in ON])
def test_each_augmentation_keeps_shape_and_dtype_is_seeded_and_changes_the_sample(tiny_config, modality, key, value):
    off = transform(tiny_config, modality, True, augment(modality))
    on = transform(tiny_config, modality, True, augment(modality, **{key: value}))
    changed = 0
    for seed in range(8):
        with seeded(seed):
            reference = off()
        with seeded(seed):
            first = on()
        with seeded(seed):
            again = on()
        assert first.dtype == reference.dtype == torch.float32
        if (modality, key) == ("audio", "speed"):  # a faster or slower clip has fewer or more frames (unpadded)
            assert first.shape[1:] == reference.shape[1:]
        else:
            assert first.shape == reference.shape
        assert torch.equal(first, again)  # the same seed, the same augmentation
        changed += not torch.equal(first, reference)
    assert changed >= 4  # (RandAugment may pick identity-like ops, a mask may be zero wide)


@pytest.mark.parametrize("modality", ["image", "audio", "video", "point_cloud", "text"])
def test_evaluation_ignores_augmentation(tiny_config, modality):
    anchors = augment_configs({modality: {}}, "augment")  # every default on
    if modality == "text":
        assert not anchors["text"].__dataclass_fields__  # text: no augmentation to switch on
        return
    with seeded(0):
        plain = transform(tiny_config, modality, False)()
    with seeded(1):
        given = transform(tiny_config, modality, False, anchors[modality])()
    assert torch.equal(plain, given)
    model_transforms = omnivec.OmniVecModel(tiny_config).transforms(train=False, augment=anchors)
    assert type(model_transforms[modality]) is type(
        MODALITIES.get(modality).build_transform(tiny_config.modalities[modality])
    )


def test_anchor_defaults_change_every_modality_and_pretraining_has_none(tiny_config):
    for modality in OFF:
        anchors = augment_configs({modality: {}}, "augment")[modality]
        with seeded(3):
            plain = transform(tiny_config, modality, True)()
        with seeded(3):
            augmented = transform(tiny_config, modality, True, anchors)()
        assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    from omnivec.pretraining import PretrainConfig

    assert from_dict(PretrainConfig, {"data": {"image": ["x"]}}, "").augment == {}
    with pytest.raises(omnivec.ConfigError, match=r"augment.image: expected no label mixing"):
        from_dict(PretrainConfig, {"data": {"image": ["x"]}, "augment": {"image": {}}}, "")
    cfg = from_dict(PretrainConfig, {"data": {"image": ["x"]}, "augment": {"image": {"mixup": 0, "cutmix": 0}}}, "")
    assert cfg.augment["image"].rand_augment == "rand-m9-mstd0.5-inc1"


def test_image_rand_augment_at_full_magnitude_posterizes_to_black_instead_of_failing(tiny_config):
    """MAE's rand-m9-mstd0.5-inc1 reaches magnitude 10 now and then: posterize to 0 bits, which
    Pillow 13 refuses; every op at magnitude 10 must run (posterize giving black, as before)."""
    from PIL import Image

    from omnivec.modalities.image import ImageAugment, ImageTransform

    cfg = tiny_config.modalities["image"]
    transform = ImageTransform(
        cfg,
        train=True,
        augment=ImageAugment(rand_augment="rand-m10-n1-mstd0-inc1", crop_scale=(1, 1), hflip=0, random_erasing=0),
    )
    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (8, 8, 3), dtype=np.uint8))
    ops = [o for t in transform.pipeline.transforms if hasattr(t, "ops") for o in t.ops]
    assert "PosterizeIncreasing" in [o.name for o in ops]
    for op in ops:
        op.prob = 1.0
        assert op(image).size == (8, 8), op.name
    posterize = next(o for o in ops if o.name == "PosterizeIncreasing")
    assert np.asarray(posterize(image)).max() == 0


def test_seeded_restores_the_global_generators():
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    with seeded(123):
        random.random(), np.random.rand(), torch.rand(())
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_bad_augment_settings_name_their_key():
    with pytest.raises(omnivec.ConfigError, match=r"augment.smell: unknown modality"):
        augment_configs({"smell": {}}, "augment")  # (tests/test_extension.py registers a depth modality)
    with pytest.raises(
        omnivec.ConfigError, match=r"augment.image.rand_augmnt: unknown key \(did you mean 'rand_augment'"
    ):
        augment_configs({"image": {"rand_augmnt": "rand-m9"}}, "augment")
    with pytest.raises(omnivec.ConfigError, match=r"augment.image.rand_augment: expected a timm RandAugment policy"):
        augment_configs({"image": {"rand_augment": "rand-x9"}}, "augment")
    with pytest.raises(omnivec.ConfigError, match=r"augment.audio.noise_snr_db"):
        augment_configs({"audio": {"noise_snr_db": [40, 10]}}, "augment")
    with pytest.raises(omnivec.ConfigError, match=r"augment.text.mixup: unknown key"):
        augment_configs({"text": {"mixup": 0.8}}, "augment")
    assert list(augment_configs({"image": None, "audio": {}}, "augment")) == ["audio"]  # none: switched off


def test_an_aligned_task_cannot_be_mixed(tmp_path):
    from helpers import SAMPLE

    from omnivec.tasks import load_task_data

    cfg = finetune_config(
        tasks={"digits": {"data": [str(SAMPLE / "digits")]}, "shapes": {"data": [str(SAMPLE / "shapes")]}},
        stages=[{"tasks": ["digits", "shapes"], "align": ["digits", "shapes"]}],
        augment={"image": {}},
    )
    with pytest.raises(omnivec.ConfigError, match=r"stages\.0\.align: task 'digits' would be mixed"):
        load_task_data(cfg)


def finetune_config(**kw) -> FinetuneConfig:
    data = {
        "tasks": {"digits": {"data": ["unused"]}, "tags": {"head": "multi_label", "data": ["unused"]}},
        "stages": [{"tasks": ["digits", "tags"]}],
        **kw,
    }
    return from_dict(FinetuneConfig, data, "")


def test_mixup_targets_sum_to_one_and_the_loss_is_the_soft_target_cross_entropy(tiny_model):
    from omnivec.heads.multi_label import MultiLabelHeadConfig

    tiny_model.add_head("tags", MultiLabelHeadConfig(modality="image", num_classes=4))
    cfg = finetune_config(augment={"image": {}})
    mix = mixers(cfg, tiny_model, ["digits", "tags"])
    assert list(mix) == ["digits"]  # multi-label targets are not mixed
    module = FinetuneModule(tiny_model, mixers=mix)
    x = omnivec.example_inputs(tiny_model.config, 5)["image"]
    original = x.clone()  # (timm mixes in place)
    np.random.seed(0)
    mixed, target = module.mix("digits", x, torch.tensor([0, 1, 2, 3, 4]))
    assert mixed.shape == (4, *x.shape[1:]) and target.shape == (4, 10)  # an odd batch's last sample left out
    assert torch.allclose(target.sum(1), torch.ones(4)) and not torch.equal(mixed, original[:4])
    assert (target > 0).sum(1).min() >= 2  # each row mixes two labels
    head = tiny_model.heads["digits"]
    hidden, mask = tiny_model.forward_features("image", mixed)
    assert head.loss(hidden, mask, target).item() == pytest.approx(
        SoftTargetCrossEntropy()(head(hidden, mask).float(), target).item(), rel=1e-6
    )


def test_label_smoothing_reaches_single_label_heads_unless_their_head_args_say():
    from omnivec.finetune_config import TaskSpec
    from omnivec.tasks import head_config

    class Data:
        modality, classes = "image", ["a", "b", "c"]

    model_config = omnivec.model_config("omnivec_tiny")
    spec = from_dict(TaskSpec, {"data": ["x"]}, "")
    assert head_config("t", spec, [Data], model_config, 0.1).label_smoothing == 0.1
    own = from_dict(TaskSpec, {"data": ["x"], "head_args": {"label_smoothing": 0.0}}, "")
    assert head_config("t", own, [Data], model_config, 0.1).label_smoothing == 0.0
    summaries = from_dict(TaskSpec, {"head": "summarization", "data": ["x"]}, "")
    assert not hasattr(head_config("t", summaries, [Data], model_config, 0.1), "label_smoothing")
    with pytest.raises(omnivec.ConfigError, match="label_smoothing"):
        finetune_config(label_smoothing=1.0)


def test_ema_weights_move_slower_than_the_raw_weights(tiny_model):
    module = FinetuneModule(tiny_model.train(), ema_decay=0.9)
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    assert all(not p.requires_grad for p in module.ema.parameters())  # never in the optimizer
    x = omnivec.example_inputs(tiny_model.config, 4)["image"]
    for step in range(1, 6):
        module({"digits": {"input": x, "target": torch.tensor([0, 1, 2, 3])}})["digits"].backward()
        optimizer.step()
        optimizer.zero_grad()
        module.after_step(step)
    name = "heads.digits.fc.weight"
    raw, ema = tiny_model.state_dict()[name], module.ema.module.state_dict()[name]
    assert not torch.equal(ema, raw) and not torch.equal(ema, start[name])
    assert (ema - start[name]).norm() < (raw - start[name]).norm()


def test_drop_path_is_set_on_the_vit_backbone_blocks():
    from timm.layers import DropPath

    from omnivec.backbone import set_drop_path

    model = omnivec.build_model("omnivec_tiny", **{"backbone.depth": 3})
    set_drop_path(model.backbone.blocks, 0.2)
    rates = [b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in model.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    set_drop_path(model.backbone.blocks, 0.0)
    assert all(isinstance(b.drop_path2, torch.nn.Identity) for b in model.backbone.blocks)
    with pytest.raises(omnivec.ConfigError, match="drop_path"):
        finetune_config(drop_path=1.5)


def test_tensorboard_asked_for_but_not_installed_is_a_config_error(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(omnivec.ConfigError, match="log_with: tensorboard is not installed: pip install tensorboard"):
        finetune_config(log_with="tensorboard")
    with pytest.raises(omnivec.ConfigError, match="log_with: expected none or tensorboard"):
        finetune_config(log_with="wandb")


@pytest.mark.integration
def test_finetune_with_the_regularisers_logs_to_tensorboard_and_evaluates_the_ema(tmp_path):
    import json

    from helpers import SAMPLE, SMALL_MODEL_OVERRIDES

    from omnivec.finetuning import finetune

    pytest.importorskip("tensorboard")
    cfg = from_dict(
        FinetuneConfig,
        {
            "model": "omnivec_tiny",
            "model_overrides": SMALL_MODEL_OVERRIDES,
            "tasks": {"digits": {"data": [str(SAMPLE / "digits")]}, "shapes": {"data": [str(SAMPLE / "shapes")]}},
            "stages": [{"tasks": ["digits", "shapes"], "steps": 3}],
            "batch_size": 8,
            "num_workers": 0,
            "warmup_steps": 1,
            "log_every": 1,
            "save_every": 0,
            "eval_max_batches": 1,
            "output_dir": str(tmp_path / "run"),
            "device": "cpu",
            "augment": {"image": {"hflip": 0}, "point_cloud": {}},
            "drop_path": 0.1,
            "label_smoothing": 0.1,
            "ema_decay": 0.99,
            "log_with": "tensorboard",
        },
        "",
    )
    report = finetune(cfg)
    for task in ("digits", "shapes"):
        assert {"top1", "ema:top1", "ema:top5"} <= set(report["final"][task])
    stage = tmp_path / "run" / "stages" / "1_digits+shapes"
    assert list((stage / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stage / "tensorboard"))
    events.Reload()
    assert {"loss/digits", "loss/shapes", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/digits")] == [1, 2, 3]
    saved = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model")
    ema = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model_ema")
    assert saved.config.backbone.drop_path == 0.1 and saved.config.heads["digits"].label_smoothing == 0.1
    assert not torch.equal(saved.heads["digits"].fc.weight, ema.heads["digits"].fc.weight)
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["config"]["augment"]["image"]["hflip"] == 0


def test_video_augmentation_treats_every_frame_of_a_clip_alike(tiny_config):
    frame = (torch.rand(1, 20, 20, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    fn = MODALITIES.get("video").build_transform(
        tiny_config.modalities["video"], True, augment("video", rand_augment_ops=4, rand_augment_magnitude=9)
    )
    plain = MODALITIES.get("video").build_transform(tiny_config.modalities["video"], False)
    for seed in range(4):
        with seeded(seed):
            clip = fn(frame.expand(6, -1, -1, -1))  # [T, C, S, S], T frames of one image
        assert all(torch.equal(clip[0], f) for f in clip) and not torch.equal(clip, plain(frame.expand(6, -1, -1, -1)))


def test_point_cloud_augmentation_keeps_normals_normal_to_the_surface(tiny_config):
    """With `normals`, columns 3:6 rotate with xyz and follow a per-axis scale by its inverse, so a
    plane's points and its normals stay perpendicular; colours after them are left alone."""
    from omnivec.modalities.point_cloud import PointCloudAugment

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 2 - 1
    plane = torch.cat([xy, (0.5 * xy[:, :1] - 0.3 * xy[:, 1:])], dim=1)  # z = 0.5 x - 0.3 y
    normal = torch.nn.functional.normalize(torch.tensor([-0.5, 0.3, 1.0]), dim=0).expand(200, 3)
    colours = torch.rand(200, 3, generator=g)
    points = torch.cat([plane, normal, colours], dim=1)  # [200, 9]
    augment = PointCloudAugment(
        rotation=180.0, scale=(0.5, 2.0), anisotropic=True, translate=0.2, jitter=0.0, point_dropout=0.0
    )
    with seeded(0):
        out = augment(points.clone(), normals=True)
    xyz, n = out[:, :3], out[:, 3:6]
    assert torch.allclose(n.norm(dim=1), torch.ones(200), atol=1e-5)
    assert ((xyz - xyz[:1]) @ n[0]).abs().max() < 1e-4  # every point still on the plane normal to n
    assert not torch.allclose(n, normal, atol=1e-2) and torch.equal(out[:, 6:], colours)
    with seeded(0):
        plain = augment(points.clone())  # without normals, only xyz moves
    assert torch.allclose(plain[:, :3], xyz) and torch.equal(plain[:, 3:], points[:, 3:])
    cfg = tiny_config.modalities["point_cloud"]
    with pytest.raises(omnivec.ConfigError, match="in_chans: expected at least 6 with normals=true"):
        type(cfg)(normals=True, in_chans=3).validate("modalities.point_cloud")
    from dataclasses import replace

    from omnivec.modalities.point_cloud import PointCloudTransform

    with seeded(0):
        sampled = PointCloudTransform(replace(cfg, in_chans=6, normals=True), train=True, augment=augment)(points)
    assert sampled.shape == (cfg.num_points, 6) and torch.allclose(
        sampled[:, 3:].norm(dim=1), torch.ones(cfg.num_points)
    )
    assert ((sampled[:, :3] - sampled[:1, :3]) @ sampled[0, 3:]).abs().max() < 1e-4  # the transform passed `normals`


def test_seeded_draws_as_after_manual_seed_and_restores_every_generator():
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    outside = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with seeded(7):  # only the CPU generator is seeded, and it draws what torch.manual_seed(7) would
        drawn = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(drawn[0], expected[0]) and drawn[1:] == expected[1:]
    assert torch.equal(torch.get_rng_state(), outside[0]) and random.getstate() == outside[1]
    assert np.array_equal(np.random.get_state()[1], outside[2])
