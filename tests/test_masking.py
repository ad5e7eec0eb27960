import pytest
import torch

from omnivec.mae import DecoderConfig, MaskedDecoder, MaskedPretrainer
from omnivec.masking import decoder_masking, gather_tokens, random_masking, tube_masking
from omnivec.variants import build_model


@pytest.mark.parametrize("length, ratio", [(64, 0.75), (16, 0.9), (32, 0.6), (100, 0.15)])
def test_random_masking_keeps_the_configured_fraction(length, ratio):
    m = random_masking(4, length, ratio, generator=torch.Generator().manual_seed(0))
    hidden = round(length * ratio)
    assert m.ids_keep.shape == (4, length - hidden) and m.keep_valid is None
    assert (m.mask.sum(1) == hidden).all()
    for b in range(4):  # kept and hidden are disjoint and cover every token
        kept = set(m.ids_keep[b].tolist())
        assert kept.isdisjoint(m.mask[b].nonzero().flatten().tolist()) and len(kept) == length - hidden


def test_ids_restore_inverts_the_shuffle():
    noise = torch.rand(3, 10, generator=torch.Generator().manual_seed(1))
    m = random_masking(3, 10, 0.5, noise=noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, m.ids_restore), torch.arange(10).expand(3, -1))
    assert torch.equal(m.ids_keep, ids_shuffle[:, :5])  # the lowest noise is kept (MAE)


def test_noise_fixes_the_choice():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = random_masking(1, 4, 0.5, noise=noise)
    assert m.ids_keep.tolist() == [[1, 3]] and m.mask.tolist() == [[True, False, True, False]]


def test_padding_is_never_kept_nor_hidden():
    padding = torch.tensor([[1] * 10, [1] * 4 + [0] * 6]).bool()
    m = random_masking(2, 10, 0.5, padding_mask=padding, generator=torch.Generator().manual_seed(0))
    assert m.mask.sum(1).tolist() == [5, 2]  # half of each sample's own real tokens
    assert not m.mask[1, 4:].any()
    assert m.keep_valid.tolist() == [[True] * 5, [True, True, False, False, False]]
    kept_real = gather_tokens(padding, m.ids_keep) & m.keep_valid
    assert kept_real.sum(1).tolist() == [5, 2]


def test_tube_masking_hides_the_same_patches_in_every_frame():
    m = tube_masking(2, (4, 3, 3), 0.9, generator=torch.Generator().manual_seed(0))
    mask = m.mask.reshape(2, 4, 9)
    assert (mask == mask[:, :1]).all()  # identical over time
    assert (mask[:, 0].sum(1) == round(9 * 0.9)).all()
    assert m.ids_keep.shape == (2, 4 * 1)
    kept = torch.zeros(2, 36, dtype=torch.bool).scatter_(1, m.ids_keep, True)
    assert torch.equal(kept, ~m.mask)
    shuffled = torch.gather(torch.arange(36).expand(2, -1), 1, torch.argsort(m.ids_restore, 1))
    assert torch.equal(shuffled[:, :4], m.ids_keep)  # ids_restore undoes [kept, hidden]


@pytest.mark.parametrize("padded", [False, True])
def test_decoder_masking_decodes_a_share_of_each_samples_hidden_tokens(padded):
    padding = torch.tensor([[1] * 20, [1] * 8 + [0] * 12]).bool() if padded else None
    m = random_masking(2, 20, 0.5, padding_mask=padding, generator=torch.Generator().manual_seed(0))
    d = decoder_masking(m, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(d.ids_keep, m.ids_keep) and torch.equal(d.mask, m.mask)  # the encoder's tokens as before
    counts = [5, 2] if padded else [5, 5]  # half of the 10 and 4 hidden tokens
    valid = torch.ones_like(d.ids_decode, dtype=torch.bool) if d.decode_valid is None else d.decode_valid
    assert (d.decode_valid is None) == (not padded) and valid.sum(1).tolist() == counts
    for b in range(2):
        decoded = d.ids_decode[b][valid[b]].tolist()
        assert len(set(decoded)) == counts[b] and all(m.mask[b, i] for i in decoded)  # hidden tokens, once each
    assert d.loss_mask.sum(1).tolist() == counts and not (d.loss_mask & ~m.mask).any()
    positions = torch.arange(20).expand(2, -1)[..., None]  # [B, L, 1]
    assert d.loss_tokens(positions).flatten().tolist() == [i for b in range(2) for i in d.ids_decode[b][valid[b]]]
    everything = decoder_masking(m, 0.0, torch.Generator().manual_seed(1))
    every_hidden = sorted(m.hidden(positions).flatten().tolist())
    assert sorted(everything.loss_tokens(positions).flatten().tolist()) == every_hidden


@pytest.mark.parametrize("padded", [False, True])
def test_the_decoder_on_every_hidden_token_predicts_as_without_decoder_masking(padded):
    """Attention does not depend on token order: decoding all hidden tokens through `ids_decode`
    gives the full decoder's predictions, token by token."""
    torch.manual_seed(0)
    decoder = MaskedDecoder(DecoderConfig(dim=32, depth=1, num_heads=2), 48, 16, 5).eval()
    padding = torch.tensor([[1] * 16, [1] * 10 + [0] * 6]).bool() if padded else None
    m = random_masking(2, 16, 0.75, padding_mask=padding, generator=torch.Generator().manual_seed(0))
    visible = torch.randn(2, m.ids_keep.shape[1], 48)
    full = decoder(visible, m, padding)  # [N, P], hidden tokens in position order
    d = decoder_masking(m, 0.0, torch.Generator().manual_seed(3))
    dual = decoder(visible, d, padding)  # [N, P], in ids_decode order
    positions = torch.arange(16).expand(2, -1)[..., None]
    order = [(b, int(i)) for b in range(2) for i in d.ids_decode[b][d.decode_valid[b] if padded else slice(None)]]
    by_position = dict(zip(order, dual))
    hidden_order = [(b, int(i)) for b in range(2) for i in m.mask[b].nonzero().flatten()]
    assert [p[1] for p in hidden_order] == m.hidden(positions).flatten().tolist()
    assert torch.allclose(torch.stack([by_position[k] for k in hidden_order]), full, atol=1e-5)
    half = decoder(visible, decoder_masking(m, 0.5, torch.Generator().manual_seed(3)), padding)
    assert half.shape[0] == (6 + 6 if not padded else 6 + 4)  # 12 and 12 / 8 hidden tokens, half decoded


def test_pretraining_decodes_fewer_video_tokens_in_training_and_all_in_evaluation():
    model = build_model(
        "omnivec_tiny", backbone={"depth": 1}, modalities={"video": {"decoder_mask_ratio": 0.5}, "text": None}
    )
    pretrainer = MaskedPretrainer(model, DecoderConfig(dim=32, depth=1, num_heads=2))
    seen = []
    pretrainer.decoders["video"].blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape[1]))
    clips = torch.randn(2, 8, 3, 32, 32)
    loss = pretrainer({"video": {"input": clips}})["video"]
    loss.backward()
    assert torch.isfinite(loss) and seen[-1] == 24 + 116  # 24 kept, half of the 232 hidden tubelets
    with torch.no_grad():
        pretrainer.eval()
        result = pretrainer.reconstruct("video", clips, torch.Generator().manual_seed(0))
    assert seen[-1] == 256 and result["pred"].shape[0] == 2 * 232  # validation decodes every hidden tubelet
