"""Name -> class registries: the one place models, modalities and heads are looked up."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders. `@REG.register("name")` adds one, `REG.get("name")` finds it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._items)}.{hint}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


MODELS: Registry = Registry("model")
MODALITIES: Registry = Registry("modality")
HEADS: Registry = Registry("head")
ENCODERS: Registry = Registry("pretrained encoder")  # "MODALITY/FAMILY" -> encoder (omnivec/encoders)
BACKBONES: Registry = Registry(
    "pretrained backbone"
)  # "timm" | "hf" -> reader of a ViT checkpoint (pretrained/vit_backbone.py)
