"""Library encoders: registering and building them, and loading another library's weights into an
omnivec encoder, with a report of what happened."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModalityConfig, check_pretrained
from ..errors import ConfigError
from ..registry import ENCODERS, MODALITIES


@dataclass
class LoadReport:
    """Which of an encoder's tensors came from the checkpoint, which were resized to the configured
    input size (position embeddings), which are new (initialised here) and which checkpoint tensors
    went unused (e.g. a classifier); and what the checkpoint lacked (`missing`: tensors the model
    takes from it, in the library's names) or could not fit (`mismatched`), both initialised here
    under `strict: false` and refused otherwise (`check_complete`)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)  # "name [old shape] -> [new shape]"
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name [checkpoint shape] -> [model shape]"

    def summary(self) -> str:
        def some(names: list[str]) -> str:
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""

        return (
            f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.resized)} resized{some(self.resized)}, "
            f"{len(self.missing)} missing{some(self.missing)}, {len(self.mismatched)} mismatched"
            f"{some(self.mismatched)}, {len(self.new)} new{some(self.new)}, "
            f"{len(self.unused)} unused{some(self.unused)}"
        )

    def check_complete(self, strict: bool, key: str) -> None:
        """Under `strict`, a `ConfigError` naming the first tensor (config `key`, e.g. `backbone`) the
        checkpoint could not fit (with both shapes) or lacks; nothing is started from random values
        unless `KEY.strict: false` says so."""
        if not strict or not (self.mismatched or self.missing):
            return
        names = self.mismatched or self.missing
        if self.mismatched:
            name, _, shapes = names[0].partition(" ")
            checkpoint, _, model = shapes.partition(" -> ")
            more = f" ({len(names) - 1} more tensors do not fit either)" if len(names) > 1 else ""
            what = (
                f"tensor {name!r} has shape {checkpoint} in the checkpoint, the configured model expects {model}{more}"
            )
        else:
            what = f"the checkpoint lacks {len(names)} tensors the model takes from it ({some_names(names)})"
        raise ConfigError(
            f"{key}.pretrained: {self.source}: {what}; use a checkpoint of this architecture, or set "
            f"{key}.strict: false to start them from random values"
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class Source:
    """A checkpoint's tensors, the names it lacked or held in another shape (the library
    initialised them), the names the library dropped while reading it (e.g. a classifier), and
    its config."""

    state: dict[str, torch.Tensor]
    absent: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    config: Any = None
    mismatched: dict[str, str] = field(default_factory=dict)  # name -> "[checkpoint shape] -> [library shape]"


def some_names(names: list[str], shown: int = 4) -> str:
    """The first `shown` of `names` and how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def refused_pickle(where: str, error: Exception) -> ConfigError:
    """The error for a pickled checkpoint that `torch.load(weights_only=True)` refused: what it held,
    and the safe way on (safetensors), never the advice to unpickle it."""
    detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
    return ConfigError(
        f"{where}: not a weights-only PyTorch checkpoint, so it was refused and nothing in it ran"
        f"{f' ({detail})' if detail else ''}; convert it once, where you trust it, to safetensors "
        "(save_pretrained(..., safe_serialization=True) or safetensors.torch.save_file)"
    )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file -> state dict: safetensors, or a PyTorch file read with `weights_only=True`
    (no pickled code runs); a `state_dict` / `model` entry and `module.` prefixes are unwrapped."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from timm.models import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as e:  # empty, truncated, or not safetensors at all
            raise ConfigError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_pickle(str(path), e) from e
    except Exception as e:  # not a checkpoint at all
        raise ConfigError(f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return clean_state_dict(state)


class LibraryEncoder:
    """Mixin for encoders that wrap another library's model in `self.library`.

    Subclasses implement `source()` (read the checkpoint) and, where the input size can differ from
    the checkpoint's, `resize()` (interpolate position embeddings)."""

    library: nn.Module

    def source(self) -> Source:
        raise NotImplementedError

    def resize(self, key: str, tensor: torch.Tensor, shape: torch.Size, source: Source) -> torch.Tensor | None:
        """The checkpoint tensor `key` fitted to `shape`, or None when it cannot be."""
        return None

    def load_pretrained(self) -> LoadReport:
        """Copy the checkpoint's weights into `self.library` and report what happened; a tensor the
        checkpoint lacks or cannot fit stops the build unless `strict: false` (`check_complete`)."""
        source = self.source()
        report = LoadReport(self.cfg.pretrained)
        target = self.library.state_dict()
        state = {}
        for key, value in target.items():
            if key in source.mismatched:  # (the library left it initialised)
                report.mismatched.append(f"{key} {source.mismatched[key]}")
                report.new.append(key)
                continue
            if key not in source.state or key in source.absent:
                report.new.append(key)
                if not key.endswith("num_batches_tracked"):  # (a BatchNorm counter, not a weight)
                    report.missing.append(key)
                continue
            tensor = source.state[key]
            if tensor.shape != value.shape:
                fitted = self.resize(key, tensor, value.shape, source)
                if fitted is None:
                    report.mismatched.append(f"{key} {list(tensor.shape)} -> {list(value.shape)}")
                    report.new.append(key)
                    continue
                report.resized.append(f"{key} {list(tensor.shape)} -> {list(value.shape)}")
                tensor = fitted
            else:
                report.loaded.append(key)
            state[key] = tensor.to(value.dtype)
        report.check_complete(self.cfg.strict, f"modalities.{self.name}")
        self.library.load_state_dict(state, strict=False)
        report.new += [name for name, _ in self.named_parameters() if not name.startswith("library.")]
        report.unused = sorted((set(source.state) - source.absent - set(target)) | set(source.dropped))
        return report


def register_encoder(modality: str, family: str) -> Callable:
    """Register the encoder (class or factory `(cfg, dim) -> ModalityEncoder`) of `family` for `modality`."""
    return ENCODERS.register(f"{modality}/{family}")


def build_encoder(modality: str, cfg: ModalityConfig, dim: int) -> nn.Module:
    """The encoder of `modality`: omnivec's own, or the library encoder `cfg.pretrained` names
    (architecture only; `OmniVecModel` loads the library weights after initialising the rest)."""
    if not cfg.pretrained:
        return MODALITIES.get(modality)(cfg, dim)
    check_pretrained(modality, cfg)
    return ENCODERS.get(f"{modality}/{cfg.pretrained.partition(':')[0]}")(cfg, dim)
