"""Which vector represents a sample: the blocks whose tokens are used (`layers`) and how they are
pooled into one vector (`pool`), for `model.embed(inputs, pool=..., layers=...)`, `omnivec embed
--pool --layers` and the frozen protocols.

layers: "last" (the final block), "meanK" (the last K blocks), or block indices (a list, or a
string "4,8,11"; negative ones count from the last). Each block's output goes through the backbone's
final norm (DINOv2's `get_intermediate_layers(norm=True)`) and several blocks are averaged token by
token, so every choice keeps the backbone width D: an embedding store, its index and the queries
searched against it stay the same shape whatever the choice.

pool: "mean" (the real tokens, padding left out), "cls" (the first prefix token: a backbone with
`backbone.num_prefix_tokens` > 0, such as a pretrained ViT's), or "attentive" (an `AttentivePooler`:
V-JEPA 2's attentive probe, one learned query cross-attending to the tokens; its weights come from
`omnivec evaluate --protocol attentive`, which saves each task's probe as OUTPUT/attentive/TASK/).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers import Mlp, trunc_normal_
from torch import nn

from .backbone import attention_mask, masked_mean
from .errors import ConfigError, ModelError, ModelFileMissing

PROBE_CONFIG, PROBE_WEIGHTS = "probe.json", "probe.safetensors"

Layers = str | Sequence[int]


def parse_layers(layers: Layers, depth: int) -> list[int]:
    """`layers` -> the 0-based block indices it names in a backbone of `depth` blocks (see the module
    docstring); a `ConfigError` naming `layers` for anything else."""
    expected = f"last, meanK (K in 1..{depth}) or block indices in [-{depth}, {depth}) such as 0,2,-1"
    if isinstance(layers, str) and layers == "last":
        return [depth - 1]
    if isinstance(layers, str) and layers.startswith("mean"):
        k = layers[4:]
        if not k.isdigit() or not 1 <= int(k) <= depth:
            raise ConfigError(f"layers: expected {expected}, got {layers!r}")
        return list(range(depth - int(k), depth))
    try:
        items = [int(i) for i in (layers.split(",") if isinstance(layers, str) else layers)]
    except (TypeError, ValueError):
        raise ConfigError(f"layers: expected {expected}, got {layers!r}") from None
    if not items or not all(-depth <= i < depth for i in items):
        raise ConfigError(f"layers: expected {expected}, got {layers!r}")
    return [i % depth for i in items]


def layers_name(layers: Layers) -> str:
    """`layers` as recorded in metadata: "last", "mean4" or "0,2,-1"."""
    return layers if isinstance(layers, str) else ",".join(str(int(i)) for i in layers)


class AttentivePooler(nn.Module):
    """V-JEPA 2's attentive pooler (src/models/attentive_pooler.py, one `CrossAttentionBlock`): a
    learned query attends to the layer-normed tokens with `num_heads` heads (no output projection,
    as there); the query plus what it read, then an MLP residual -> one vector [B, D].

    `layers` records the blocks whose tokens it was trained on (see `parse_layers`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layers: str = "last"):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"num_heads: expected a divisor of the width {dim}, got {num_heads}")
        self.num_heads, self.mlp_ratio, self.layers = num_heads, mlp_ratio, layers
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        for m in self.modules():  # V-JEPA 2's init: N(0, 0.02) truncated, zero biases
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.query, std=0.02)
        with torch.no_grad():
            self.mlp.fc2.weight.div_(2**0.5)  # its `_rescale_blocks` for the one block

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D] tokens, padding_mask: [B, L] bool (True = real token) -> [B, D]."""
        B, L, D = x.shape
        h = self.num_heads
        q = self.q(self.query).reshape(1, 1, h, D // h).transpose(1, 2).expand(B, -1, -1, -1)  # [B, h, 1, D/h]
        k, v = self.kv(self.norm1(x)).reshape(B, L, 2, h, D // h).permute(2, 0, 3, 1, 4)  # [B, h, L, D/h] each
        read = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(padding_mask))  # [B, h, 1, D/h]
        y = self.query + read.transpose(1, 2).reshape(B, 1, D)  # [B, 1, D]
        y = y + self.mlp(self.norm2(y))
        return y[:, 0]  # [B, D]


class AttentiveProbe(nn.Module):
    """V-JEPA 2's `AttentiveClassifier`: an `AttentivePooler`, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0, layers: str = "last"):
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads, mlp_ratio, layers)
        self.linear = nn.Linear(dim, num_classes)
        trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D], padding_mask: [B, L] -> logits [B, num_classes]."""
        return self.linear(self.pooler(x, padding_mask))

    def save(self, directory: str | os.PathLike, **info: Any) -> None:
        """Write `probe.json` (sizes, the layers, and `info`: model, task, classes) and
        `probe.safetensors` to `directory`, each aside and renamed into place."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        p = self.pooler
        config = {
            "format": "omnivec-attentive-probe",
            "dim": p.query.shape[-1],
            "num_heads": p.num_heads,
            "mlp_ratio": p.mlp_ratio,
            "num_classes": self.linear.out_features,
            "layers": p.layers,
            **info,
        }
        save_file(
            {k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / f".{PROBE_WEIGHTS}")
        )
        os.replace(directory / f".{PROBE_WEIGHTS}", directory / PROBE_WEIGHTS)
        (directory / f".{PROBE_CONFIG}").write_text(json.dumps(config, indent=2) + "\n")
        os.replace(directory / f".{PROBE_CONFIG}", directory / PROBE_CONFIG)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttentiveProbe:
        """Read what `save` wrote; `ModelError` names the folder or file that cannot be used."""
        directory = Path(directory)
        for name in (PROBE_CONFIG, PROBE_WEIGHTS):
            if not (directory / name).is_file():
                raise ModelFileMissing(
                    f"{directory / name}: missing (omnivec evaluate --protocol attentive writes "
                    "OUTPUT/attentive/TASK/ with it)"
                )
        try:
            config = json.loads((directory / PROBE_CONFIG).read_text())
            probe = cls(
                config["dim"], config["num_classes"], config["num_heads"], config["mlp_ratio"], config["layers"]
            )
            probe.load_state_dict(load_file(str(directory / PROBE_WEIGHTS)))
        except (ValueError, KeyError, RuntimeError) as e:  # bad JSON, a missing key, other tensors
            raise ModelError(f"{directory}: not an attentive probe written by omnivec ({e})") from e
        return probe.eval()


