"""Encoders initialised from timm and transformers checkpoints: conformance with the library's own
output (fp32, atol 1e-5), load reports, position-embedding resizing, errors, masking and reloading."""

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import omnivec
from omnivec import ConfigError, OmniVecConfig, OmniVecModel
from omnivec.modalities.audio import time_major
from omnivec.modalities.text import train_tokenizer

ATOL = 1e-5


def omnivec_model(modality: str, width: int, **modality_cfg) -> OmniVecModel:
    """A one-modality omnivec model whose backbone width equals the library's (no projection)."""
    cfg = OmniVecConfig.from_dict(
        {"backbone": {"dim": width, "depth": 1, "num_heads": 2}, "modalities": {modality: modality_cfg}}
    )
    torch.manual_seed(0)
    return OmniVecModel(cfg).eval()


def encoder_tokens(model: OmniVecModel, modality: str, x) -> torch.Tensor:
    with torch.no_grad():
        return model.encoders[modality](x).tokens


def save_timm(tmp_path, name: str, **kwargs) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(1)
    lib = timm.create_model(name, num_classes=10, **kwargs).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file(lib.state_dict(), path)
    return lib, str(path)


VIT_ARCH = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def test_timm_vit_conformance_and_report(tmp_path):
    lib, path = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=64, **VIT_ARCH)
    model = omnivec_model(
        "image", 64, image_size=64, pretrained="timm:vit_tiny_patch16_224", checkpoint=path, library_config=VIT_ARCH
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = lib.forward_features(x)[:, lib.num_prefix_tokens :]  # patch tokens, CLS dropped
    torch.testing.assert_close(encoder_tokens(model, "image", x), expected, atol=ATOL, rtol=0)
    report = model.load_reports["image"]
    assert "pos_embed" in report.loaded and "blocks.1.mlp.fc2.weight" in report.loaded
    assert report.unused == ["head.bias", "head.weight"] and not report.resized
    assert "timm:vit_tiny_patch16_224" in report.summary()


def test_timm_vit_position_embeddings_resized(tmp_path):
    lib, path = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=64, **VIT_ARCH)
    model = omnivec_model(
        "image", 64, image_size=32, pretrained="timm:vit_tiny_patch16_224", checkpoint=path, library_config=VIT_ARCH
    )
    report = model.load_reports["image"]
    assert report.resized == ["pos_embed [1, 17, 64] -> [1, 5, 64]"]  # CLS + 4x4 patches -> CLS + 2x2
    cls_pos = model.encoders["image"].library.pos_embed[0, 0]
    torch.testing.assert_close(cls_pos, lib.pos_embed[0, 0])  # the prefix slot is kept as is
    assert encoder_tokens(model, "image", torch.randn(1, 3, 32, 32)).shape == (1, 4, 64)


def test_timm_shape_mismatch_names_the_tensor(tmp_path):
    _, path = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=64, **VIT_ARCH)
    with pytest.raises(
        ConfigError, match=r"tensor .cls_token. has shape \[1, 1, 64\] in the checkpoint.*expects \[1, 1, 128\]"
    ):
        omnivec_model(
            "image",
            128,
            image_size=64,
            pretrained="timm:vit_tiny_patch16_224",
            checkpoint=path,
            library_config={**VIT_ARCH, "embed_dim": 128},
        )


