"""Convolutions with shared weights: Conv1D on ``(N, C, L)``, Conv2D on ``(N, C, H, W)``.

One small kernel is applied at every position, so the weight gradient is the sum over
positions. With the windows laid out as rows (im2col), ``cols`` of shape
``(N * positions, C * K)`` and ``W2 = W.reshape(O, C * K)``:

    forward   Y = cols @ W2.T + b              (one matmul for the whole batch)
    backward  dC/dW2   = delta.T @ cols        (sums over batch and positions)
              dC/db    = sum of delta over batch and positions
              dC/dcols = delta @ W2, added back into each window's input slice

Weights use PyTorch's layout: ``(out_channels, in_channels, *kernel)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from .._compat import check_same_place, namespace, ops, pad_axes, sum_axes
from ..backend import backend_of
from . import _windows
from .base import Layer


class _ConvND(Layer):
    dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] = 0, *,
                 bias: bool = True, init: str = "auto", dtype: str = "float32",
                 name: str | None = None):
        super().__init__(name=name)
        who = type(self).__name__
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _windows.as_tuple(kernel_size, self.dims, "kernel_size", who)
        self.stride = _windows.as_tuple(stride, self.dims, "stride", who)
        self.padding = _windows.as_tuple(padding, self.dims, "padding", who)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{who}: kernel_size and stride must be >= 1 and padding >= 0")
        self.use_bias, self.init, self.dtype = bool(bias), init, dtype
        self.weight = self._new_parameter("weight", self._weights(init), dtype)
        self.bias = (self._new_parameter("bias", np.zeros(self.out_channels), dtype)
                     if bias else None)
        self._cache: Any = None

    def _weights(self, init: str) -> np.ndarray:
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        return self._draw("glorot" if init == "auto" else init, shape)

    def reset(self, init: str) -> None:
        w = self.weight.value
        self.weight.value = backend_of(w).asarray(self._weights(init), dtype=w.dtype)

    def _check(self, x: Any) -> None:
        if x.ndim != 2 + self.dims or x.shape[1] != self.in_channels:
            layout = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
            raise ValueError(
                f"{self.label}: expected input {layout} with C = {self.in_channels} channels, "
                f"got shape {tuple(x.shape)}"
            )
        check_same_place(self, x, self.weight.value)

    def forward(self, x: Any, *, train: bool = True) -> Any:
        self._check(x)
        xp = namespace(x)
        fast = ops(xp).conv
        if fast is not None:  # the library's own convolution (torch)
            spatial = tuple(s + 2 * p for s, p in zip(x.shape[2:], self.padding, strict=True))
            _windows.check_fits(spatial, self.kernel_size, self, self.padding)
            self._cache = ("fast", x) if train else None
            return fast.conv_forward(x, self.weight.value,
                                     None if self.bias is None else self.bias.value,
                                     self.stride, self.padding)
        d, n, c = self.dims, x.shape[0], self.in_channels
        # Channels last, padded by concatenation (which also makes it contiguous): each
        # offset's slice is then (N, *out, C) with C innermost, and the windows stacked
        # as (N, *out, K, C) are already the rows of im2col, so the reshape is free.
        xl = pad_axes(xp, xp.permute_dims(x, (0, *range(2, 2 + d), 1)), self.padding, 1)
        outs, keys = _windows.plan(tuple(xl.shape[1:1 + d]), self.kernel_size, self.stride,
                                   self, self.padding, channels_last=True)
        positions = math.prod(outs)
        cols = xp.reshape(xp.stack([xl[k] for k in keys], axis=-2),
                          (n * positions, len(keys) * c))
        y = ops(xp).linear(xp, cols, self._w_rows(xp),
                           None if self.bias is None else self.bias.value)
        # back to (N, O, *out), copied so later layers see the usual contiguous layout
        y = xp.reshape(xp.permute_dims(xp.reshape(y, (n, *outs, self.out_channels)),
                                       (0, d + 1, *range(1, d + 1))),
                       (n, self.out_channels, *outs), copy=True)
        self._cache = (cols, tuple(xl.shape), outs, keys) if train else None
        return y

    def _w_rows(self, xp: Any) -> Any:
        """The weight as ``(O, K * C)``, columns in the (offset, channel) order of ``cols``."""
        d = self.dims
        W = xp.permute_dims(self.weight.value, (0, *range(2, 2 + d), 1))
        return xp.reshape(W, (self.out_channels, -1))

    def _param_grads(self, delta: Any) -> Any:
        """Accumulate dC/dW and dC/db; return delta as rows ``(N * P, O)``."""
        cols, _, outs, _ = self._require_cache(self._cache)
        xp = namespace(delta)
        d2 = xp.reshape(xp.permute_dims(delta, (0, *range(2, 2 + self.dims), 1)),
                        (delta.shape[0] * math.prod(outs), self.out_channels))
        k = self.kernel_size
        dW = xp.reshape(d2.T @ cols, (self.out_channels, *k, self.in_channels))
        self.weight.accumulate(xp.permute_dims(dW, (0, self.dims + 1, *range(1, self.dims + 1))))
        if self.bias is not None:  # in delta's own layout: far faster than over d2's rows
            self.bias.accumulate(sum_axes(xp, delta, (0, *range(2, 2 + self.dims))))
        return d2

    def _fast_backward(self, delta: Any, need_input: bool) -> Any:
        _, x = self._cache
        dx, dW, db = ops(namespace(delta)).conv.conv_backward(
            delta, x, self.weight.value, self.stride, self.padding, need_input,
            self.bias is not None)
        self.weight.accumulate(dW)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def backward_params(self, delta: Any) -> None:
        if isinstance(self._require_cache(self._cache)[0], str):
            self._fast_backward(delta, need_input=False)
        else:
            self._param_grads(delta)

    def backward(self, delta: Any) -> Any:
        if isinstance(self._require_cache(self._cache)[0], str):
            return self._fast_backward(delta, need_input=True)
        _, padded_shape, outs, keys = self._require_cache(self._cache)
        xp = namespace(delta)
        d, n, c = self.dims, delta.shape[0], self.in_channels
        d2 = self._param_grads(delta)
        # One small matmul per kernel offset gives that offset's input gradient as a
        # contiguous (N, *out, C) block; slicing one big (N, *out, K, C) product instead
        # leaves strided blocks that are several times slower to add back.
        w = self.weight.value
        parts = [xp.reshape(d2 @ w[(slice(None), slice(None), *offsets)], (n, *outs, c))
                 for offsets in itertools.product(*(range(k) for k in self.kernel_size))]
        dxl = _windows.scatter(xp, parts, padded_shape, keys,
                               _windows.overlapping(self.kernel_size, self.stride))
        dxpad = xp.permute_dims(dxl, (0, d + 1, *range(1, d + 1)))  # back to (N, C, ...)
        inner = (slice(None), slice(None)) + tuple(
            slice(p, n_pad - p) for p, n_pad in zip(self.padding, padded_shape[1:1 + d],
                                                    strict=True))
        return dxpad[inner] if any(self.padding) else dxpad

    def get_config(self) -> dict[str, Any]:
        k = self.kernel_size[0] if self.dims == 1 else list(self.kernel_size)
        s = self.stride[0] if self.dims == 1 else list(self.stride)
        p = self.padding[0] if self.dims == 1 else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": k, "stride": s, "padding": p, "bias": self.use_bias,
                "init": self.init, "dtype": self.dtype}


class Conv1D(_ConvND):
    """1-D convolution (cross-correlation, as PyTorch) on ``(N, C_in, L)``.

    Output ``(N, C_out, L_out)`` with ``L_out = (L + 2 padding - kernel) // stride + 1``;
    weight ``(C_out, C_in, kernel)``, bias ``(C_out,)``.
    """

    dims = 1


class Conv2D(_ConvND):
    """2-D convolution (cross-correlation, as PyTorch) on ``(N, C_in, H, W)``.

    ``kernel_size``, ``stride`` and ``padding`` are ints or ``(h, w)`` pairs; weight
    ``(C_out, C_in, kh, kw)``, output ``(N, C_out, H_out, W_out)``.
    """

    dims = 2
