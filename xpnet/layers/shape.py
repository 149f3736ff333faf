"""Layers that only rearrange: Flatten."""

from __future__ import annotations

from typing import Any

from .._compat import namespace
from .base import Layer


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)``; backward restores the shape."""

    def __init__(self, *, name: str | None = None):
        super().__init__(name=name)
        self._shape: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        self._shape = tuple(x.shape) if train else None
        return namespace(x).reshape(x, (x.shape[0], -1))

    def backward(self, dy: Any) -> Any:
        return namespace(dy).reshape(dy, self._require_cache(self._shape))