@pytest.mark.parametrize(
    "name, width, classifier",
    [
        ("efficientnet_b0", 1280, "classifier"),
        pytest.param("cspdarknet53", 1024, "head.fc", marks=pytest.mark.integration),  # ~12 s on 2 cores
    ],
)
def test_timm_convnet_conformance(tmp_path, name, width, classifier):
    lib, path = save_timm(tmp_path, name)
    model = omnivec_model("image", width, image_size=64, pretrained=f"timm:{name}", checkpoint=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = lib.forward_features(x).flatten(2).transpose(1, 2)  # last feature map 2x2 -> 4 tokens
    tokens = encoder_tokens(model, "image", x)
    assert tokens.shape == (2, 4, width)
    torch.testing.assert_close(tokens, expected, atol=ATOL, rtol=0)
    report = model.load_reports["image"]
    assert report.unused == [f"{classifier}.bias", f"{classifier}.weight"]
    assert "pos_embed" in report.new  # omnivec's positions for the feature map
    with pytest.raises(omnivec.InputError, match="convolutional"):
        model.encoders["image"].sample_mask(x)


def test_timm_unknown_name_fails_at_build():
    with pytest.raises(ConfigError, match="not a timm model"):
        omnivec_model("image", 64, pretrained="timm:no_such_net")


def hf_save(model, tmp_path, name: str) -> str:
    directory = tmp_path / name
    model.save_pretrained(directory)
    return str(directory)


def test_transformers_vit_conformance(tmp_path):
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    torch.manual_seed(1)
    src = hf_save(transformers.ViTForImageClassification(config), tmp_path, "vit")
    lib = transformers.ViTModel.from_pretrained(src, add_pooling_layer=False).eval()
    model = omnivec_model("image", 32, image_size=32, patch_size=8, pretrained=f"hf:{src}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = lib(pixel_values=x).last_hidden_state[:, 1:]
    torch.testing.assert_close(encoder_tokens(model, "image", x), expected, atol=ATOL, rtol=0)
    report = model.load_reports["image"]
    assert report.new == [] and report.unused == ["classifier.bias", "classifier.weight"]
    assert "layers.1.attention.q_proj.weight" in report.loaded
    resized = omnivec_model("image", 32, image_size=48, patch_size=8, pretrained=f"hf:{src}")
    assert resized.load_reports["image"].resized == ["embeddings.position_embeddings [1, 17, 32] -> [1, 37, 32]"]


def test_transformers_ast_conformance(tmp_path):
    config = transformers.ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=32,
        max_length=64,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
    )
    torch.manual_seed(1)
    src = hf_save(transformers.ASTForAudioClassification(config), tmp_path, "ast")
    lib = transformers.ASTModel.from_pretrained(src).eval()
    model = omnivec_model(
        "audio", 32, num_mel_bins=32, target_frames=64, patch_size=16, patch_stride=10, pretrained=f"hf:{src}"
    )
    x = torch.randn(2, 64, 32)  # [B, frames, mel], AST's input_values
    with torch.no_grad():
        expected = lib(input_values=x).last_hidden_state[:, 2:]  # CLS and distillation tokens dropped
    expected = time_major(expected, 2)  # AST's (2 freq x 5 time) patches in omnivec's time-major order
    torch.testing.assert_close(encoder_tokens(model, "audio", x), expected, atol=ATOL, rtol=0)
    # A short clip needs no padding to AST's length: its own patches, AST's first time positions,
    # and in a padded batch the padded patches are out of AST's attention.
    short = encoder_tokens(model, "audio", x[:1, :30])  # 30 frames: 3 time patches (stride 10, the last completed)
    assert short.shape == (1, 3 * 2, 32)
    padded = model.encoders["audio"].collate([x[0, :30], x[1]])
    out = model.encoders["audio"](padded)
    assert out.padding_mask.tolist() == [[True] * 6 + [False] * 4, [True] * 10]
    torch.testing.assert_close(out.tokens[:1, :6], short, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.tokens[1:], expected[1:], atol=ATOL, rtol=0)
    longer = omnivec_model(
        "audio", 32, num_mel_bins=32, target_frames=104, patch_size=16, patch_stride=10, pretrained=f"hf:{src}"
    )
    assert longer.load_reports["audio"].resized == ["embeddings.position_embeddings [1, 12, 32] -> [1, 20, 32]"]
    with pytest.raises(ConfigError, match=r"modalities\.audio\.patch_stride: expected 10"):
        omnivec_model(
            "audio", 32, num_mel_bins=32, target_frames=64, patch_size=16, patch_stride=16, pretrained=f"hf:{src}"
        )
    with pytest.raises(ConfigError, match=r"modalities\.audio\.frame_patches: AST's patches are square"):
        omnivec_model(
            "audio",
            32,
            num_mel_bins=32,
            target_frames=64,
            patch_size=16,
            patch_stride=10,
            frame_patches=True,
            pretrained=f"hf:{src}",
        )


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_transformers_text_conformance(tmp_path, kind):
    src = tmp_path / kind
    tokenizer = train_tokenizer(["a small corpus of words", "the encoder reads these words"] * 4, 120, str(src))
    config_class, model_class = {
        "bert": (transformers.BertConfig, transformers.BertForMaskedLM),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM),
    }[kind]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    model_class(config).save_pretrained(src)
    lib = transformers.AutoModel.from_pretrained(src, add_pooling_layer=False).eval()
    model = omnivec_model("text", 32, max_length=32, pretrained=f"hf:{src}")
    assert model.config.modalities["text"].tokenizer == str(src)  # the checkpoint's tokenizer by default
    batch = tokenizer(["the encoder reads", "a small corpus of words the encoder"], padding=True, return_tensors="pt")
    x = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = lib(**x).last_hidden_state
    real = x["attention_mask"].bool()
    torch.testing.assert_close(encoder_tokens(model, "text", x)[real], expected[real], atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match=r"modalities\.text\.max_length: expected at most 64"):
        omnivec_model("text", 32, max_length=65, pretrained=f"hf:{src}")


