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
    from omnivec.model import check_finite

    x = omnivec.example_inputs(tiny_config, 2)["image"]
    x[:, :, :4] = 3e38  # the sum overflows; no value is infinite
    check_finite("image", x)  # the one-reduction check does not take the overflow for a NaN
    with pytest.raises(omnivec.InputError, match="image: expected model-ready values"):  # but the embedding overflows
        tiny_model.embed({"image": x})


@pytest.mark.integration
def test_compiled_blocks_give_the_eager_loss_and_gradients():
    """TrainConfig.compile: regional torch.compile of every block, same loss and gradients."""
    import copy

    from omnivec.backbone import compile_blocks
    from omnivec.mae import DecoderConfig, MaskedPretrainer

    config = omnivec.model_config(
        "omnivec_tiny",
        backbone={"dim": 32, "depth": 1, "num_heads": 2},
        modalities={"video": None, "text": None, "point_cloud": None, "audio": None},
    )
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


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_the_kv_cache_gives_the_tokens_of_recomputing_them(num_beams):
    from omnivec.heads.summarization import SummarizationHead, SummarizationHeadConfig

    torch.manual_seed(0)
    head = SummarizationHead(
        SummarizationHeadConfig(modality="text", dim=32, depth=2, num_heads=2, max_new_tokens=12, dropout=0.0), 8
    ).eval()
    x, padding = torch.randn(3, 7, 8), torch.ones(3, 7, dtype=torch.bool)
    padding[1, 4:] = False  # a shorter text: its padding must stay hidden from the cached cross-attention
    cached = head.generate(x, padding, num_beams=num_beams)
    plain = head.generate(x, padding, num_beams=num_beams, use_cache=False)
    assert cached.shape[1] > 5 and torch.equal(cached, plain)


def test_point_cloud_encodes_only_the_kept_groups(tiny_model, tiny_config):
    from omnivec.masking import gather_tokens

    enc = tiny_model.encoders["point_cloud"]
    x = omnivec.example_inputs(tiny_config, 3)["point_cloud"]
    masking = enc.sample_mask(x, torch.Generator().manual_seed(0))
    seen = []
    hook = enc.group_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    fast = enc(x, masking.ids_keep, with_target=True)
    hook.remove()
    assert seen == [masking.ids_keep.shape[1]]  # the mini-PointNet ran on the kept groups only
    plain = enc.tokenize(x, with_target=True)  # every group encoded, then the hidden ones dropped
    kept = enc.proj(enc.norm(enc.encode(gather_tokens(plain.tokens, masking.ids_keep), None)))
    torch.testing.assert_close(fast.tokens, kept, atol=1e-6, rtol=1e-5)
    assert torch.equal(fast.target, plain.target) and torch.equal(fast.positions, plain.positions)


def test_hidden_tokens_by_gather_are_the_boolean_mask_selection():
    from omnivec.masking import random_masking, tube_masking

    generator = torch.Generator().manual_seed(0)
    for masking in (
        random_masking(3, 10, 0.7, generator=generator),
        tube_masking(3, (4, 3, 3), 0.6, generator=generator),
    ):
        x = torch.randn(*masking.mask.shape, 5)
        assert masking.num_hidden == int(masking.mask.sum(1)[0])
        assert torch.equal(masking.hidden(x), x[masking.mask])


@pytest.mark.parametrize(
    "vit",
    [{}, {"backbone.num_prefix_tokens": 2, "backbone.pre_norm": True, "backbone.init_values": 0.1}],
    ids=["plain", "prefix_tokens"],
)
def test_packed_step_gives_the_per_modality_losses_and_gradients(vit):
    """MaskedPretrainer(pack=True): one backbone pass over the five modalities, text padded."""
    import copy

    from conftest import TINY

    from omnivec.mae import DecoderConfig, MaskedPretrainer
    from omnivec.packing import pack, unpack

    config = omnivec.model_config("omnivec_tiny", **TINY, **vit)
    torch.manual_seed(0)
    plain = MaskedPretrainer(omnivec.OmniVecModel(config), DecoderConfig(dim=32, depth=1, num_heads=2))
    packed = copy.deepcopy(plain)
    packed.pack = True
    inputs = omnivec.example_inputs(config, 3)
    assert not inputs["text"]["attention_mask"].all()  # padding in the batch
    batch = {m: {"input": x} for m, x in inputs.items()}
    losses = [module(batch, step=2) for module in (plain, packed)]
    assert losses[0].keys() == losses[1].keys() == set(config.modalities)
    for m in losses[0]:
        torch.testing.assert_close(losses[1][m], losses[0][m], atol=1e-5, rtol=1e-5)
    for parts in losses:
        sum(parts.values()).backward()
    grads = [
        [p.grad for p in (m.model.backbone.blocks[0].attn.qkv.weight, m.model.backbone.modality_embed["text"])]
        for m in (plain, packed)
    ]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    x = torch.randn(5, 3, 4)
    rows, mask = pack(x, None, 8)  # 2 samples per row of 8, 3 rows
    assert rows.shape == (3, 8, 4) and torch.equal(unpack(rows, 5, 3), x)
    assert mask[0, 0].tolist() == [True] * 3 + [False] * 5 and mask[0, 7].tolist() == [False] * 6 + [True] * 2


def test_packing_refuses_stochastic_depth():
    from omnivec.errors import ConfigError
    from omnivec.mae import DecoderConfig, MaskedPretrainer

    model = omnivec.build_model("omnivec_tiny", backbone={"drop_path": 0.1}, modalities={"video": None, "audio": None})
    with pytest.raises(ConfigError, match="pack: needs backbone.drop_path = 0"):
        MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2), pack=True)
