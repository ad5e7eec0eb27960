"""Task heads, one file each, registered by name and built from a `HeadConfig`."""
from . import classification  # noqa: F401  (registers the heads)
from .base import masked_mean, register_head

__all__ = ["masked_mean", "register_head"]
