"""Activation checkpointing (`activation_checkpointing: true`, `model.set_grad_checkpointing()`): the
trunk's and the modality encoders' blocks recompute their activations in the backward pass, and
the losses and gradients are those of the plain run (fp32, 1e-6)."""

import pytest
import torch
from conftest import TINY

import omnivec
from omnivec.finetune_module import FinetuneModule
from omnivec.mae import DecoderConfig, MaskedPretrainer

# Two trunk blocks with stochastic depth and one image block: the recomputed forward must draw the same drops.
CONFIG = {**TINY, "backbone": {"dim": 32, "depth": 2, "num_heads": 2, "drop_path": 0.2}}


def counting_calls(modules: list[torch.nn.Module]) -> list[int]:
    """How often each module's forward starts (a pre-hook: a recomputation stops once it has what it needs)."""
    calls = [0] * len(modules)
    for i, m in enumerate(modules):
        m.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def losses_and_grads(module: torch.nn.Module, batch: dict, checkpointing: bool) -> tuple[dict, dict]:
    module.model.set_grad_checkpointing(checkpointing)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # stochastic depth draws
    losses = module(batch, step=0)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same(plain: tuple[dict, dict], checkpointed: tuple[dict, dict]) -> None:
    assert plain[0].keys() == checkpointed[0].keys() and plain[1].keys() == checkpointed[1].keys()
    for k in plain[0]:
        torch.testing.assert_close(checkpointed[0][k], plain[0][k], atol=1e-6, rtol=0, msg=k)
    for k in plain[1]:
        torch.testing.assert_close(checkpointed[1][k], plain[1][k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("pack", [False, True])
def test_pretraining_step_same_loss_and_gradients_and_blocks_recompute(pack):
    torch.manual_seed(0)
    overrides = {**CONFIG, "backbone": {**CONFIG["backbone"], "drop_path": 0.0}} if pack else CONFIG
    model = omnivec.build_model("omnivec_tiny", **overrides).train()
    module = MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2), pack=pack)
    batch = {m: {"input": x} for m, x in omnivec.example_inputs(model.config, 3).items()}
    plain = losses_and_grads(module, batch, checkpointing=False)
    calls = counting_calls(
        [model.backbone.blocks[0], model.encoders["image"].blocks[0], module.decoders["image"].blocks[0]]
    )
    checkpointed = losses_and_grads(module, batch, checkpointing=True)
    assert_same(plain, checkpointed)
    # trunk block: once per modality (or once, packed), again in the backward pass; the image block twice;
    # the decoder's blocks are not checkpointed
    assert calls == [2 * (1 if pack else len(batch)), 2, 1]


def test_finetuning_step_same_loss_and_gradients():
    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny", **CONFIG).train()
    module = FinetuneModule(model)
    batch = {
        "digits": {"input": omnivec.example_inputs(model.config, 4)["image"], "target": torch.tensor([1, 2, 3, 4])}
    }
    assert_same(losses_and_grads(module, batch, False), losses_and_grads(module, batch, True))


def test_library_encoders_recompute_their_blocks(tmp_path):
    import timm
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(1)
    lib = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=64, num_heads=2, num_classes=0)
    save_file(lib.state_dict(), tmp_path / "vit.safetensors")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    transformers.ViTModel(config).save_pretrained(tmp_path / "hf_vit")
    image = {
        "timm": {
            "image_size": 32,
            "pretrained": "timm:vit_tiny_patch16_224",
            "checkpoint": str(tmp_path / "vit.safetensors"),
            "library_config": {"depth": 1, "embed_dim": 64, "num_heads": 2},
        },
        "hf": {"image_size": 32, "patch_size": 8, "pretrained": f"hf:{tmp_path / 'hf_vit'}"},
    }
    for family, cfg in image.items():
        torch.manual_seed(0)
        model = omnivec.OmniVecModel(
            omnivec.OmniVecConfig.from_dict(
                {
                    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
                    "modalities": {"image": cfg},
                    "heads": {"digits": {"type": "classification", "modality": "image", "num_classes": 3}},
                }
            )
        ).train()
        module = FinetuneModule(model)
        batch = {"digits": {"input": torch.randn(2, 3, 32, 32), "target": torch.tensor([0, 2])}}
        plain = losses_and_grads(module, batch, False)
        library = model.encoders["image"].library
        # a module inside the block (transformers checkpoints `forward`, so the block's own hooks run once)
        inner = library.blocks[0].norm1 if family == "timm" else library.layers[0].layernorm_before
        calls = counting_calls([inner])
        assert_same(plain, losses_and_grads(module, batch, True))
        assert calls == [2], family


def test_training_config_key_reaches_the_model(tmp_path):
    from omnivec.recipe_config import load_recipe_config
    from omnivec.trainer import TrainConfig, Trainer

    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\ndevice: cpu\n")
    cfg = load_recipe_config(TrainConfig, path, ["activation_checkpointing=true"])
    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny", **CONFIG)
    Trainer(cfg, FinetuneModule(model))
    assert model.backbone.grad_checkpointing and all(e.grad_checkpointing for e in model.encoders.values())
