"""Encoders that start from another library's checkpoint (timm, transformers), one family per file.

A modality's `pretrained: "FAMILY:SOURCE"` picks `ENCODERS["MODALITY/FAMILY"]` instead of the
modality's own encoder. Each wraps the library's model (`encoder.library`), feeds it omnivec's
model-ready inputs, drops masked tokens after the library's patch embedding, and hands the
library's output tokens to the shared backbone through an optional projection.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModalityConfig
from ..errors import ConfigError
from ..registry import ENCODERS, MODALITIES


def register_encoder(modality: str, family: str) -> Callable:
    """Register the encoder (class or factory `(cfg, dim) -> ModalityEncoder`) of `family` for `modality`."""
    return ENCODERS.register(f"{modality}/{family}")


def check_pretrained(modality: str, cfg: ModalityConfig) -> None:
    """Fail at config time when `cfg.pretrained` names a family this modality cannot load."""
    family = cfg.pretrained.partition(":")[0]
    if cfg.pretrained and f"{modality}/{family}" not in ENCODERS:
        available = [name.split("/")[1] + ":" for name in ENCODERS.names() if name.startswith(modality + "/")]
        raise ConfigError(f"modalities.{modality}.pretrained: expected one of {available or ['(none)']} "
                          f"followed by a model name or path, got {cfg.pretrained!r}")


def build_encoder(modality: str, cfg: ModalityConfig, dim: int) -> nn.Module:
    """The encoder of `modality`: omnivec's own, or the library encoder `cfg.pretrained` names
    (architecture only; `OmniVecModel` loads the library weights after initialising the rest)."""
    if not cfg.pretrained:
        return MODALITIES.get(modality)(cfg, dim)
    check_pretrained(modality, cfg)
    return ENCODERS.get(f"{modality}/{cfg.pretrained.partition(':')[0]}")(cfg, dim)


from . import hf_ast, hf_text, hf_videomae, hf_vit, timm_image  # noqa: E402,F401  (registers the families)
