"""Red-team faults of models, checkpoints and training (issue #27): each gives one clear error (or
does the right thing) instead of a traceback, an exploding run or a silently incomplete model."""

import json
import subprocess

import pytest
import timm
import torch
from helpers import ENV, omnivec_cli, pretrain_yaml
from safetensors.torch import load_file, save_file

import omnivec
from omnivec import ConfigError, ModelError
from omnivec.finetune_config import FinetuneConfig
from omnivec.parsing import from_dict
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.recipe_config import load_recipe_config

SIZE, PATCH = 32, 8
TIMM_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": SIZE, "patch_size": PATCH}
HF_VIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE, patch_size=PATCH
)
IMAGE_ONLY = {"video": None, "audio": None, "point_cloud": None, "text": None}


def backbone_model(pretrained: str, **backbone) -> omnivec.OmniVecModel:
    """omnivec_base_vit with its backbone from `pretrained` and only an image modality."""
    image = {"image_size": SIZE, "patch_size": PATCH}
    return omnivec.build_model(
        "omnivec_base_vit", backbone={"pretrained": pretrained, **backbone}, modalities={**IMAGE_ONLY, "image": image}
    )


def image_model(pretrained: str, **image) -> omnivec.OmniVecModel:
    """A small model whose image encoder comes from `pretrained` (the checkpoint's width is 32)."""
    image = {"pretrained": pretrained, "image_size": SIZE, "patch_size": PATCH, **image}
    return omnivec.build_model(
        "omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2}, modalities={**IMAGE_ONLY, "image": image}
    )


def timm_vit_file(path, drop: str = "") -> str:
    """A small random timm ViT saved as safetensors, without the tensors whose names start with `drop`."""
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TIMM_VIT).state_dict()
    save_file({k: v for k, v in state.items() if not (drop and k.startswith(drop))}, str(path))
    return str(path)


