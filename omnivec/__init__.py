"""omnivec: OmniVec-style multimodal learning: five modalities, one shared transformer backbone."""
from .config import BackboneConfig, HeadConfig, ModalityConfig, OmniVecConfig
from .errors import ConfigError, InputError
from .model import (OmniVecModel, OmniVecOutput, build_model, example_inputs, list_models, model_config,
                    register_model)

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig", "ConfigError", "HeadConfig", "InputError", "ModalityConfig", "OmniVecConfig",
    "OmniVecModel", "OmniVecOutput", "build_model", "example_inputs", "list_models", "model_config",
    "register_model",
]
