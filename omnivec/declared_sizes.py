"""A saved model's config.json against its weights before anything is built: the block counts and
widths the config declares must be those of the tensors in model.safetensors (read from the file's
header only), so a config declaring a huge model fails naming the key instead of allocating it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .errors import ModelError

STACK = re.compile(r"^(.*?\.(?:blocks|layers|layer))\.(\d+)\.")  # backbone.blocks.3.attn... -> (backbone.blocks, 3)
LIBRARY_DEPTH = ("depth", "num_hidden_layers")  # timm create_model kwargs, transformers configs
LIBRARY_WIDTH = ("embed_dim", "hidden_size")


def weights_header(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} of a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as e:  # safetensors: truncated, empty, or another format under that name
        raise ModelError(
            f"{path}: not a readable safetensors file ({e}); save_pretrained writes one (pickled PyTorch "
            "files are never loaded)"
        ) from e


def check_declared_sizes(data: Mapping[str, Any], shapes: Mapping[str, list[int]], config: Path, weights: Path) -> None:
    """A `ModelError` naming the first setting of the raw config `data` (the depth of the backbone,
    of a modality's blocks or of a library model; the backbone's width and MLP ratio; a modality's
    width) that differs from the tensors `shapes` of the weights file."""
    stacks: dict[str, int] = {}
    for name in shapes:
        if m := STACK.match(name):
            stacks[m[1]] = max(stacks.get(m[1], 0), int(m[2]) + 1)

    def depth(key: str, declared: Any, prefix: str) -> tuple[str, Any, int | None, str]:
        """The blocks numbered at `prefix` (or, ending in ".", at the deepest stack under it)."""
        found = [n for p, n in stacks.items() if p == prefix or (prefix.endswith(".") and p.startswith(prefix))]
        return key, declared, max(found, default=0), f"blocks in {prefix.rstrip('.')}"

    def width(key: str, declared: Any, name: str) -> tuple[str, Any, int | None, str]:
        return key, declared, shapes[name][0] if name in shapes else None, f"the width of {name}"

    backbone, modalities = section(data, "backbone"), section(data, "modalities")
    library = section(backbone, "library_config")
    checks: list[tuple[str, Any, int | None, str]] = [depth("backbone.depth", backbone.get("depth"), "backbone.blocks")]
    checks += [depth(f"backbone.library_config.{k}", library.get(k), "backbone.blocks") for k in LIBRARY_DEPTH]
    checks += [width("backbone.dim", backbone.get("dim"), "backbone.norm.weight")]
    checks += [width(f"backbone.library_config.{k}", library.get(k), "backbone.norm.weight") for k in LIBRARY_WIDTH]
    for mod in modalities:
        sub, prefix = section(modalities, mod), f"encoders.{mod}."
        checks += [depth(f"modalities.{mod}.depth", sub.get("depth"), f"{prefix}blocks")]
        checks += [width(f"modalities.{mod}.width", sub.get("width"), f"{prefix}norm.weight")]
        library = section(sub, "library_config")
        checks += [
            depth(f"modalities.{mod}.library_config.{k}", library.get(k), f"{prefix}library.") for k in LIBRARY_DEPTH
        ]
    for key, declared, found, what in checks:
        if isinstance(declared, int) and not isinstance(declared, bool) and found is not None and declared != found:
            refuse(config, f"{key} is {declared}", weights, f"{found} ({what})")
    dim, ratio, fc1 = backbone.get("dim"), backbone.get("mlp_ratio"), shapes.get("backbone.blocks.0.mlp.fc1.weight")
    if isinstance(dim, int) and isinstance(ratio, (int, float)) and fc1 and int(dim * ratio) != fc1[0]:
        refuse(
            config, f"backbone.mlp_ratio is {ratio}", weights, f"{fc1[0] / dim:g} ({fc1[0]} MLP units of width {dim})"
        )


def refuse(config: Path, declared: str, weights: Path, found: str) -> None:
    raise ModelError(
        f"{config}: {declared}, but {weights} holds {found}; refusing to build a model its weights "
        "do not fit (save_pretrained writes both)"
    )


def section(data: Any, key: str) -> Mapping[str, Any]:
    """`data[key]` when both are mappings, else {} (the config's own validation names what is wrong)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}