def hf_vit_folder(folder, drop: str = "", **config):
    """A small random transformers ViT saved in `folder`, without the tensors whose names hold `drop`."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(**{**HF_VIT, **config}), add_pooling_layer=False).save_pretrained(folder)
    if drop:
        state = load_file(folder / "model.safetensors")
        save_file(
            {k: v for k, v in state.items() if drop not in k}, str(folder / "model.safetensors"), {"format": "pt"}
        )
    return folder


# --- item 7: min_lr above lr ---------------------------------------------------------------------------------


def test_min_lr_above_lr_is_refused_at_config_time(tmp_path):
    with pytest.raises(ConfigError, match=r"^min_lr: expected at most lr \(0\.0005\).*, got 1\.0$"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), ["lr=5e-4", "min_lr=1.0"])
    finetune = {
        "tasks": {"digits": {"data": ["data/sample/digits"]}},
        "stages": [{"tasks": ["digits"], "lr": 1e-6}],
        "min_lr": 1e-5,
    }
    with pytest.raises(ConfigError, match=r"^stages\.0\.lr: expected at least min_lr \(1e-05\).*, got 1e-06$"):
        from_dict(FinetuneConfig, finetune, "")


# --- item 9: a backbone checkpoint missing whole blocks ---------------------------------------------------


@pytest.mark.parametrize("library", ["timm", "hf"])
def test_a_backbone_checkpoint_missing_blocks_is_refused_unless_strict_false(tmp_path, library):
    if library == "timm":
        source = {"pretrained": "timm:vit_tiny_patch16_224", "library_config": TIMM_VIT}
        source["checkpoint"] = timm_vit_file(tmp_path / "vit.safetensors", drop="blocks.1.")
    else:
        source = {"pretrained": f"hf:{hf_vit_folder(tmp_path / 'hf', drop='.layer.1.')}"}
    with pytest.raises(ConfigError) as error:
        backbone_model(**source)
    message = str(error.value)
    assert message.startswith(f"backbone.pretrained: {source['pretrained']}: the checkpoint lacks 12 tensors")
    assert "blocks.1.attn.qkv.weight" in message and "backbone.strict: false" in message
    report = backbone_model(**source, strict=False).load_reports["backbone"]
    assert len(report.missing) == 12 and all(k.startswith("blocks.1.") for k in report.missing)
    assert "12 missing (blocks.1." in report.summary() and "0 mismatched" in report.summary()
    assert "blocks.0.attn.qkv.weight" not in report.missing and "backbone.blocks.0.attn.qkv.weight" in report.loaded


def test_an_image_encoder_checkpoint_missing_blocks_is_refused_unless_strict_false(tmp_path):
    path = timm_vit_file(tmp_path / "vit.safetensors", drop="blocks.1.")
    source = {"pretrained": "timm:vit_tiny_patch16_224", "checkpoint": path, "library_config": TIMM_VIT}
    with pytest.raises(ConfigError, match=r"^modalities\.image\.pretrained: .*lacks 12 tensors .*blocks\.1\.attn"):
        image_model(**source)
    report = image_model(**source, strict=False).load_reports["image"]
    assert len(report.missing) == 12 and "blocks.1.mlp.fc1.weight" in report.new


# --- item 15: a config.json declaring a huge model -------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [("backbone.depth", 100_000), ("backbone.dim", 1_000_000), ("modalities.image.depth", 100_000)],
)
def test_a_saved_config_declaring_a_huge_model_is_refused_before_building(
    tmp_path, tiny_model, monkeypatch, key, value
):
    tiny_model.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))

    def never(*args, **kwargs):
        raise AssertionError("the model was built before its weights were checked")

    monkeypatch.setattr("omnivec.model.SharedBackbone", never)
    with pytest.raises(ModelError, match=rf"config.json: {key} is {value}, but .*model.safetensors holds"):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    "key, value, tensor",
    [
        ("modalities.image.image_size", 40_000_000, "encoders.image.pos_embed"),  # 10^14 patches
        ("modalities.text.vocab_size", 10**15, "encoders.text.token_embed.weight"),
        ("modalities.text.max_length", 10**15, "encoders.text.pos_embed"),
    ],
)
def test_a_saved_config_declaring_huge_inputs_is_refused_before_allocating(tmp_path, tiny_model, key, value, tensor):
    """Only block counts and widths were checked: an image_size, vocab_size or max_length the weights
    do not hold was allocated (a RuntimeError traceback, or gigabytes for a smaller value)."""
    tiny_model.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=rf"model.safetensors does not match .*config.json: wrong shapes: {tensor} "):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "m")


# --- item 21: unreadable safetensors files, wider hf weights ---------------------------------------------


def bad_safetensors(path, kind: str) -> str:
    good = tmp = path.with_name("good.safetensors")
    timm_vit_file(tmp)
    path.write_bytes({"empty": b"", "garbage": b"not safetensors at all", "truncated": good.read_bytes()[:4000]}[kind])
    return str(path)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize("where", ["backbone", "image"])
def test_an_unreadable_timm_checkpoint_file_is_named(tmp_path, kind, where):
    path = bad_safetensors(tmp_path / "vit.safetensors", kind)
    source = {"pretrained": "timm:vit_tiny_patch16_224", "checkpoint": path, "library_config": TIMM_VIT}
    with pytest.raises(ConfigError, match=rf"^{path}: not a readable safetensors file \("):
        backbone_model(**source) if where == "backbone" else image_model(**source)


@pytest.mark.parametrize("where", ["backbone", "image"])
def test_an_unreadable_safetensors_file_in_an_hf_folder_is_named(tmp_path, where):
    folder = hf_vit_folder(tmp_path / "hf")
    bad_safetensors(folder / "model.safetensors", "truncated")
    key = "backbone" if where == "backbone" else "modalities.image"
    with pytest.raises(ConfigError, match=rf"^{key}\.pretrained: cannot load .*hf': its weights are not a readable"):
        backbone_model(f"hf:{folder}") if where == "backbone" else image_model(f"hf:{folder}")


@pytest.mark.parametrize("where", ["backbone", "image"])
def test_hf_weights_wider_than_their_config_name_the_tensor_and_both_shapes(tmp_path, where):
    folder = hf_vit_folder(tmp_path / "hf", intermediate_size=128)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    key = "backbone" if where == "backbone" else "modalities.image"
    with pytest.raises(
        ConfigError,
        match=rf"^{key}\.pretrained: hf:.*: tensor 'layers\.0\.mlp\.fc1\.(bias|weight)' has shape \[128(, 32)?\] in "
        r"the checkpoint, the configured model expects \[64(, 32)?\] \(5 more tensors do not fit either\)",
    ):
        backbone_model(f"hf:{folder}") if where == "backbone" else image_model(f"hf:{folder}")
    report = (
        backbone_model(f"hf:{folder}", strict=False)
        if where == "backbone"
        else image_model(f"hf:{folder}", strict=False)
    ).load_reports[where]
    assert len(report.mismatched) == 6 and "layers.0.mlp.fc1.weight [128, 32] -> [64, 32]" in report.mismatched


# --- items 24, 25, 26: resuming -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Auto", "/missing/path"])
def test_a_resume_that_is_neither_auto_nor_a_checkpoint_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match=rf"^resume: expected auto .* or a checkpoint folder .*, got '{value}'$"):
        load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), [f"resume={value}"])


@pytest.mark.integration
def test_the_cli_names_a_bad_resume_in_one_line(tmp_path):
    result = subprocess.run(
        omnivec_cli("pretrain", str(pretrain_yaml(tmp_path, "run")), "resume=/missing/path"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: resume: expected auto")


def val_steps(run) -> list[int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if any(k.startswith("val/") for k in r)]


def test_resuming_after_the_final_checkpoint_logs_the_last_evaluation_once(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=2, save_every=0)
    pretrain(load_recipe_config(PretrainConfig, config))
    assert val_steps(tmp_path / "run") == [0, 2]
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    assert val_steps(tmp_path / "run") == [0, 2]


def test_files_left_aside_by_a_killed_save_are_removed_by_the_next_run(tmp_path):
    config = pretrain_yaml(tmp_path, "run", max_steps=2, save_every=0)
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    left = [  # as a kill during the final save leaves them
        run / "checkpoints" / ".tmp-step_00000002" / "state" / "model.safetensors",
        run / "model" / ".tmp-k3x_9q2a" / "model.safetensors",
        run / ".tmp-metrics.jsonl",
        run / ".tmp-run_config.json",
    ]
    mine = [run / ".tmp-notes.txt", run / "model" / ".tmp-mine", run / "notes" / ".tmp-step_00000002"]
    for path in left + mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    assert not [p for p in left if p.exists()] and not (run / "checkpoints" / ".tmp-step_00000002").exists()
    assert not (run / "model" / ".tmp-k3x_9q2a").exists()
    assert all(p.read_text() == "x" for p in mine)  # not omnivec's: kept


# --- item 27: init: none ------------------------------------------------------------------------------------


def test_init_none_means_from_scratch_in_yaml_as_on_the_command_line(tmp_path):
    path = pretrain_yaml(tmp_path, "run")
    path.write_text(path.read_text() + "init: none\n")
    assert load_recipe_config(PretrainConfig, path).init is None
    assert load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "cli"), ["init=none"]).init is None
    finetune = {"tasks": {"d": {"data": ["x"]}}, "stages": [{"tasks": ["d"]}], "init": "None"}
    assert from_dict(FinetuneConfig, finetune, "").init is None
