"""Token selection for masked pretraining: MAE-style masking by argsort of noise.

Only the kept tokens go through the modality blocks and the backbone; the decoder puts mask tokens
back at the hidden positions. Samples with padding (text, short clips) mask a fraction of their own
real tokens; padding is never kept nor hidden.
"""

from __future__ import annotations

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

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, ...] -> [N, ...] the hidden tokens, row by row in position order (`x[mask]`);
        a gather when every sample hides `num_hidden` tokens, so no device-to-host sync."""
        if self.num_hidden is None:
            return x[self.mask]  # the count depends on the data: a sync
        ids = torch.argsort(~self.mask, dim=1, stable=True)[:, : self.num_hidden]  # [B, n] hidden, ascending
        return gather_tokens(x, ids).flatten(0, 1)  # [B * n, ...]


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
