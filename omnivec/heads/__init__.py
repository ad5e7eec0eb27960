"""Task heads, one file each, registered by name and built from a `HeadConfig`."""

from . import action, classification, multi_label, summarization  # noqa: F401  (registers the heads)
from .base import TaskHead, masked_mean, register_head

__all__ = ["TaskHead", "masked_mean", "register_head"]
