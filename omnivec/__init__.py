"""omnivec: OmniVec-style multimodal learning: five modalities, one shared transformer backbone."""

from . import encoders, heads, modalities  # noqa: F401  (fill the registries before any config is read)
from .config import BackboneConfig, HeadConfig, ModalityConfig, OmniVecConfig
from .embedding import embed_files
from .errors import ConfigError, DataError, InputError, ModelError
from .model import OmniVecModel, OmniVecOutput, build_model, example_inputs, list_models, model_config, register_model

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "DataError",
    "HeadConfig",
    "embed_files",
    "InputError",
    "ModalityConfig",
    "ModelError",
    "OmniVecConfig",
    "OmniVecModel",
    "OmniVecOutput",
    "build_model",
    "example_inputs",
    "list_models",
    "model_config",
    "register_model",
]
