"""omnivec: OmniVec-style multimodal learning: five modalities, one shared transformer backbone."""
from .config import BackboneConfig, HeadConfig, ModalityConfig, OmniVecConfig
from .embedding import embed_files
from .errors import ConfigError, DataError, InputError
from .model import (OmniVecModel, OmniVecOutput, build_model, example_inputs, list_models, model_config,
                    register_model)

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig", "ConfigError", "DataError", "HeadConfig", "embed_files", "InputError", "ModalityConfig", "OmniVecConfig",
    "OmniVecModel", "OmniVecOutput", "build_model", "example_inputs", "list_models", "model_config",
    "register_model",
]
