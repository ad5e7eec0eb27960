"""A saved model folder: `config.json`, `model.safetensors`, each modality's assets (a tokenizer)
and a model card `README.md`, written aside and renamed into place; read back from a local folder
or a Hugging Face hub id, refusing weights that do not fit the config or hold NaN or Inf."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors.torch import load_file, save_file
from torch import nn

from .card import model_card
from .config import OmniVecConfig, read_json
from .declared_sizes import check_declared_sizes, weights_header
from .errors import ConfigError, ModelError, ModelFileMissing
from .registry import MODALITIES

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"


def save_model_folder(
    model: nn.Module, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write `model` (an `OmniVecModel`) to `directory`: see `OmniVecModel.save_pretrained`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as tmp_name:
        tmp = Path(tmp_name)
        model.config.save(tmp / CONFIG_NAME)
        weights = model.state_dict() if state_dict is None else state_dict
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_NAME))
        for modality, cfg in model.config.modalities.items():
            for name in MODALITIES.get(modality).save_assets(cfg, tmp):
                if (directory / name).is_dir():
                    shutil.rmtree(directory / name)
                os.replace(tmp / name, directory / name)
        (tmp / CARD_NAME).write_text(model_card(model.config, directory, sum(p.numel() for p in model.parameters())))
        os.replace(tmp / WEIGHTS_NAME, directory / WEIGHTS_NAME)
        os.replace(tmp / CARD_NAME, directory / CARD_NAME)
        os.replace(tmp / CONFIG_NAME, directory / CONFIG_NAME)


def saved_config(folders: list[Path | None]) -> OmniVecConfig | None:
    """The model config saved in the first of `folders` that holds a `config.json`, as written (a
    resumed run's own config, its tokenizer named as the run named it), or None."""
    found = next((f / CONFIG_NAME for f in folders if f is not None and (f / CONFIG_NAME).is_file()), None)
    return OmniVecConfig.load(found) if found else None


def load_model_folder(cls: Any, name_or_path: str | os.PathLike, revision: str | None = None) -> Any:
    """The `cls` (`OmniVecModel`) saved in a folder or hub id: see `OmniVecModel.from_pretrained`."""
    directory = resolve_model_dir(name_or_path, revision)
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / required).is_file():
            raise ModelFileMissing(f"{directory / required}: missing (save_pretrained writes it)")
    data = read_json(directory / CONFIG_NAME)
    header = weights_header(directory / WEIGHTS_NAME)
    check_declared_sizes(data, header, directory / CONFIG_NAME, directory / WEIGHTS_NAME)
    try:  # (a huge declared model fails above, before anything is built)
        config = OmniVecConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{directory / CONFIG_NAME}: {e}") from e
    for modality, cfg in config.modalities.items():
        MODALITIES.get(modality).load_assets(cfg, directory)
    check_shapes_before_building(cls, config, header, directory)
    model = cls(config, load_library_weights=False)
    state = load_file(directory / WEIGHTS_NAME)  # (its header was read above)
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise ModelError(f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}: {problems}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ModelError(
            f"{directory / WEIGHTS_NAME}: tensor {bad[0]}{more} holds NaN or Inf values "
            "(saved from a diverged run?); refusing to load it"
        )
    model.load_state_dict(state)
    return model


def check_shapes_before_building(
    cls: Any, config: OmniVecConfig, header: Mapping[str, list[int]], directory: Path
) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with the weights
    file's header: any size config.json declares (an image_size, a vocab_size, a max_length, ...)
    that the weights do not hold is a `ModelError` before anything is allocated. A model that cannot
    be built on the meta device is checked after the real build, as before."""
    try:
        with torch.device("meta"):
            skeleton = cls(config, load_library_weights=False)
    except (ModelError, ConfigError):
        raise
    except Exception:  # e.g. a library module that computes values at construction: checked after building
        return
    found = {k: torch.empty(shape, device="meta") for k, shape in header.items()}
    problems = state_dict_mismatch(skeleton.state_dict(), found)
    if problems:
        raise ModelError(
            f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}: {problems}; refusing to build "
            "a model its weights do not fit (save_pretrained writes both)"
        )


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local model folder, or a hub id's files downloaded (config, weights, assets); a path that
    is neither an existing folder nor a valid hub id fails naming it."""
    directory = Path(name_or_path)
    if directory.is_dir():
        return directory

    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise ModelFileMissing(f"{name_or_path}: no such model folder (and not a hub id)") from None
    try:
        return Path(
            snapshot_download(str(name_or_path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*/*"])
        )  # + assets
    except Exception as e:  # offline, unknown repository, no access
        raise ModelFileMissing(
            f"{name_or_path}: not a local folder, and the hub has no such model ({type(e).__name__}: {e})"
        ) from e


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """Describe missing, unexpected and wrongly shaped tensors ("" when `found` fits `expected`)."""

    def listing(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} (expected {list(expected[k].shape)}, found {list(found[k].shape)})"
        for k in set(expected) & set(found)
        if expected[k].shape != found[k].shape
    )
    parts = [
        f"{what}: {listing(names)}"
        for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", shapes))
        if names
    ]
    return "; ".join(parts)


def model_digest(model: str | os.PathLike) -> str | None:
    """sha256 of a model folder's weights (None for a hub id): a store knows which weights made it."""
    weights = Path(model) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
