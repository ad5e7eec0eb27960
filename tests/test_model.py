import pytest
import torch

import omnivec
from omnivec.masking import gather_tokens


def test_forward_output(tiny_model, tiny_config):
    out = tiny_model(omnivec.example_inputs(tiny_config, batch_size=2))
    assert out.hidden_states["image"].shape == (2, 16, 32)
    assert out.pooled["text"].shape == (2, 32)
    assert out.logits["digits"].shape == (2, 10)
    assert out.padding_mask["image"] is None and out.padding_mask["text"].dtype == torch.bool


def test_padding_changes_nothing_for_unpadded_tokens(tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(5, 261, (1, 9))
    alone = tiny_model.embed({"text": ids})["text"]
    padded = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], 1)
    other = torch.randint(5, 261, (1, 16))
    batch = {
        "input_ids": torch.cat([padded, other]),
        "attention_mask": torch.tensor([[1] * 9 + [0] * 7, [1] * 16]),
    }
    together = tiny_model.embed({"text": batch})["text"]
    torch.testing.assert_close(together[0], alone[0], atol=1e-6, rtol=1e-5)
    hidden, _ = tiny_model.forward_features("text", batch)
    torch.testing.assert_close(hidden[0, :9], tiny_model.forward_features("text", ids)[0][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modality", ["image", "video", "audio", "text", "point_cloud"])
def test_token_dropping(tiny_model, tiny_config, modality):
    x = omnivec.example_inputs(tiny_config, batch_size=2, seed=1)[modality]
    enc = tiny_model.encoders[modality]
    tokenized = enc.tokenize(x)
    tokens, mask = tokenized.tokens, tokenized.padding_mask
    L = tokens.shape[1]
    ids_keep = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(i))[: L // 2] for i in range(2)])
    dropped, kept_mask = tiny_model.forward_features(modality, x, ids_keep)

    # 1. Equals running the blocks and the backbone on the gathered tokens.
    gathered = gather_tokens(tokens, ids_keep)
    gathered_mask = None if mask is None else gather_tokens(mask, ids_keep)
    for block in enc.blocks:
        gathered = block(gathered, attn_mask=None if gathered_mask is None else gathered_mask[:, None, None])
    manual = tiny_model.backbone(enc.proj(enc.norm(gathered)), modality, gathered_mask)
    torch.testing.assert_close(dropped, manual)

    # 2. Equals the full sequence with the dropped tokens masked out of attention.
    keep = torch.zeros(2, L, dtype=torch.bool).scatter_(1, ids_keep, True)
    full_mask = keep if mask is None else keep & mask
    full = enc.proj(enc.norm(_blocks(enc.blocks, tokens, full_mask)))
    full = tiny_model.backbone(full, modality, full_mask)
    valid = gathered_mask if gathered_mask is not None else torch.ones_like(ids_keep, dtype=torch.bool)
    torch.testing.assert_close(gather_tokens(full, ids_keep)[valid], dropped[valid], atol=1e-5, rtol=1e-4)


def _blocks(blocks, x, mask):
    for block in blocks:
        x = block(x, attn_mask=mask[:, None, None])
    return x


def test_save_and_load_give_identical_outputs(tiny_model, tiny_config, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = omnivec.OmniVecModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == tiny_config
    batch = omnivec.example_inputs(tiny_config, batch_size=2)
    a, b = tiny_model(batch), loaded(batch)
    for m in batch:
        assert torch.equal(a.pooled[m], b.pooled[m])
    assert torch.equal(a.logits["digits"], b.logits["digits"])


def test_loading_weights_of_another_config_names_the_tensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    other = omnivec.build_model("omnivec_tiny", **{"backbone.depth": 1, "modalities.video": None})
    other.config.save(tmp_path / "m" / "config.json")
    with pytest.raises(ValueError, match=r"config.json: backbone.dim is 128, but .*model.safetensors holds 32"):
        omnivec.OmniVecModel.from_pretrained(tmp_path / "m")


def test_missing_files_are_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        omnivec.OmniVecModel.from_pretrained(tmp_path)


def test_variants():
    assert {"omnivec_tiny", "omnivec_small", "omnivec_base"} <= set(omnivec.list_models())
    with torch.device("meta"):  # shapes only: no memory, no init cost
        base = omnivec.build_model("omnivec_base")
    backbone = sum(p.numel() for p in base.backbone.parameters())
    assert 84e6 < backbone < 87e6  # ViT-B: 12 x 768-wide blocks
    assert base.config.variant == "omnivec_base"
