"""omnivec: OmniVec-style multimodal learning: five modalities, one shared transformer backbone."""

from . import heads, modalities, pretrained  # noqa: F401  (fill the registries before any config is read)
from .config import BackboneConfig, HeadConfig, ModalityConfig, OmniVecConfig
from .embedding import embed_files
from .errors import ConfigError, DataError, InputError, ModelError
from .model import OmniVecModel, OmniVecOutput
from .variants import build_model, example_inputs, list_models, model_config, register_model
from .version import __version__

__all__ = [
    "__version__",
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
