"""Each speed path against the plain computation it replaces."""
import pytest
import torch
import torch.nn.functional as F

import omnivec
from omnivec.modalities.base import normalize_patches
from omnivec.modalities.image import patchify


def test_patch_projection_as_matmul_equals_the_strided_convolution(tiny_model, tiny_config):
    x = omnivec.example_inputs(tiny_config, 3)["image"]
    enc = tiny_model.encoders["image"]
    torch.testing.assert_close(enc.tokenize(x).tokens, enc.patch_embed(x) + enc.pos_embed)  # timm's conv path
    p = tiny_config.modalities["image"].patch_size
    assert torch.equal(patchify(x, p), F.unfold(x, p, stride=p).transpose(1, 2))


def test_tubelet_projection_as_matmul_equals_the_conv3d(tiny_model, tiny_config):
    x = omnivec.example_inputs(tiny_config, 2)["video"]
    enc = tiny_model.encoders["video"]
    conv = enc.patch_embed(x.transpose(1, 2)).flatten(2).transpose(1, 2)  # [B, L, width]
    torch.testing.assert_close(enc.tokenize(x).tokens, conv + enc.pos_embed)


@pytest.mark.parametrize("size", [16, 768, 1536])
def test_fused_patch_normalisation_is_maes(size):
    patches = torch.randn(2, 5, size) * 3 + 1
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)  # MAE: unbiased variance
    torch.testing.assert_close(normalize_patches(patches), (patches - mean) / (var + 1e-6) ** 0.5)


def test_finite_check_passes_large_finite_values(tiny_model, tiny_config):
    x = omnivec.example_inputs(tiny_config, 2)["image"]
    x[:, :, :4] = 3e38  # the sum overflows; no value is infinite
    tiny_model.embed({"image": x})


@pytest.mark.integration
def test_compiled_blocks_give_the_eager_loss_and_gradients():
    """TrainConfig.compile: regional torch.compile of every block, same loss and gradients."""
    import copy

    from omnivec.pretraining import DecoderConfig, MaskedPretrainer
    from omnivec.training import compile_blocks

    config = omnivec.model_config("omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2},
                                  modalities={"video": None, "text": None, "point_cloud": None, "audio": None})
    torch.manual_seed(0)
    eager = MaskedPretrainer(omnivec.OmniVecModel(config), DecoderConfig(dim=32, depth=1, num_heads=2))
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    batch = {"image": {"input": omnivec.example_inputs(config, 4)["image"]}}
    losses = []
    for module in (eager, compiled):
        loss = module(batch, step=3)["image"]
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-4)
    grad = [m.model.backbone.blocks[0].attn.qkv.weight.grad for m in (eager, compiled)]
    torch.testing.assert_close(grad[1], grad[0], atol=1e-5, rtol=1e-4)
