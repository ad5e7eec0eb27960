"""Packing: one backbone pass over the kept tokens of every modality of a mixed pretraining step.

Each (modality, sample) is one sequence (the backbone's prefix tokens, if any, lead it). The
samples of a modality share a length K (kept tokens, padding slots included), so they are laid end
to end, `length // K` to a row of `length` tokens (NaViT's "Patch n' Pack"); the rows of every
modality go through the backbone as one batch, and attention is block-diagonal: a token attends
only to the real tokens of its own sample. The layout follows from the shapes alone: packing costs
no device-to-host sync.

The backbone's own blocks (timm `Block`, SDPA) run the rows with a dense boolean mask
[R, 1, length, length]. In torch 2.11 FlexAttention has no backward pass on CPU, and SDPA on nested
jagged tensors runs a per-sequence math fallback there (after a host sync); rows as long as the
longest sample keep the mask's wasted work small.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .backbone import SharedBackbone, run_block


def pack(x: torch.Tensor, padding_mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, K, D] one modality's tokens, padding_mask: [B, K] (True = real token) -> rows
    [R, length, D] holding length // K samples each (zero samples fill the last row, zero tokens the
    end of every row) and their attention mask [R, length, length] (True = attend: same sample,
    real key; the filler attends to itself)."""
    B, K, D = x.shape
    n = length // K  # samples per row
    R = -(-B // n)
    rows = F.pad(x, (0, 0, 0, 0, 0, R * n - B)).reshape(R, n * K, D)
    rows = F.pad(rows, (0, 0, 0, length - n * K))  # [R, length, D]
    sample = torch.arange(length, device=x.device) // K  # [length] sample of each slot (n: the row's end)
    mask = (sample[:, None] == sample[None, :]).expand(R, -1, -1)  # [R, length, length] block-diagonal
    if padding_mask is not None:
        real = F.pad(padding_mask, (0, 0, 0, R * n - B), value=True).reshape(R, n * K)
        mask = mask & F.pad(real, (0, length - n * K), value=True)[:, None, :]  # keys: real tokens only
    return rows, mask


def unpack(rows: torch.Tensor, batch_size: int, num_tokens: int) -> torch.Tensor:
    """rows: [R, length, D] laid out by `pack` -> [B, K, D] the samples again."""
    R, length, D = rows.shape
    n = length // num_tokens
    return rows[:, : n * num_tokens].reshape(R * n, num_tokens, D)[:batch_size]


def packed_backbone(
    backbone: SharedBackbone,
    tokens: Mapping[str, torch.Tensor],
    padding_masks: Mapping[str, torch.Tensor | None],
    keep_prefix: bool = False,
) -> dict[str, torch.Tensor]:
    """{modality: tokens [B_m, K_m, D]} with their padding masks [B_m, K_m] (or None) -> what
    `backbone(tokens, modality, padding_mask, keep_prefix)` gives for each, from one pass over all of
    them in rows as long as the longest sample (rounded up to 8 tokens)."""
    num_prefix = backbone.num_prefix_tokens  # they lead every sample
    samples = {}
    for m, t in tokens.items():
        x, padding_mask = t + backbone.modality_embed[m], padding_masks[m]  # [B, K, D]
        if num_prefix:
            x = torch.cat([backbone.prefix.expand(len(x), -1, -1).to(x.dtype), x], dim=1)  # [B, P + K, D]
            padding_mask = None if padding_mask is None else F.pad(padding_mask, (num_prefix, 0), value=True)
        samples[m] = x, padding_mask
    length = -(-max(x.shape[1] for x, _ in samples.values()) // 8) * 8
    packed = [pack(x, padding_mask, length) for x, padding_mask in samples.values()]
    x = backbone.norm_pre(torch.cat([rows for rows, _ in packed]))  # [R, length, D]
    mask = torch.cat([mask for _, mask in packed])[:, None]  # [R, 1, length, length]
    for block in backbone.blocks:
        x = run_block(block, x, mask, backbone.grad_checkpointing)
    x = backbone.norm(x).split([len(rows) for rows, _ in packed])  # per modality [R_m, length, D]
    drop = 0 if keep_prefix else num_prefix
    return {m: unpack(rows, *samples[m][0].shape[:2])[:, drop:] for m, rows in zip(samples, x)}  # [B_m, K_m, D]
