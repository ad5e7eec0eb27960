"""The shared trunk started from a pretrained ViT (timm, transformers ViT / ViTMAE / DINOv2): small
random checkpoints saved locally, then omnivec's image tokens must equal the library's own patch
tokens (fp32, atol 1e-5). The CLS token attends in every block and is dropped after the final norm,
so the comparison is with the library's output without its prefix tokens."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import omnivec
from omnivec import ConfigError

SIZE, PATCH = 32, 8
SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": SIZE, "patch_size": PATCH}
ONLY_IMAGE_AND_TEXT = {"modalities": {"video": None, "audio": None, "point_cloud": None,
                                      "image": {"image_size": SIZE, "patch_size": PATCH},
                                      "text": {"tokenizer": "bytes", "vocab_size": 261, "max_length": 16}}}
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
                patch_size=PATCH)


def trunk_model(pretrained: str, image_size: int = SIZE, **backbone) -> omnivec.OmniVecModel:
    overrides = json.loads(json.dumps(ONLY_IMAGE_AND_TEXT))
    overrides["modalities"]["image"]["image_size"] = image_size
    return omnivec.build_model("omnivec_base_vit", backbone={"pretrained": pretrained, **backbone}, **overrides).eval()


def image_tokens(model: omnivec.OmniVecModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features("image", x)[0]  # [B, L, D]


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **SMALL).eval()
    path = tmp_path_factory.mktemp("timm") / "vit.safetensors"
    save_file(vit.state_dict(), str(path))
    return vit, path


def test_trunk_from_timm_vit_gives_its_patch_tokens(timm_vit, tmp_path):
    vit, path = timm_vit
    model = trunk_model("timm:vit_tiny_patch16_224", checkpoint=str(path), library_config=SMALL)
    assert (model.config.backbone.dim, model.config.backbone.depth, model.config.backbone.num_heads) == (32, 2, 2)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = vit.forward_features(x)[:, vit.num_prefix_tokens:]
    torch.testing.assert_close(image_tokens(model, x), expected, atol=1e-5, rtol=1e-5)
    report = model.load_reports["backbone"]
    assert "backbone.prefix" in report.loaded and "encoders.image.pos_embed" in report.loaded
    assert report.new == [f"backbone.modality_embed.{m}" for m in ("image", "text")]
    # the other modalities project into the trunk's width; the saved model reloads without the checkpoint
    text = omnivec.example_inputs(model.config, 2)["text"]
    model.save_pretrained(tmp_path / "m")
    path.rename(path.with_suffix(".gone"))
    try:
        again = omnivec.OmniVecModel.from_pretrained(tmp_path / "m").eval()
    finally:
        path.with_suffix(".gone").rename(path)
    torch.testing.assert_close(image_tokens(again, x), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert again.embed({"text": text})["text"].shape == (2, 32)


def test_trunk_positions_are_interpolated_to_the_configured_size(timm_vit):
    vit, path = timm_vit
    model = trunk_model("timm:vit_tiny_patch16_224", image_size=48, checkpoint=str(path), library_config=SMALL)
    assert model.load_reports["backbone"].resized == ["encoders.image.pos_embed [1, 17, 32] -> [1, 36, 32]"]
    assert image_tokens(model, torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)


def test_a_setting_that_contradicts_the_trunk_names_both_values(timm_vit):
    _, path = timm_vit
    with pytest.raises(ConfigError, match=r"backbone.dim: expected 32 \(as in timm:vit_tiny_patch16_224\), got 64"):
        trunk_model("timm:vit_tiny_patch16_224", checkpoint=str(path), library_config=SMALL, dim=64)
    with pytest.raises(ConfigError, match=r"modalities.image.patch_size: expected 8"):
        omnivec.build_model("omnivec_base_vit", backbone={"pretrained": "timm:vit_tiny_patch16_224",
                                                          "checkpoint": str(path), "library_config": SMALL},
                            **{**ONLY_IMAGE_AND_TEXT, "modalities.image.patch_size": 4})
    with pytest.raises(ConfigError, match=r"modalities.image.pretrained: expected '' with backbone.pretrained set"):
        omnivec.build_model("omnivec_base_vit", backbone={"pretrained": "timm:vit_tiny_patch16_224",
                                                          "checkpoint": str(path), "library_config": SMALL},
                            **{**ONLY_IMAGE_AND_TEXT, "modalities.image.pretrained": "timm:vit_tiny_patch16_224"})


def hf_checkpoint(kind: str, directory):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

    torch.manual_seed(0)
    model = {"vit": lambda: ViTModel(ViTConfig(**HF_SMALL), add_pooling_layer=False),
             "vit_mae": lambda: ViTMAEModel(ViTMAEConfig(**HF_SMALL, mask_ratio=0.0)),
             "dinov2": lambda: Dinov2Model(Dinov2Config(**HF_SMALL, layerscale_value=0.5))}[kind]().eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("kind", ["vit", "vit_mae", "dinov2"])
def test_trunk_from_transformers_gives_its_patch_tokens(kind, tmp_path):
    library = hf_checkpoint(kind, tmp_path / kind)
    model = trunk_model(f"hf:{tmp_path / kind}")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        kwargs = {"noise": torch.arange(16.0).expand(2, 16)} if kind == "vit_mae" else {}  # keep the patch order
        expected = library(pixel_values=x, **kwargs).last_hidden_state[:, 1:]
    torch.testing.assert_close(image_tokens(model, x), expected, atol=1e-5, rtol=1e-5)
    assert model.config.backbone.library_config["model_type"] == kind  # reloads offline


def test_layer_decay_scales_follow_depth_across_encoder_and_trunk_blocks():
    from omnivec.finetuning import FinetuneModule, layer_decay_scales
    from omnivec.training import param_groups

    model = omnivec.build_model("omnivec_tiny", **{"backbone.depth": 2, "modalities.image.depth": 1,
                                                   "modalities.video": None})
    scales = layer_decay_scales(model, 0.5)  # top = 1 encoder block + 2 trunk blocks + 1 = 4
    assert scales["backbone.norm.weight"] == 1.0
    assert scales["backbone.blocks.1.attn.qkv.weight"] == 0.5
    assert scales["backbone.blocks.0.attn.qkv.weight"] == 0.25
    assert scales["encoders.image.norm.weight"] == scales["encoders.image.blocks.0.mlp.fc1.weight"] == 0.125
    assert scales["encoders.image.patch_embed.proj.weight"] == scales["backbone.modality_embed.text"] == 0.5**4
    module = FinetuneModule(model, backbone_lr_scale=0.1, layer_decay=0.5)
    groups = param_groups(module, 0.05, 1e-3, module.lr_scales())
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(model.backbone.blocks[0].attn.qkv.weight)] == pytest.approx(1e-3 * 0.1 * 0.25)
    assert lrs[id(model.backbone.norm.weight)] == pytest.approx(1e-3 * 0.1)


@pytest.mark.integration
def test_continue_mae_base_config_runs_with_a_local_checkpoint(timm_vit, tmp_path):
    """configs/pretrain/continue_mae_base.yaml with its header's CPU override (a small local ViT)."""
    from omnivec.cli import main

    _, path = timm_vit
    backbone = json.dumps({"pretrained": "timm:vit_tiny_patch16_224", "checkpoint": str(path), "library_config": SMALL})
    modalities = json.dumps({"image": {"image_size": SIZE, "patch_size": PATCH},
                             "video": {"num_frames": 4, "image_size": 32, "patch_size": 8},
                             "audio": {"num_mel_bins": 32, "target_frames": 48},
                             "text": {"tokenizer": "data/sample/tokenizer", "vocab_size": 4000, "max_length": 32},
                             "point_cloud": {"num_points": 128, "num_groups": 8, "group_size": 8,
                                             "pointnet_dims": [16, 32, 32]}})
    args = ["pretrain", "configs/pretrain/continue_mae_base.yaml", f"output_dir={tmp_path / 'run'}",
            f"model_overrides.backbone={backbone}", f"model_overrides.modalities={modalities}",
            "decoder.dim=32",
            "decoder.depth=1", "decoder.num_heads=2", "precision=no", "batch_size=4", "num_workers=0", "max_steps=3",
            "warmup_steps=1", "eval_batches=1", "save_every=0", "log_every=1"]
    assert main(args) == 0
    model = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.backbone.pretrained == "timm:vit_tiny_patch16_224" and model.config.backbone.dim == 32
    assert "started from `timm:vit_tiny_patch16_224`" in (tmp_path / "run" / "model" / "README.md").read_text()
