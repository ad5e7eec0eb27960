"""Token selection for masked pretraining: MAE-style masking by argsort of noise.

Only the kept tokens go through the modality blocks and the backbone; the decoder puts mask tokens
back at the hidden positions. Samples with padding (text, short clips) mask a fraction of their own
real tokens; padding is never kept nor hidden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Masking:
    """Which tokens a sample keeps: `ids_keep` [B, K] (with `keep_valid` [B, K] False where a slot
    only pads a sample that keeps fewer tokens), `mask` [B, L] True where a real token is hidden
    (the loss positions), `ids_restore` [B, L] that undoes the shuffle, and `num_hidden` the
    hidden tokens per sample when every sample hides as many (None: they differ, or unknown)."""

    ids_keep: torch.Tensor
    keep_valid: torch.Tensor | None
    mask: torch.Tensor
    ids_restore: torch.Tensor
    num_hidden: int | None = None
    ids_decode: torch.Tensor | None = None  # [B, J] the hidden tokens the decoder runs (`decoder_masking`)
    decode_valid: torch.Tensor | None = None  # [B, J] False where a slot only pads a sample that decodes fewer

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, ...] -> [N, ...] the hidden tokens, row by row in position order (`x[mask]`);
        a gather when every sample hides `num_hidden` tokens, so no device-to-host sync."""
        if self.num_hidden is None:
            return x[self.mask]  # the count depends on the data: a sync
        ids = torch.argsort(~self.mask, dim=1, stable=True)[:, : self.num_hidden]  # [B, n] hidden, ascending
        return gather_tokens(x, ids).flatten(0, 1)  # [B * n, ...]

    @property
    def loss_mask(self) -> torch.Tensor:
        """[B, L] True where the loss looks: the hidden tokens, or with decoder masking those decoded."""
        if self.ids_decode is None:
            return self.mask
        valid = torch.ones_like(self.ids_decode, dtype=torch.bool) if self.decode_valid is None else self.decode_valid
        return torch.zeros_like(self.mask).scatter(1, self.ids_decode, valid)

    def decoded(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, J, ...] one value per `ids_decode` slot -> [N, ...] those of the real slots."""
        return x.flatten(0, 1) if self.decode_valid is None else x[self.decode_valid]

    def loss_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, ...] -> [N, ...] the tokens the loss looks at: the hidden ones (`hidden`), or with
        decoder masking those at `ids_decode` (`decoded`), in the order the decoder predicts them."""
        return self.hidden(x) if self.ids_decode is None else self.decoded(gather_tokens(x, self.ids_decode))


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: [B, L, ...], ids: [B, K] -> [B, K, ...], the tokens at `ids` for each sample."""
    index = ids.reshape(*ids.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def keep_count(n_real: torch.Tensor, ratio: float) -> torch.Tensor:
    """Tokens a sample of `n_real` real tokens keeps: n - round(n * ratio), at least 1 (elementwise)."""
    return torch.minimum(torch.clamp(n_real - torch.round(n_real * ratio).long(), min=1), n_real)


def random_masking(
    batch_size: int,
    length: int,
    ratio: float,
    padding_mask: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Masking:
    """Hide round(n * ratio) of each sample's n real tokens, chosen uniformly (MAE).

    noise: [B, L] in [0, 1) to fix the choice (tests); else drawn from `generator`.
    padding_mask: [B, L] True for real tokens; padding is never kept nor counted as hidden.
    """
    if noise is None:
        noise = torch.rand(batch_size, length, generator=generator, device=generator.device if generator else device)
    device = noise.device
    real = torch.ones(batch_size, length, dtype=torch.bool, device=device) if padding_mask is None else padding_mask
    ids_shuffle = torch.argsort(noise + 2.0 * (~real), dim=1)  # real tokens first (in random order), then pads
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # position of each token in the shuffled order, [B, L]
    n_keep: int | torch.Tensor
    if padding_mask is None:  # every sample keeps as many tokens: counted on the host, no device sync
        n_keep = max_keep = int(keep_count(torch.tensor(length), ratio))
        keep_valid, num_hidden = None, length - max_keep
    else:
        n_keep = keep_count(real.sum(1), ratio)[:, None]  # [B, 1]
        max_keep = int(n_keep.max())  # a sync: the slots the batch needs depend on its texts' lengths
        keep_valid, num_hidden = torch.arange(max_keep, device=device)[None] < n_keep, None  # [B, K]
    mask = (ids_restore >= n_keep) & real  # [B, L]
    return Masking(ids_shuffle[:, :max_keep], keep_valid, mask, ids_restore, num_hidden)  # ids_keep [B, K]


def decoder_masking(masking: Masking, ratio: float, generator: torch.Generator | None = None) -> Masking:
    """VideoMAE V2's dual masking: of each sample's n hidden tokens, the decoder runs and the loss
    looks at n - round(n * ratio), chosen uniformly (`ids_decode`, `decode_valid`); the others are
    neither run nor predicted. The kept tokens are those of `masking`."""
    B, L = masking.mask.shape
    device = masking.mask.device
    noise = torch.rand(B, L, generator=generator, device=generator.device if generator else device)
    ids = torch.argsort(noise + 2.0 * (~masking.mask), dim=1)  # hidden tokens first, in random order
    decode_valid: torch.Tensor | None
    if masking.num_hidden is not None:  # every sample hides as many: counted on the host
        max_decode = masking.num_hidden - round(masking.num_hidden * ratio)
        decode_valid = None
    else:
        n_hidden = masking.mask.sum(1)  # [B]
        n_decode = n_hidden - torch.round(n_hidden * ratio).long()
        max_decode = int(n_decode.max())  # a sync, as random_masking's for samples of several lengths
        decode_valid = torch.arange(max_decode, device=device)[None] < n_decode[:, None]  # [B, J]
    ids_decode = ids[:, :max_decode]  # [B, J]
    return dataclasses.replace(masking, ids_decode=ids_decode, decode_valid=decode_valid)


def tube_masking(
    batch_size: int,
    grid: tuple[int, int, int],
    ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    padding_mask: torch.Tensor | None = None,
) -> Masking:
    """VideoMAE tube masking: the same spatial patches are hidden in every real time step.

    grid: (T', H', W') tokens in time-major order; noise: [B, H'*W'] to fix the choice.
    padding_mask: [B, T'] True at a sample's real time steps; a padded step is never kept (its
    slots in `ids_keep` are not `keep_valid`) nor hidden.
    """
    t, h, w = grid
    spatial = random_masking(batch_size, h * w, ratio, noise=noise, generator=generator, device=device)
    offsets = torch.arange(t, device=spatial.ids_keep.device)[None, :, None] * (h * w)  # [1, T', 1]
    ids_keep = (offsets + spatial.ids_keep[:, None, :]).flatten(1)  # [B, T' * K]
    mask = spatial.mask.repeat(1, t)  # [B, T' * H' * W']
    hidden = (offsets + torch.argsort(spatial.ids_restore, 1)[:, None, ids_keep.shape[1] // t :]).flatten(1)
    ids_restore = torch.argsort(torch.cat([ids_keep, hidden], 1), dim=1)
    if padding_mask is None:
        return Masking(ids_keep, None, mask, ids_restore, t * spatial.num_hidden)
    keep_valid = padding_mask.repeat_interleave(ids_keep.shape[1] // t, dim=1)  # [B, T' * K]
    mask = mask & padding_mask.repeat_interleave(h * w, dim=1)  # [B, T' * H' * W']
    return Masking(ids_keep, keep_valid, mask, ids_restore)