def test_transformers_videomae_conformance(tmp_path):
    config = transformers.VideoMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
    )
    torch.manual_seed(1)
    src = hf_save(transformers.VideoMAEModel(config), tmp_path, "videomae")
    lib = transformers.VideoMAEModel.from_pretrained(src).eval()
    model = omnivec_model("video", 32, num_frames=4, image_size=32, patch_size=16, pretrained=f"hf:{src}")
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        expected = lib(pixel_values=x).last_hidden_state
    torch.testing.assert_close(encoder_tokens(model, "video", x), expected, atol=ATOL, rtol=0)
    # VideoMAE takes num_frames: a 2-frame clip is padded with its last frame, the same alone or in a
    # padded batch; VideoMAE attends to that still, the padding mask drops its tubelets after VideoMAE.
    still = torch.cat([x[:1, :2], x[:1, 1:2].expand(-1, 2, -1, -1, -1)], dim=1)  # frames 0, 1, 1, 1
    with torch.no_grad():
        expected_short = lib(pixel_values=still).last_hidden_state
    short = model.encoders["video"](x[:1, :2])
    padded = model.encoders["video"](model.encoders["video"].collate([x[0, :2], x[1]]))
    assert short.padding_mask.tolist() == [[True] * 4 + [False] * 4]
    assert padded.padding_mask.tolist() == [[True] * 4 + [False] * 4, [True] * 8]
    torch.testing.assert_close(short.tokens, expected_short, atol=ATOL, rtol=0)
    torch.testing.assert_close(padded.tokens, torch.cat([expected_short, expected[1:]]), atol=ATOL, rtol=0)


def test_library_encoders_pretrain_with_masking(tmp_path):
    """Hidden patches are dropped after the library's patch embedding; the MAE loss trains."""
    from omnivec.mae import DecoderConfig, MaskedPretrainer

    _, path = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=32, **VIT_ARCH)
    model = omnivec_model(
        "image", 64, image_size=32, pretrained="timm:vit_tiny_patch16_224", checkpoint=path, library_config=VIT_ARCH
    ).train()
    pretrainer = MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2))
    x = torch.randn(2, 3, 32, 32)
    out = pretrainer.reconstruct("image", x, torch.Generator().manual_seed(0))
    assert out["mask"].sum(1).tolist() == [3, 3]  # 3 of 4 patches hidden at mask 0.75
    loss = out["loss"]
    loss.backward()
    grad = model.encoders["image"].library.blocks[0].attn.qkv.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad.abs().sum() > 0  # the library's blocks train


def test_saved_model_reloads_offline_without_the_source(tmp_path):
    """The library architecture travels in config.json (library_config): deleting the checkpoint
    the encoder came from does not stop `from_pretrained`."""
    import shutil

    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    torch.manual_seed(1)
    src = hf_save(transformers.ViTModel(config), tmp_path, "vit")
    model = omnivec_model("image", 32, image_size=32, patch_size=8, pretrained=f"hf:{src}")
    model.save_pretrained(tmp_path / "omnivec")
    shutil.rmtree(src)
    again = OmniVecModel.from_pretrained(tmp_path / "omnivec").eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(encoder_tokens(again, "image", x), encoder_tokens(model, "image", x))
    assert again.load_reports == {}


def test_unsupported_family_fails_at_config_time():
    with pytest.raises(ConfigError, match=r"modalities\.point_cloud\.pretrained"):
        OmniVecConfig.from_dict({"modalities": {"point_cloud": {"pretrained": "timm:vit_tiny_patch16_224"}}})
    with pytest.raises(ConfigError, match=r"modalities\.image\.pretrained: expected '' or FAMILY:SOURCE"):
        OmniVecConfig.from_dict({"modalities": {"image": {"pretrained": "vit_tiny_patch16_224"}}})


def test_pretraining_a_convolutional_encoder_fails_before_training(tmp_path):
    from helpers import SAMPLE

    from omnivec.parsing import from_dict
    from omnivec.pretraining import PretrainConfig, pretrain

    _, path = save_timm(tmp_path, "efficientnet_b0")
    cfg = from_dict(
        PretrainConfig,
        {
            "model_overrides": {
                "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
                "modalities": {
                    "video": None,
                    "audio": None,
                    "text": None,
                    "point_cloud": None,
                    "image": {"pretrained": "timm:efficientnet_b0", "checkpoint": path},
                },
            },
            "data": {"image": [str(SAMPLE / "digits")]},
            "output_dir": str(tmp_path / "run"),
            "device": "cpu",
        },
        "",
    )
    with pytest.raises(
        ConfigError, match=r"data\.image: the image encoder \(timm:efficientnet_b0\) cannot hide tokens"
    ):
        pretrain(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
