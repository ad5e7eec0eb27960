"""Encoders that start from another library's checkpoint (timm, transformers), one family per file.

A modality's `pretrained: "FAMILY:SOURCE"` picks `ENCODERS["MODALITY/FAMILY"]` instead of the
modality's own encoder. Each wraps the library's model (`encoder.library`), feeds it omnivec's
model-ready inputs, drops masked tokens after the library's patch embedding, and hands the
library's output tokens to the shared backbone through an optional projection.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import ModalityConfig, check_pretrained
from ..registry import ENCODERS, MODALITIES


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


from . import hf_ast, hf_text, hf_videomae, hf_vit, timm_image, trunk  # noqa: E402,F401  (registers the families)
