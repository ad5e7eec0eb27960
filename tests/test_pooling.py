"""Which vector represents a sample: `model.embed(inputs, pool=..., layers=...)`, the backbone's
per-block outputs, the attentive pooler and its saved probe."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

import omnivec
from omnivec.backbone import masked_mean
from omnivec.errors import ConfigError, ModelFileMissing
from omnivec.pooling import AttentivePooler, AttentiveProbe, load_pooler, parse_layers

DEEP = {**TINY, "backbone": {"dim": 32, "depth": 3, "num_heads": 2}}


@pytest.fixture
def deep_model() -> omnivec.OmniVecModel:
    torch.manual_seed(0)
    return omnivec.build_model("omnivec_tiny", **DEEP).eval()


def by_hand(model: omnivec.OmniVecModel, modality: str, x, blocks: list[int]) -> torch.Tensor:
    """Mean-pooled, normalised average of the named blocks' normed outputs, read with forward hooks."""
    outputs = []
    handles = [model.backbone.blocks[i].register_forward_hook(lambda m, a, out: outputs.append(out)) for i in blocks]
    _, mask = model.forward_features(modality, x)
    for h in handles:
        h.remove()
    tokens = torch.stack([model.backbone.norm(o) for o in outputs]).mean(0)  # [B, L, D]
    return F.normalize(masked_mean(tokens, mask), dim=-1)


@torch.no_grad()
def test_default_embedding_is_the_mean_of_the_last_block_bit_for_bit(deep_model):
    inputs = omnivec.example_inputs(deep_model.config, 3)
    embedded = deep_model.embed(inputs)
    for modality, x in inputs.items():
        hidden, mask = deep_model.forward_features(modality, x)
        assert torch.equal(embedded[modality], F.normalize(masked_mean(hidden, mask), dim=-1)), modality
        assert torch.equal(deep_model.embed({modality: x}, layers=[2])[modality], embedded[modality])
        assert torch.equal(deep_model.embed({modality: x}, layers="mean1")[modality], embedded[modality])


@torch.no_grad()
def test_layers_average_the_normed_outputs_of_the_named_blocks(deep_model):
    inputs = omnivec.example_inputs(deep_model.config, 3)
    for modality in ("image", "text"):  # text: padded samples
        x = inputs[modality]
        for layers, blocks in (("mean2", [1, 2]), ("0,2", [0, 2]), ([-3], [0])):
            got = deep_model.embed({modality: x}, layers=layers)[modality]
            assert got.shape == (3, 32)  # the backbone width, whatever the layers
            torch.testing.assert_close(got, by_hand(deep_model, modality, x, blocks), atol=1e-6, rtol=0)
        assert not torch.allclose(
            deep_model.embed({modality: x}, layers="mean2")[modality],
            deep_model.embed({modality: x})[modality],
            atol=1e-3,
        )


def test_block_outputs_stop_after_the_last_block_asked_for(deep_model):
    calls = []
    deep_model.backbone.blocks[2].register_forward_pre_hook(lambda *_: calls.append(1))
    tokens = deep_model.encoders["image"](omnivec.example_inputs(deep_model.config, 2)["image"]).tokens
    outs = deep_model.backbone.block_outputs(tokens, "image", None, [1, 0])
    assert [o.shape for o in outs] == [tokens.shape] * 2 and not calls


@pytest.mark.parametrize("layers", ["mean0", "mean4", "first", "0,x", [3], [], "-4"])
def test_bad_layers_name_the_setting(layers):
    with pytest.raises(ConfigError, match=r"^layers: expected last, meanK \(K in 1..3\)"):
        parse_layers(layers, 3)


def test_cls_pool_is_the_prefix_token_and_needs_one(deep_model):
    x = omnivec.example_inputs(deep_model.config, 2)["image"]
    with pytest.raises(ConfigError, match=r"pool: 'cls' needs a backbone with a prefix \(CLS\) token"):
        deep_model.embed({"image": x}, pool="cls")
    with pytest.raises(ConfigError, match="pool: expected one of"):
        deep_model.embed({"image": x}, pool="max")
    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny", **{**DEEP, "backbone": {**DEEP["backbone"], "num_prefix_tokens": 2}})
    with torch.no_grad():
        tokens = model.encoders["image"](x).tokens
        expected = model.backbone(tokens, "image", None, keep_prefix=True)[:, 0]  # [B, D]
        torch.testing.assert_close(
            model.embed({"image": x}, pool="cls")["image"], F.normalize(expected, dim=-1), atol=0, rtol=0
        )
        mean = model.embed({"image": x})["image"]
        torch.testing.assert_close(
            mean, F.normalize(model.backbone(tokens, "image").mean(1), dim=-1), atol=1e-6, rtol=0
        )


def test_attentive_pooler_ignores_padding_and_reads_the_tokens():
    torch.manual_seed(0)
    pooler = AttentivePooler(32, num_heads=4).eval()
    x = torch.randn(2, 5, 32)
    padded = torch.cat([x, 100 * torch.randn(2, 3, 32)], dim=1)  # [B, 8, D]: three padding slots of junk
    mask = torch.tensor([[True] * 5 + [False] * 3] * 2)
    with torch.no_grad():
        torch.testing.assert_close(pooler(padded, mask), pooler(x), atol=1e-5, rtol=0)
        assert pooler(x).shape == (2, 32) and not torch.allclose(pooler(x), pooler(x.flip(0)))


def test_attentive_pool_with_a_saved_probe(deep_model, tmp_path):
    x = omnivec.example_inputs(deep_model.config, 2)["audio"]
    with pytest.raises(ConfigError, match="pool: 'attentive' needs a trained attentive pooler"):
        deep_model.embed({"audio": x}, pool="attentive")
    torch.manual_seed(1)
    AttentiveProbe(32, num_classes=3, num_heads=2, layers="mean2").save(tmp_path / "probe", task="t")
    pooler = load_pooler(tmp_path / "probe")
    with torch.no_grad():
        tokens, mask = deep_model.layer_tokens("audio", x, "mean2")
        expected = F.normalize(pooler(tokens, mask), dim=-1)
        torch.testing.assert_close(
            deep_model.embed({"audio": x}, pool="attentive", layers="mean2", pooler=pooler)["audio"],
            expected,
            atol=0,
            rtol=0,
        )
    with pytest.raises(ConfigError, match="layers: the attentive pooler was trained on layers 'mean2', got 'last'"):
        deep_model.embed({"audio": x}, pool="attentive", pooler=pooler)
    with pytest.raises(ModelFileMissing, match="probe.json: missing"):
        load_pooler(tmp_path)
