"""Pooling: summarise each window of neighbouring positions by its max or its mean.

``MaxPool`` sends the gradient of a window to the element that won it (the first one
on ties, as PyTorch); ``AvgPool`` shares it equally. Windows overlap when
``stride < kernel_size``, and their gradients then add up.
"""

from __future__ import annotations

from typing import Any

from .._compat import device, namespace
from . import _windows
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
        _, keys = _windows.plan(tuple(x.shape[2:]), self.kernel_size, self.stride, self.label)
        win = _windows.gather(xp, x, keys)                       # (N, C, *out, K)
        if self.mode == "max":
            winner = xp.argmax(win, axis=-1)
            y = xp.max(win, axis=-1)
            if train:
                k = xp.arange(len(keys), dtype=winner.dtype, device=device(winner))
                self._cache = (xp.astype(winner[..., None] == k, x.dtype), tuple(x.shape), keys)
        else:
            y = xp.mean(win, axis=-1)
            if train:
                self._cache = (None, tuple(x.shape), keys)
        if not train:
            self._cache = None
        return y

    def backward(self, dy: Any) -> Any:
        onehot, shape, keys = self._require_cache(self._cache)
        xp = namespace(dy)
        if onehot is not None:
            dwin = onehot * dy[..., None]
        else:
            dwin = xp.broadcast_to(dy[..., None] / len(keys), (*dy.shape, len(keys)))
        return _windows.scatter(xp, dwin, shape, keys)

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
