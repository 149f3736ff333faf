"""Layers that only rearrange: Flatten, Reshape."""

from __future__ import annotations

import math
from typing import Any

from .. import _args
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


class Reshape(Layer):
    """``(N, ...) -> (N, *shape)``, e.g. ``Reshape((1, 40))`` turns features into one channel."""

    def __init__(self, shape: tuple[int, ...], *, name: str | None = None):
        super().__init__(name=name)
        self.shape = tuple(_args.integer(d, "shape", "Reshape", minimum=1) for d in shape)
        self._shape: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if math.prod(x.shape[1:]) != math.prod(self.shape):
            raise ValueError(f"{self.label}: cannot reshape {tuple(x.shape)} to "
                             f"(N, {', '.join(map(str, self.shape))})")
        self._shape = tuple(x.shape) if train else None
        return namespace(x).reshape(x, (x.shape[0], *self.shape))

    def backward(self, dy: Any) -> Any:
        return namespace(dy).reshape(dy, self._require_cache(self._shape))

    def get_config(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}
