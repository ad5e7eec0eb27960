"""Token selection for masked pretraining: MAE-style random masking by argsort of noise."""
from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: [B, L, ...], ids: [B, K] -> [B, K, ...], the tokens at `ids` for each sample."""
    index = ids.reshape(*ids.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)
