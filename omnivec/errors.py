"""Errors users see: each names the key, modality or file at fault and what was expected."""


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type, or has an impossible value."""


class InputError(ValueError):
    """A tensor given to the model does not have the shape, dtype or values its modality expects."""


class DataError(ValueError):
    """A data file or manifest row cannot be used; the message starts with the file's path."""


class ModelError(ValueError):
    """A saved model (folder, hub id or weights file) cannot be loaded; the message names it."""


class ModelFileMissing(ModelError, FileNotFoundError):
    """A saved model's folder or one of its files does not exist."""


class TrainingError(RuntimeError):
    """Training cannot go on (a loss or weight became NaN or infinite); the message names the step
    and what was not finite, and the last good checkpoint is kept."""
