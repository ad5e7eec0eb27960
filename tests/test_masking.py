import pytest
import torch

from omnivec.masking import gather_tokens, random_masking, tube_masking


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
