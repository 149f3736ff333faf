"""Pooling: summarise each window of neighbouring positions by its max or its mean.

The windows are strided slices of the input, one per kernel offset (see
``_windows``), so the max is a running ``maximum`` over those slices and the mean
their sum over K: element-wise work on whole arrays, no reduction over a short axis.
``MaxPool`` sends each window's gradient to the element that won it (the first one
on ties, as PyTorch); ``AvgPool`` shares it equally. Where windows overlap
(``stride < kernel_size``) their gradients add up. The arithmetic is the backend's
``pool_forward``/``pool_backward`` (``xpnet.backends.standard``; NumPy keeps the
winning offset of each window instead of the input):

    forward   y = max (or mean) over the K offsets' slices x_k
    kept      max: the input and y (NumPy: each window's winning offset k*, one byte
              per output); avg: the input's shape; only when train is true
    backward  max: dC/dx_k = dy where offset k won its window (k = k*), else 0
              avg: dC/dx_k = dy / K
              each added into its slice of zeros(x.shape)

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
        _windows.check_fits(tuple(x.shape[2:]), self.kernel_size, self)
        xp = namespace(x)
        y, ctx = ops(xp).pool_forward(xp, x, self.kernel_size, self.stride, self.mode, train)
        self._cache = ctx
        return y

    def backward(self, dy: Any) -> Any:
        ctx = self._require_cache(self._cache)
        xp = namespace(dy)
        return ops(xp).pool_backward(xp, ctx, dy)

    def get_config(self) -> dict[str, Any]:
        if self.dims == 1:
            return {"kernel_size": self.kernel_size[0], "stride": self.stride[0]}
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}


class MaxPool1D(_PoolND):
    """Max over windows of ``kernel_size`` along L of ``(N, C, L)`` (as PyTorch's
    ``MaxPool1d``, no padding).

    Parameters
    ----------
    kernel_size : int
    stride : int, optional
        Defaults to ``kernel_size`` (windows side by side).
    name : str, optional

    Shapes
    ------
    input ``(N, C, L)``; output ``(N, C, L_out)`` with
    ``L_out = (L - kernel_size) // stride + 1``. No parameters.
    """

    dims, mode = 1, "max"


class MaxPool2D(_PoolND):
    """Max over ``(kh, kw)`` windows of ``(N, C, H, W)`` (as PyTorch's
    ``MaxPool2d``, no padding).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (windows side by side).
    name : str, optional

    Shapes
    ------
    input ``(N, C, H, W)``; output ``(N, C, H_out, W_out)`` with, per axis,
    ``H_out = (H - kh) // stride + 1``. No parameters.
    """

    dims, mode = 2, "max"


class AvgPool1D(_PoolND):
    """Mean over windows of ``kernel_size`` along L of ``(N, C, L)`` (as PyTorch's
    ``AvgPool1d``, no padding).

    Parameters
    ----------
    kernel_size : int
    stride : int, optional
        Defaults to ``kernel_size`` (windows side by side).
    name : str, optional

    Shapes
    ------
    input ``(N, C, L)``; output ``(N, C, L_out)`` with
    ``L_out = (L - kernel_size) // stride + 1``. No parameters.
    """

    dims, mode = 1, "avg"


class AvgPool2D(_PoolND):
    """Mean over ``(kh, kw)`` windows of ``(N, C, H, W)`` (as PyTorch's
    ``AvgPool2d``, no padding).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (windows side by side).
    name : str, optional

    Shapes
    ------
    input ``(N, C, H, W)``; output ``(N, C, H_out, W_out)`` with, per axis,
    ``H_out = (H - kh) // stride + 1``. No parameters.
    """

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
