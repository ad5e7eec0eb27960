"""The shared backbone started from a pretrained ViT (timm, transformers ViT / ViTMAE / DINOv2): small
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
ONLY_IMAGE_AND_TEXT = {
    "modalities": {
        "video": None,
        "audio": None,
        "point_cloud": None,
        "image": {"image_size": SIZE, "patch_size": PATCH},
        "text": {"tokenizer": "bytes", "vocab_size": 261, "max_length": 16},
    }
}
HF_SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE, patch_size=PATCH
)


def vit_model(pretrained: str, image_size: int = SIZE, **backbone) -> omnivec.OmniVecModel:
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


def test_vit_backbone_from_timm_vit_gives_its_patch_tokens(timm_vit, tmp_path):
    vit, path = timm_vit
    model = vit_model("timm:vit_tiny_patch16_224", checkpoint=str(path), library_config=SMALL)
    assert (model.config.backbone.dim, model.config.backbone.depth, model.config.backbone.num_heads) == (32, 2, 2)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = vit.forward_features(x)[:, vit.num_prefix_tokens :]
    torch.testing.assert_close(image_tokens(model, x), expected, atol=1e-5, rtol=1e-5)
    report = model.load_reports["backbone"]
    assert "backbone.prefix" in report.loaded and "encoders.image.pos_embed" in report.loaded
    assert report.new == [f"backbone.modality_embed.{m}" for m in ("image", "text")]
    # the other modalities project into the backbone's width; the saved model reloads without the checkpoint
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


def test_vit_backbone_positions_are_interpolated_to_the_configured_size(timm_vit):
    vit, path = timm_vit
    model = vit_model("timm:vit_tiny_patch16_224", image_size=48, checkpoint=str(path), library_config=SMALL)
    assert model.load_reports["backbone"].resized == ["encoders.image.pos_embed [1, 17, 32] -> [1, 36, 32]"]
    assert image_tokens(model, torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)


def test_a_setting_that_contradicts_the_vit_backbone_names_both_values(timm_vit):
    _, path = timm_vit
    with pytest.raises(ConfigError, match=r"backbone.dim: expected 32 \(as in timm:vit_tiny_patch16_224\), got 64"):
        vit_model("timm:vit_tiny_patch16_224", checkpoint=str(path), library_config=SMALL, dim=64)
    with pytest.raises(ConfigError, match=r"modalities.image.patch_size: expected 8"):
        omnivec.build_model(
            "omnivec_base_vit",
            backbone={"pretrained": "timm:vit_tiny_patch16_224", "checkpoint": str(path), "library_config": SMALL},
            **{**ONLY_IMAGE_AND_TEXT, "modalities.image.patch_size": 4},
        )
    with pytest.raises(ConfigError, match=r"modalities.image.pretrained: expected '' with backbone.pretrained set"):
        omnivec.build_model(
            "omnivec_base_vit",
            backbone={"pretrained": "timm:vit_tiny_patch16_224", "checkpoint": str(path), "library_config": SMALL},
            **{**ONLY_IMAGE_AND_TEXT, "modalities.image.pretrained": "timm:vit_tiny_patch16_224"},
        )


def hf_checkpoint(kind: str, directory):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

    torch.manual_seed(0)
    model = {
        "vit": lambda: ViTModel(ViTConfig(**HF_SMALL), add_pooling_layer=False),
        "vit_mae": lambda: ViTMAEModel(ViTMAEConfig(**HF_SMALL, mask_ratio=0.0)),
        "dinov2": lambda: Dinov2Model(Dinov2Config(**HF_SMALL, layerscale_value=0.5)),
    }[kind]().eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("kind", ["vit", "vit_mae", "dinov2"])
def test_vit_backbone_from_transformers_gives_its_patch_tokens(kind, tmp_path):
    library = hf_checkpoint(kind, tmp_path / kind)
    model = vit_model(f"hf:{tmp_path / kind}")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        kwargs = {"noise": torch.arange(16.0).expand(2, 16)} if kind == "vit_mae" else {}  # keep the patch order
        expected = library(pixel_values=x, **kwargs).last_hidden_state[:, 1:]
    torch.testing.assert_close(image_tokens(model, x), expected, atol=1e-5, rtol=1e-5)
    assert model.config.backbone.library_config["model_type"] == kind  # reloads offline


MAE_SMALL = dict(
    HF_SMALL,
    layer_norm_eps=1e-6,
    mask_ratio=0.75,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=16,
    decoder_intermediate_size=128,
)  # MAE's 16 decoder heads and eps


@pytest.fixture(scope="module")
def vit_mae_for_pretraining(tmp_path_factory):
    """A small random ViTMAEForPreTraining saved as transformers does, and its tensors in the MAE
    repo's layout (`mae_pretrain_vit_base.pth`: {"model": {cls_token, blocks.0.attn.qkv.weight, ...,
    decoder_embed.weight, decoder_blocks.0..., decoder_pred.weight}})."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from omnivec.pretrained.vit_backbone import hf_to_timm

    torch.manual_seed(0)
    library = ViTMAEForPreTraining(ViTMAEConfig(**MAE_SMALL)).eval()
    directory = tmp_path_factory.mktemp("vit_mae")
    library.save_pretrained(directory / "hf")
    state = hf_to_timm(library.state_dict())
    assert {
        "decoder_blocks.0.attn.qkv.weight",
        "decoder_pred.weight",
        "decoder_pos_embed",
        "mask_token",
        "decoder_embed.weight",
        "decoder_norm.weight",
        "blocks.1.attn.qkv.weight",
        "cls_token",
    } <= set(state)
    torch.save({"model": state}, directory / "mae_pretrain.pth")
    return library, directory