def load_pooler(directory: str | os.PathLike) -> AttentivePooler:
    """The attentive pooler of a probe `omnivec evaluate --protocol attentive` saved (OUTPUT/attentive/TASK)."""
    return AttentiveProbe.load(directory).pooler


PoolFn = Callable[[torch.Tensor, "torch.Tensor | None", int, "AttentivePooler | None"], torch.Tensor]


def mean_pool(
    tokens: torch.Tensor, padding_mask: torch.Tensor | None, num_prefix: int, pooler: AttentivePooler | None
) -> torch.Tensor:
    """tokens [B, n + L, D] (n prefix tokens first) -> [B, D] mean of the real tokens (prefix tokens left out)."""
    return masked_mean(tokens[:, num_prefix:], padding_mask)


def cls_pool(
    tokens: torch.Tensor, padding_mask: torch.Tensor | None, num_prefix: int, pooler: AttentivePooler | None
) -> torch.Tensor:
    """tokens [B, n + L, D] -> [B, D] the first prefix token's output (a ViT's CLS)."""
    return tokens[:, 0]


def attentive_pool(
    tokens: torch.Tensor, padding_mask: torch.Tensor | None, num_prefix: int, pooler: AttentivePooler | None
) -> torch.Tensor:
    """tokens [B, n + L, D] -> [B, D] the trained `pooler` over the real tokens (prefix tokens left out)."""
    return pooler(tokens[:, num_prefix:], padding_mask)


POOLS: dict[str, PoolFn] = {"mean": mean_pool, "cls": cls_pool, "attentive": attentive_pool}


def check_pool(
    pool: str, layers: Layers, pooler: AttentivePooler | None, dim: int, depth: int, num_prefix: int
) -> list[int]:
    """Fail before any work when `pool` cannot be used with `pooler` and this backbone (width `dim`,
    `depth` blocks, `num_prefix` prefix tokens); returns the block indices of `layers`."""
    if pool not in POOLS:
        raise ConfigError(f"pool: expected one of {sorted(POOLS)}, got {pool!r}")
    indices = parse_layers(layers, depth)
    if pool == "cls" and not num_prefix:
        raise ConfigError(
            "pool: 'cls' needs a backbone with a prefix (CLS) token, backbone.num_prefix_tokens > 0 "
            "(e.g. a backbone from a pretrained ViT: backbone.pretrained=timm:...); this model has none: "
            "use pool=mean"
        )
    if pool == "attentive" and pooler is None:
        raise ConfigError(
            "pool: 'attentive' needs a trained attentive pooler: `omnivec evaluate --protocol attentive` "
            "saves one per task as OUTPUT/attentive/TASK; pass it (pooler=load_pooler(FOLDER), or "
            "omnivec embed --pooler FOLDER)"
        )
    if pool == "attentive" and pooler.query.shape[-1] != dim:
        raise ConfigError(f"pooler: trained on {pooler.query.shape[-1]}-wide tokens, this model's are {dim} wide")
    if pool == "attentive" and parse_layers(pooler.layers, depth) != indices:
        raise ConfigError(
            f"layers: the attentive pooler was trained on layers {pooler.layers!r}, got {layers_name(layers)!r}"
        )
    return indices
