"""One file per modality, each registering its encoder, config and transform by name."""

from . import audio, image, point_cloud, text, video  # noqa: F401  (registers the modalities)
from .base import ModalityEncoder, register_modality

__all__ = ["ModalityEncoder", "register_modality"]