@pytest.mark.parametrize("layout", ["transformers", "mae_repo"])
def test_mae_decoder_from_the_checkpoint_reproduces_its_reconstruction(vit_mae_for_pretraining, layout):
    """omnivec's image decoder started from an MAE checkpoint predicts what ViTMAEForPreTraining
    predicts for the same mask (`noise=`): the CLS output leads the decoder's input, as in MAE."""
    from omnivec.mae import DecoderConfig, MaskedPretrainer
    from omnivec.masking import random_masking

    library, directory = vit_mae_for_pretraining
    if layout == "transformers":
        model = vit_model(f"hf:{directory / 'hf'}")
    else:  # a timm ViT name for the architecture, the file for the weights
        model = vit_model(
            "timm:vit_tiny_patch16_224",
            checkpoint=str(directory / "mae_pretrain.pth"),
            library_config={**SMALL, "mlp_ratio": 2.0},
        )
    pretrainer = MaskedPretrainer(model, DecoderConfig(dim=32, depth=2, num_heads=2)).eval()
    image = pretrainer.decoders["image"]
    assert (len(image.blocks), image.blocks[0].attn.num_heads, image.norm.eps) == (1, 16, 1e-6)
    assert len(pretrainer.decoders["text"].blocks) == 2  # the other modalities keep the configured decoder
    x, noise = torch.randn(2, 3, SIZE, SIZE), torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = library(pixel_values=x, noise=noise)
        ours = pretrainer.reconstruct("image", x, masking=random_masking(2, 16, 0.75, noise=noise))
    assert torch.equal(ours["mask"], expected.mask.bool())
    logits = expected.logits.unflatten(-1, (PATCH, PATCH, 3)).movedim(-1, -3).flatten(-3)  # (p, p, C) -> (C, p, p)
    torch.testing.assert_close(ours["pred"], logits[expected.mask.bool()], atol=1e-5, rtol=1e-5)


def test_mae_decoder_positions_follow_the_configured_size_and_init_skips_it(vit_mae_for_pretraining, tmp_path):
    from omnivec.mae import DecoderConfig, MaskedPretrainer

    _, directory = vit_mae_for_pretraining
    model = vit_model(f"hf:{directory / 'hf'}", image_size=48)
    pretrainer = MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2))
    assert pretrainer.decoders["image"].pos_embed.shape == (1, 36, 32)
    x = torch.randn(2, 3, 48, 48)
    assert pretrainer.reconstruct("image", x, torch.Generator().manual_seed(0))["pred"].shape == (2 * 27, 192)
    # a saved model (`init:`) or `decoder.from_backbone: false` starts the configured decoder afresh
    assert (
        MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2, from_backbone=False))
        .decoders["image"]
        .blocks[0]
        .attn.num_heads
        == 2
    )
    model.save_pretrained(tmp_path / "m")
    again = MaskedPretrainer(
        omnivec.OmniVecModel.from_pretrained(tmp_path / "m"), DecoderConfig(dim=32, depth=1, num_heads=2)
    )
    assert again.decoders["image"].blocks[0].attn.num_heads == 2


def test_layer_decay_scales_follow_depth_across_encoder_and_vit_backbone_blocks():
    from omnivec.finetune_module import FinetuneModule
    from omnivec.optim import layer_decay_scales, param_groups

    model = omnivec.build_model(
        "omnivec_tiny", **{"backbone.depth": 2, "modalities.image.depth": 1, "modalities.video": None}
    )
    scales = layer_decay_scales(model, 0.5)  # top = 1 encoder block + 2 backbone blocks + 1 = 4
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
def test_continue_mae_base_config_runs_with_a_local_checkpoint(vit_mae_for_pretraining, tmp_path, caplog):
    """configs/pretrain/continue_mae_base.yaml with its header's CPU override (a small local
    ViTMAEForPreTraining: the image decoder starts from its decoder)."""
    from omnivec.cli import main

    _, directory = vit_mae_for_pretraining
    backbone = json.dumps({"pretrained": f"hf:{directory / 'hf'}"})
    modalities = json.dumps(
        {
            "image": {"image_size": SIZE, "patch_size": PATCH},
            "video": {"num_frames": 4, "image_size": 32, "patch_size": 8},
            "audio": {"num_mel_bins": 32, "target_frames": 48},
            "text": {"tokenizer": "data/sample/tokenizer", "vocab_size": 4000, "max_length": 32},
            "point_cloud": {"num_points": 128, "num_groups": 8, "group_size": 8, "pointnet_dims": [16, 32, 32]},
        }
    )
    args = [
        "pretrain",
        "configs/pretrain/continue_mae_base.yaml",
        f"output_dir={tmp_path / 'run'}",
        f"model_overrides.backbone={backbone}",
        f"model_overrides.modalities={modalities}",
        "decoder.dim=32",
        "decoder.depth=1",
        "decoder.num_heads=2",
        "precision=no",
        "batch_size=4",
        "num_workers=0",
        "max_steps=3",
        "warmup_steps=1",
        "eval_batches=1",
        "save_every=0",
        "log_every=1",
    ]
    with caplog.at_level("INFO", logger="omnivec"):
        assert main(args) == 0
    assert "MAE decoder ({'dim': 32, 'depth': 1, 'mlp_ratio': 4.0, 'num_heads': 16" in caplog.text
    model = omnivec.OmniVecModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.backbone.pretrained == f"hf:{directory / 'hf'}" and model.config.backbone.dim == 32
    assert f"started from `hf:{directory / 'hf'}`" in (tmp_path / "run" / "model" / "README.md").read_text()
