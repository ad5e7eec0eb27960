"""Task heads, one file each, registered by name and built from a `HeadConfig`."""

from ..backbone import masked_mean
from . import action, classification, multi_label, summarization  # noqa: F401  (registers the heads)
from .base import TaskHead, register_head

__all__ = ["TaskHead", "masked_mean", "register_head"]
