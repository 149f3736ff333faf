"""The small primitives of the hot path, in standard array API calls only.

Layers, losses and optimizers call these through ``ops(xp)``. An adapter may return a
subclass that does the same math faster for its library (fused kernels, in-place
arithmetic); ``tests/test_ops.py`` checks every such fast path against this class.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from .. import _windows
from .._compat import pad_axes


class StandardOps:
    """The reference implementation of every primitive, for any array API namespace."""

    #: Arrays of this library live in host memory, so a check that reads a value
    #: (``bool(...)``) is free there and may run at once; elsewhere it would stall.
    on_host = False

    # -- dense layers and activations ------------------------------------------------
    def linear(self, xp: Any, x: Any, W: Any, b: Any) -> Any:
        """``x @ W.T + b`` (``b`` may be None)."""
        y = x @ W.T
        return y if b is None else y + b

    def relu(self, xp: Any, x: Any) -> Any:
        return xp.maximum(x, 0.0)

    def relu_grad(self, xp: Any, dy: Any, y: Any) -> Any:
        """``dy`` where ``y > 0``, else 0."""
        return self.keep(xp, dy, y > 0)

    def keep(self, xp: Any, dy: Any, mask: Any) -> Any:
        """``dy`` where ``mask``, else 0 (multiplying by the mask beats ``where``)."""
        return dy * xp.astype(mask, dy.dtype)

    def sigmoid(self, xp: Any, x: Any) -> Any:
        """``1 / (1 + exp(-x))`` as ``0.5 tanh(x / 2) + 0.5``: no overflow anywhere."""
        return 0.5 * xp.tanh(0.5 * x) + 0.5

    def sigmoid_grad(self, xp: Any, dy: Any, y: Any) -> Any:
        return dy * (y * (1.0 - y))

    def softmax_xent(self, xp: Any, z: Any, y: Any) -> tuple[Any, Any]:
        """``(-sum(y * log softmax(z)) per row, softmax(z))`` for logits ``z`` (n, k)."""
        shifted = z - xp.max(z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        return -xp.sum(y * (shifted - xp.log(s)), axis=1), e / s

    def sum_axes(self, xp: Any, a: Any, axes: int | tuple[int, ...] | None) -> Any:
        """``sum(a, axis=axes)``."""
        return xp.sum(a, axis=axes)

    # -- updates: in place where the library allows; each returns the array to keep --
    def sub_scaled_(self, xp: Any, value: Any, lr: float, g: Any) -> Any:
        """``value - lr * g``."""
        value -= lr * g
        return value

    def scale_add_(self, xp: Any, a: Any, beta: float, g: Any, alpha: float = 1.0) -> Any:
        """``beta * a + alpha * g`` (momentum and moment averages)."""
        a *= beta
        a += g if alpha == 1.0 else alpha * g
        return a

    def add_at(self, xp: Any, target: Any, key: tuple, value: Any) -> Any:
        """``target[key] += value`` for a key of slices (each element named once, so an
        in-place add is exact; the standard has no scatter-add)."""
        target[key] += value
        return target

    def set_at(self, xp: Any, target: Any, key: tuple, value: Any) -> Any:
        """``target[key] = value``."""
        target[key] = value
        return target

    # -- convolution: (y, ctx) forward, (dx, dW, db) backward ------------------------
    def conv_forward(self, xp: Any, x: Any, W: Any, b: Any, stride: tuple[int, ...],
                     padding: tuple[int, ...]) -> tuple[Any, Any]:
        """Cross-correlation of ``x (N, C, *spatial)`` with ``W (O, C, *kernel)``, by im2col.

        Returns ``(y, ctx)``: ``y (N, O, *out)`` and what :meth:`conv_backward` needs.
        With the windows laid out as rows, ``cols (N * positions, K * C)``, and ``W2``
        the weight as ``(O, K * C)``: ``Y = cols @ W2.T + b``, one matmul for the batch.
        """
        d, n = W.ndim - 2, x.shape[0]
        o, c, kernel = W.shape[0], W.shape[1], tuple(W.shape[2:])
        # Channels last, padded by concatenation (which also makes it contiguous): each
        # offset's slice is then (N, *out, C) with C innermost, and the windows stacked
        # as (N, *out, K, C) are already the rows of im2col, so the reshape is free.
        xl = pad_axes(xp, xp.permute_dims(x, (0, *range(2, 2 + d), 1)), padding, 1)
        outs, keys = _windows.plan(tuple(xl.shape[1:1 + d]), kernel, stride, "convolution",
                                   padding, channels_last=True)
        cols = xp.reshape(xp.stack([xl[k] for k in keys], axis=-2),
                          (n * math.prod(outs), len(keys) * c))
        w_rows = xp.reshape(xp.permute_dims(W, (0, *range(2, 2 + d), 1)), (o, -1))
        y = self.linear(xp, cols, w_rows, b)
        # back to (N, O, *out), copied so later layers see the usual contiguous layout
        y = xp.reshape(xp.permute_dims(xp.reshape(y, (n, *outs, o)), (0, d + 1, *range(1, d + 1))),
                       (n, o, *outs), copy=True)
        return y, (cols, tuple(xl.shape), outs, keys, W, stride, padding, b is not None)

    def conv_backward(self, xp: Any, ctx: Any, dy: Any, need_input: bool
                      ) -> tuple[Any, Any, Any]:
        """``(dx or None, dW, db or None)`` for ``dy`` of shape ``(N, O, *out)``.

        ``dW2 = delta.T @ cols`` sums over batch and positions; ``db`` sums ``dy`` in its
        own layout; ``dx`` is ``delta @ W2``, added back into each window's input slice.
        """
        cols, padded_shape, outs, keys, W, stride, padding, has_bias = ctx
        d, n, o, c = W.ndim - 2, dy.shape[0], W.shape[0], W.shape[1]
        kernel = tuple(W.shape[2:])
        d2 = xp.reshape(xp.permute_dims(dy, (0, *range(2, 2 + d), 1)), (n * math.prod(outs), o))
        dW = xp.permute_dims(xp.reshape(d2.T @ cols, (o, *kernel, c)), (0, d + 1, *range(1, d + 1)))
        # in dy's own layout: far faster than summing over d2's rows
        db = self.sum_axes(xp, dy, (0, *range(2, 2 + d))) if has_bias else None
        if not need_input:
            return None, dW, db
        # One small matmul per kernel offset gives that offset's input gradient as a
        # contiguous (N, *out, C) block; slicing one big (N, *out, K, C) product instead
        # leaves strided blocks that are several times slower to add back.
        parts = (xp.reshape(d2 @ W[(slice(None), slice(None), *offsets)], (n, *outs, c))
                 for offsets in itertools.product(*(range(k) for k in kernel)))
        dxl = _windows.scatter(xp, self, parts, padded_shape, keys,
                               _windows.overlapping(kernel, stride))
        dxpad = xp.permute_dims(dxl, (0, d + 1, *range(1, d + 1)))  # back to (N, C, ...)
        if not any(padding):
            return dxpad, dW, db
        inner = (slice(None), slice(None)) + tuple(
            slice(p, m - p) for p, m in zip(padding, padded_shape[1:1 + d], strict=True))
        return dxpad[inner], dW, db
