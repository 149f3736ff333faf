"""Layers of several inputs: ``forward([x1, x2, ...])``, ``backward(dy) -> [dx1, ...]``."""

from __future__ import annotations

from typing import Any

from .. import _args
from .._compat import namespace
from .base import Layer


class Merge(Layer):
    """Base of the layers that join several inputs into one output."""

    multi_input = True


class Add(Merge):
    """Element-wise sum of inputs of equal shape (a residual connection).

    Backward hands every input the whole ``dy``: ``d(x1 + x2)/dx1 = 1``.
    """

    def forward(self, xs: list[Any], *, train: bool = True) -> Any:
        shapes = [tuple(x.shape) for x in xs]
        if len(set(shapes)) != 1:
            raise ValueError(f"{self.label}: inputs must have equal shapes, got {shapes}")
        self._n = len(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def backward(self, dy: Any) -> list[Any]:
        return [dy] * self._n


class Concat(Merge):
    """Join inputs along ``axis`` (1: features of ``(N, F)`` or channels of ``(N, C, ...)``).

    Backward cuts ``dy`` back into the inputs' slices.
    """

    def __init__(self, axis: int = 1, *, name: str | None = None):
        super().__init__(name=name)
        axis = _args.integer(axis, "axis", "Concat")
        if axis == 0:
            raise ValueError("Concat: axis 0 is the batch axis; join along axis >= 1")
        self.axis = axis
        self._sizes: list[int] = []

    def forward(self, xs: list[Any], *, train: bool = True) -> Any:
        ax = self.axis % xs[0].ndim
        rest = [tuple(s for i, s in enumerate(x.shape) if i != ax) for x in xs]
        if len(set(rest)) != 1 or len({x.ndim for x in xs}) != 1:
            raise ValueError(f"{self.label}: inputs must agree on every axis but {self.axis}, "
                             f"got shapes {[tuple(x.shape) for x in xs]}")
        self._sizes = [int(x.shape[ax]) for x in xs]
        return namespace(xs[0]).concat(xs, axis=ax)

    def backward(self, dy: Any) -> list[Any]:
        ax = self.axis % dy.ndim
        out, start = [], 0
        for size in self._sizes:
            key = tuple(slice(start, start + size) if i == ax else slice(None)
                        for i in range(dy.ndim))
            out.append(dy[key])
            start += size
        return out

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}
