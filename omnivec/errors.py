"""Errors users see: each names the key, modality or file at fault and what was expected; commands
(`omnivec`, the recipes) print them as one line `error: ...` (`exit_status`)."""

import sys
from collections.abc import Callable
from typing import Any


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


class CheckpointError(TrainingError):
    """A checkpoint cannot be read (a truncated or damaged file); the message names the checkpoint."""


USER_ERRORS = (ConfigError, DataError, ModelError, TrainingError)  # a command prints these, never a traceback


def exit_status(command: Callable[..., Any], *args: Any) -> int:
    """Run `command(*args)` (an `omnivec` command, or a recipe's `main`) -> the exit status: the
    command's own when it returns an int, else 0; 2 after printing an omnivec error (a bad setting,
    file or model, a diverged run) as one line `error: ...`."""
    try:
        status = command(*args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
