"""Pooling: summarise each window of neighbouring positions by its max or its mean.

The windows are strided slices of the input, one per kernel offset (see
``_windows``), so the max is a running ``maximum`` over those slices and the mean
their sum over K: element-wise work on whole arrays, no reduction over a short axis.
``MaxPool`` sends each window's gradient to the element that won it (the first one
on ties, as PyTorch); ``AvgPool`` shares it equally. Where windows overlap
(``stride < kernel_size``) their gradients add up.

``GlobalAvgPool1D``/``2D`` average each channel over all ``P`` positions:

    forward   y[n, c] = sum of x[n, c, ...] over the positions / P     (N, C)
    kept      the input's shape (training only)
    backward  dC/dx[n, c, ...] = dy[n, c] / P at every position
"""

from __future__ import annotations

import math
from typing import Any

from .. import _windows
from .._compat import namespace
from ..backends import ops
from .base import Layer


class _PoolND(Layer):
    dims = 0
    mode = ""

    def __init__(self, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None = None, *, name: str | None = None):
        super().__init__(name=name)
        who = type(self).__name__
        self.kernel_size = _windows.as_tuple(kernel_size, self.dims, "kernel_size", who)
        self.stride = (self.kernel_size if stride is None
                       else _windows.as_tuple(stride, self.dims, "stride", who))
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"{who}: kernel_size and stride must be >= 1")
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if x.ndim != 2 + self.dims:
            layout = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
            raise ValueError(f"{self.label}: expected input {layout}, got shape {tuple(x.shape)}")
        xp = namespace(x)
        _, keys = _windows.plan(tuple(x.shape[2:]), self.kernel_size, self.stride, self)
        y = x[keys[0]]
        for key in keys[1:]:
            y = xp.maximum(y, x[key]) if self.mode == "max" else y + x[key]
        if self.mode == "avg":
            y = y / len(keys)
        self._cache = (x, y, keys) if train else None
        return y

    def backward(self, dy: Any) -> Any:
        x, y, keys = self._require_cache(self._cache)
        xp = namespace(dy)
        if self.mode == "avg":
            share = dy / len(keys)
            parts = [share] * len(keys)
        else:
            parts = self._winner_grads(xp, x, y, dy, keys)
        return _windows.scatter(xp, ops(xp), parts, tuple(x.shape), keys,
                                _windows.overlapping(self.kernel_size, self.stride))

    @staticmethod
    def _winner_grads(xp: Any, x: Any, y: Any, dy: Any, keys: list[tuple]):
        """Per offset, ``dy`` where that offset holds its window's first maximum, else 0."""
        fast = ops(xp)
        free = None  # windows whose winner is not found yet
        for i, key in enumerate(keys):
            won = x[key] == y
            if free is not None:
                won = won & free
            if i < len(keys) - 1:
                free = ~won if free is None else free ^ won  # won lies inside free
            yield fast.keep(xp, dy, won)

    def get_config(self) -> dict[str, Any]:
        if self.dims == 1:
            return {"kernel_size": self.kernel_size[0], "stride": self.stride[0]}
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}


class MaxPool1D(_PoolND):
    """Max over windows of ``kernel_size`` along L; ``stride`` defaults to ``kernel_size``."""

    dims, mode = 1, "max"


class MaxPool2D(_PoolND):
    """Max over ``(kh, kw)`` windows of ``(N, C, H, W)``; ``stride`` defaults to the kernel."""

    dims, mode = 2, "max"


class AvgPool1D(_PoolND):
    """Mean over windows of ``kernel_size`` along L; ``stride`` defaults to ``kernel_size``."""

    dims, mode = 1, "avg"


class AvgPool2D(_PoolND):
    """Mean over ``(kh, kw)`` windows of ``(N, C, H, W)``; ``stride`` defaults to the kernel."""

    dims, mode = 2, "avg"


class _GlobalAvgPoolND(Layer):
    dims = 0

    def __init__(self, *, name: str | None = None):
        super().__init__(name=name)
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if x.ndim != 2 + self.dims:
            layout = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
            raise ValueError(f"{self.label}: expected input {layout}, got shape {tuple(x.shape)}")
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{self.label}: expected a real floating input, got dtype {x.dtype}")
        self._shape = tuple(x.shape) if train else None
        return xp.mean(x, axis=tuple(range(2, 2 + self.dims)))

    def backward(self, dy: Any) -> Any:
        shape = self._require_cache(self._shape)
        xp = namespace(dy)
        share = dy / math.prod(shape[2:])
        spread = xp.broadcast_to(xp.reshape(share, (*shape[:2], *(1,) * self.dims)), shape)
        return xp.asarray(spread, copy=True)  # a broadcast view may be read-only


class GlobalAvgPool1D(_GlobalAvgPoolND):
    """Mean of each channel over the whole length: ``(N, C, L) -> (N, C)``.

    Parameters
    ----------
    name : str, optional

    Shapes
    ------
    input ``(N, C, L)``; output ``(N, C)``. No parameters.
    """

    dims = 1


class GlobalAvgPool2D(_GlobalAvgPoolND):
    """Mean of each channel over the whole image: ``(N, C, H, W) -> (N, C)``.

    Parameters
    ----------
    name : str, optional

    Shapes
    ------
    input ``(N, C, H, W)``; output ``(N, C)``. No parameters.
    """

    dims = 2
