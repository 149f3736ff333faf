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
from .._compat import device, erf, pad_axes

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


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

    def tanh_grad(self, xp: Any, dy: Any, y: Any) -> Any:
        """``dy * (1 - y^2)`` for ``y = tanh(x)``."""
        return dy * (1.0 - y * y)

    def silu(self, xp: Any, x: Any) -> tuple[Any, Any]:
        """``(y, ctx)``: ``y = x sigmoid(x)`` and what :meth:`silu_grad` needs
        (here ``(x, sigmoid(x))``)."""
        s = self.sigmoid(xp, x)
        return x * s, (x, s)

    def silu_grad(self, xp: Any, dy: Any, ctx: Any) -> Any:
        """``dy * s (1 + x (1 - s))`` with ``s = sigmoid(x)``; ``ctx`` from :meth:`silu`."""
        x, s = ctx
        return dy * (s * (1.0 + x * (1.0 - s)))

    def softmax_xent(self, xp: Any, z: Any, y: Any) -> tuple[Any, Any]:
        """``(-sum(y * log softmax(z)) per row, ctx)`` for logits ``z`` (n, k) and target
        rows ``y`` (n, k); ``ctx`` is what :meth:`softmax_xent_grad` needs (here
        ``softmax(z)``)."""
        shifted = z - xp.max(z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        return -xp.sum(y * (shifted - xp.log(s)), axis=1), e / s

    def softmax_xent_grad(self, xp: Any, z: Any, y: Any, ctx: Any, n: int) -> Any:
        """``(softmax(z) - y) / n``: the gradient of the mean of :meth:`softmax_xent`'s
        rows over ``n`` (``ctx`` from that call on the same ``z`` and ``y``)."""
        return (ctx - y) / n

    def sum_axes(self, xp: Any, a: Any, axes: int | tuple[int, ...] | None) -> Any:
        """``sum(a, axis=axes)``."""
        return xp.sum(a, axis=axes)

    def erf(self, xp: Any, x: Any) -> Any:
        """The error function, element-wise (the standard has none): xpnet's own in
        standard calls, :func:`xpnet._compat.erf`; adapters use their library's."""
        return erf(xp, x)

    def gelu(self, xp: Any, x: Any) -> tuple[Any, Any]:
        """``(y, ctx)``: exact GELU ``y = x Phi(x)``, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``,
        and what :meth:`gelu_grad` needs."""
        phi = 0.5 * (1.0 + self.erf(xp, _SQRT_HALF * x))
        return x * phi, (x, phi, None)

    def gelu_grad(self, xp: Any, dy: Any, ctx: Any) -> Any:
        """``dy * (Phi(x) + x phi(x))`` with ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``;
        ``ctx[2]``, when given, is ``exp(-x^2 / 2)`` already computed by forward."""
        x, phi, gauss = ctx
        if gauss is None:
            gauss = xp.exp(-0.5 * (x * x))
        return dy * (phi + x * (_INV_SQRT_2PI * gauss))

    # -- layer normalisation over the last axis -------------------------------------
    def layer_norm(self, xp: Any, x: Any, weight: Any, bias: Any, eps: float
                   ) -> tuple[Any, Any]:
        """``(y, ctx)``: ``xhat = (x - mean) / sqrt(var + eps)`` over the last axis (biased
        variance), ``y = xhat * weight + bias`` (either may be None), and what
        :meth:`layer_norm_grad` needs (here ``(xhat, 1 / sqrt(var + eps))``)."""
        centred = x - xp.mean(x, axis=-1, keepdims=True)
        inv = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + eps)
        xhat = centred * inv
        y = xhat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y, (xhat, inv)

    def layer_norm_grad(self, xp: Any, dy: Any, ctx: Any, weight: Any, bias: Any
                        ) -> tuple[Any, Any, Any]:
        """``(dx, dweight, dbias)`` (None where the parameter is) for :meth:`layer_norm`'s
        ``ctx``; with ``D`` features and ``g = dy * weight``: ``dx = inv / D * (D g -
        sum_D(g) - xhat sum_D(g xhat))``, ``dweight = sum of dy * xhat`` and ``dbias = sum
        of dy`` over the leading axes."""
        xhat, inv = ctx
        d = xhat.shape[-1]
        lead = tuple(range(dy.ndim - 1))
        g = dy if weight is None else dy * weight
        dx = (inv / d) * (d * g - xp.sum(g, axis=-1, keepdims=True)
                          - xhat * xp.sum(g * xhat, axis=-1, keepdims=True))
        dweight = None if weight is None else xp.sum(dy * xhat, axis=lead)
        dbias = None if bias is None else xp.sum(dy, axis=lead)
        return dx, dweight, dbias

    # -- scatter-add: embedding gradients ------------------------------------------------
    #: ``rows_add`` sums by a one-hot matmul while ``n_rows * len(index)`` is at most
    #: this, and by sorting otherwise.
    rows_add_onehot_limit = 1 << 20

    def rows_add(self, xp: Any, n_rows: int, index: Any, values: Any) -> Any:
        """``out (n_rows, D)`` with ``out[r] = sum of values[i] over i where index[i] == r``.

        ``index`` is 1-D of an integer dtype, every entry in ``[0, n_rows)``; ``values`` is
        ``(len(index), D)``. Repeated indices sum (an embedding's gradient). The standard
        has no scatter-add, so: a one-hot matmul ``onehot(index) @ values`` when
        ``n_rows * len(index) <= rows_add_onehot_limit``, else a segment sum after a
        stable sort (:meth:`rows_add_sorted`). Adapters use their library's scatter-add.
        """
        if n_rows * index.shape[0] <= self.rows_add_onehot_limit:
            return self.rows_add_onehot(xp, n_rows, index, values)
        return self.rows_add_sorted(xp, n_rows, index, values)

    def rows_add_onehot(self, xp: Any, n_rows: int, index: Any, values: Any) -> Any:
        """:meth:`rows_add` as one matmul with the ``(n_rows, m)`` one-hot matrix (each
        value times exactly 1.0 or 0.0; a NaN or inf in ``values`` spreads to every row)."""
        rows = xp.arange(n_rows, dtype=index.dtype, device=device(index))
        onehot = xp.astype(rows[:, None] == index[None, :], values.dtype)
        return onehot @ values

    def rows_add_sorted(self, xp: Any, n_rows: int, index: Any, values: Any) -> Any:
        """:meth:`rows_add` in ``O(m D log m)``, for large ``n_rows``.

        A stable sort makes each row's entries contiguous; a segmented inclusive scan
        (log2(m) doubling steps: ``v[i] += v[i - s]`` where both have the same index,
        which, the keys being sorted, means the whole stretch between them does) leaves
        each segment's sum, added pairwise, at its last entry; ``searchsorted`` finds
        that entry for every row, and rows no index names get 0.
        """
        m, width = index.shape[0], values.shape[1]
        dev = device(index)
        if m == 0:
            return xp.zeros((n_rows, width), dtype=values.dtype, device=dev)
        order = xp.argsort(index, stable=True)
        keys = xp.take(index, order)
        v = xp.take(values, order, axis=0)
        step = 1
        while step < m:  # a bound from the shape, never from the values
            same = (keys[step:] == keys[:-step])[:, None]
            rest = v[step:, ...]
            v = xp.concat([v[:step, ...], xp.where(same, rest + v[:-step, ...], rest)], axis=0)
            step *= 2
        rows = xp.arange(n_rows, dtype=index.dtype, device=dev)
        end = xp.searchsorted(keys, rows, side="right")
        named = (end > xp.searchsorted(keys, rows, side="left"))[:, None]
        last = xp.take(v, xp.maximum(end - 1, 0), axis=0)
        return xp.where(named, last, xp.zeros_like(last))

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

    def sgd_update_(self, xp: Any, value: Any, grad: Any, buf: Any, lr: Any, *,
                    momentum: float = 0.0, nesterov: bool = False,
                    weight_decay: float = 0.0) -> tuple[Any, Any]:
        """One SGD step (:class:`xpnet.optim.SGD`); returns ``(value, buf)`` to keep.

        ``g = grad + weight_decay * value``; with momentum ``buf = momentum * buf + g``
        (``buf = g`` when ``buf`` is None) and ``g = buf``, or ``g + momentum * buf``
        with ``nesterov``; then ``value - lr * g``. ``lr`` is a float or a 0-d array;
        without momentum ``buf`` comes back as given.
        """
        g = grad
        if weight_decay:
            g = g + weight_decay * value
        if momentum:
            buf = (xp.asarray(g, copy=True) if buf is None
                   else self.scale_add_(xp, buf, momentum, g))
            g = g + momentum * buf if nesterov else buf
        return self.sub_scaled_(xp, value, lr, g), buf

    def adam_update_(self, xp: Any, value: Any, grad: Any, m: Any, v: Any, decay: Any,
                     step: Any, unbias: Any, *, betas: tuple[float, float], eps: float,
                     weight_decay: float = 0.0, decoupled: bool = False
                     ) -> tuple[Any, Any, Any]:
        """One Adam/AdamW step (:class:`xpnet.optim.Adam`); returns ``(value, m, v)``.

        ``decay, step, unbias`` are ``Adam.coefficients``: ``lr * wd``,
        ``lr / (1 - b1^t)`` and ``1 / sqrt(1 - b2^t)``, floats or 0-d arrays. With
        ``decoupled`` (AdamW) ``value -= decay * value`` first, else the gradient gets
        ``weight_decay * value``; ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``
        (from zero when None), ``value -= step * m / (sqrt(v) * unbias + eps)``.
        """
        b1, b2 = betas
        g = grad
        if weight_decay and decoupled:
            value = self.sub_scaled_(xp, value, decay, value)
        elif weight_decay:
            g = g + weight_decay * value
        if m is None:
            m, v = (1 - b1) * g, (1 - b2) * (g * g)
        else:
            m = self.scale_add_(xp, m, b1, g, 1 - b1)
            v = self.scale_add_(xp, v, b2, g * g, 1 - b2)
        denom = xp.sqrt(v) * unbias + eps
        return self.sub_scaled_(xp, value, step, m / denom), m, v

    def split_rows(self, xp: Any, a: Any, size: int) -> list[Any]:
        """``[a[s:s + size] for s in range(0, n, size)]``: an epoch's batches (the last
        may be smaller)."""
        n = int(a.shape[0])
        return [a[s:min(s + size, n), ...] for s in range(0, n, size)]

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
                     padding: tuple[int, ...], dilation: tuple[int, ...] | None = None,
                     groups: int = 1) -> tuple[Any, Any]:
        """Cross-correlation of ``x (N, C, *spatial)`` with ``W (O, C / groups, *kernel)``,
        by im2col.

        Returns ``(y, ctx)``: ``y (N, O, *out)`` and what :meth:`conv_backward` needs.
        With the windows laid out as rows, ``cols (N * positions, K * C)``, and ``W2``
        the weight as ``(O, K * C)``: ``Y = cols @ W2.T + b``, one matmul for the batch.
        ``dilation`` (per axis, None for 1) spaces the kernel's taps: it only moves the
        slices. With ``groups`` G the channels split into G groups of ``C / G`` inputs
        and ``O / G`` outputs, and the G products are one batched matmul
        ``(G, M, K C/G) @ (G, K C/G, O/G)`` (:meth:`_conv_forward_grouped`).
        """
        if groups != 1:
            return self._conv_forward_grouped(xp, x, W, b, stride, padding, dilation, groups)
        d, n = W.ndim - 2, x.shape[0]
        o, c, kernel = W.shape[0], W.shape[1], tuple(W.shape[2:])
        # Channels last, padded by concatenation (which also makes it contiguous): each
        # offset's slice is then (N, *out, C) with C innermost, and the windows stacked
        # as (N, *out, K, C) are already the rows of im2col, so the reshape is free.
        xl = pad_axes(xp, xp.permute_dims(x, (0, *range(2, 2 + d), 1)), padding, 1)
        outs, keys = _windows.plan(tuple(xl.shape[1:1 + d]), kernel, stride, "convolution",
                                   padding, channels_last=True, dilation=dilation)
        cols = xp.reshape(xp.stack([xl[k] for k in keys], axis=-2),
                          (n * math.prod(outs), len(keys) * c))
        w_rows = xp.reshape(xp.permute_dims(W, (0, *range(2, 2 + d), 1)), (o, -1))
        y = self.linear(xp, cols, w_rows, b)
        # back to (N, O, *out), copied so later layers see the usual contiguous layout
        y = xp.reshape(xp.permute_dims(xp.reshape(y, (n, *outs, o)), (0, d + 1, *range(1, d + 1))),
                       (n, o, *outs), copy=True)
        return y, (cols, tuple(xl.shape), outs, keys, W, stride, padding, b is not None,
                   dilation, 1)

    def _conv_forward_grouped(self, xp: Any, x: Any, W: Any, b: Any, stride: tuple[int, ...],
                              padding: tuple[int, ...], dilation: tuple[int, ...] | None,
                              groups: int) -> tuple[Any, Any]:
        """:meth:`conv_forward` for ``groups > 1``: the input as ``(G, N, *spatial, C/G)``
        (groups leading, each group's channels last), so the stacked windows reshape
        for free to ``cols (G, N * positions, K * C/G)``, one row block per group."""
        d, n, g = W.ndim - 2, x.shape[0], groups
        o, cg, kernel = W.shape[0], W.shape[1], tuple(W.shape[2:])
        og = o // g
        xg = xp.reshape(x, (n, g, cg, *x.shape[2:]))
        xg = pad_axes(xp, xp.permute_dims(xg, (1, 0, *range(3, 3 + d), 2)), padding, 2)
        outs, keys = _windows.plan(tuple(xg.shape[2:2 + d]), kernel, stride, "convolution",
                                   padding, channels_last=True, dilation=dilation)
        keys = [(slice(None), *key) for key in keys]  # every group
        cols = xp.reshape(xp.stack([xg[k] for k in keys], axis=-2),
                          (g, n * math.prod(outs), len(keys) * cg))
        # W (O, C/G, *kernel) -> (G, O/G, *kernel, C/G) -> (G, O/G, K * C/G), as cols' rows
        w_rows = xp.permute_dims(xp.reshape(W, (g, og, cg, *kernel)), (0, 1, *range(3, 3 + d), 2))
        w_rows = xp.reshape(w_rows, (g, og, -1))
        y = cols @ xp.permute_dims(w_rows, (0, 2, 1))  # (G, M, O/G)
        if b is not None:
            y = y + xp.reshape(b, (g, 1, og))
        # (G, N, *out, O/G) -> (N, G, O/G, *out) = (N, O, *out), contiguous
        y = xp.reshape(xp.permute_dims(xp.reshape(y, (g, n, *outs, og)),
                                       (1, 0, d + 2, *range(2, 2 + d))),
                       (n, o, *outs), copy=True)
        return y, (cols, tuple(xg.shape), outs, keys, W, stride, padding, b is not None,
                   dilation, g)

    def conv_backward(self, xp: Any, ctx: Any, dy: Any, need_input: bool
                      ) -> tuple[Any, Any, Any]:
        """``(dx or None, dW, db or None)`` for ``dy`` of shape ``(N, O, *out)``.

        ``dW2 = delta.T @ cols`` sums over batch and positions; ``db`` sums ``dy`` in its
        own layout; ``dx`` is ``delta @ W2``, added back into each window's input slice
        (per group, batched over groups, when ``groups > 1``).
        """
        cols, padded_shape, outs, keys, W, stride, padding, has_bias, dilation, groups = ctx
        if groups != 1:
            return self._conv_backward_grouped(xp, ctx, dy, need_input)
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
                               _windows.overlapping(kernel, stride, dilation))
        dxpad = xp.permute_dims(dxl, (0, d + 1, *range(1, d + 1)))  # back to (N, C, ...)
        return _unpad(dxpad, padding), dW, db

    def _conv_backward_grouped(self, xp: Any, ctx: Any, dy: Any, need_input: bool
                               ) -> tuple[Any, Any, Any]:
        """:meth:`conv_backward` for ``groups > 1``, each matmul batched over groups."""
        cols, padded_shape, outs, keys, W, stride, padding, has_bias, dilation, g = ctx
        d, n, o, cg = W.ndim - 2, dy.shape[0], W.shape[0], W.shape[1]
        og, kernel = o // g, tuple(W.shape[2:])
        # (N, O, *out) -> (G, N, *out, O/G) -> (G, M, O/G)
        d2 = xp.permute_dims(xp.reshape(dy, (n, g, og, *outs)), (1, 0, *range(3, 3 + d), 2))
        d2 = xp.reshape(d2, (g, n * math.prod(outs), og))
        dW = xp.reshape(xp.permute_dims(d2, (0, 2, 1)) @ cols, (g, og, *kernel, cg))
        dW = xp.reshape(xp.permute_dims(dW, (0, 1, d + 2, *range(2, 2 + d))), tuple(W.shape))
        db = self.sum_axes(xp, dy, (0, *range(2, 2 + d))) if has_bias else None
        if not need_input:
            return None, dW, db
        wg = xp.reshape(W, (g, og, cg, *kernel))
        parts = (xp.reshape(d2 @ wg[(slice(None), slice(None), slice(None), *offsets)],
                            (g, n, *outs, cg))
                 for offsets in itertools.product(*(range(k) for k in kernel)))
        dxl = _windows.scatter(xp, self, parts, padded_shape, keys,
                               _windows.overlapping(kernel, stride, dilation))
        # (G, N, *padded, C/G) -> (N, G, C/G, *padded) = (N, C, *padded)
        dxpad = xp.reshape(xp.permute_dims(dxl, (1, 0, d + 2, *range(2, 2 + d))),
                           (n, g * cg, *padded_shape[2:2 + d]))
        return _unpad(dxpad, padding), dW, db

    # -- pooling: (y, ctx) forward, dx backward ----------------------------------------
    def pool_forward(self, xp: Any, x: Any, kernel: tuple[int, ...], stride: tuple[int, ...],
                     mode: str, train: bool) -> tuple[Any, Any]:
        """Max (``mode="max"``) or mean (``"avg"``) over each window of ``x (N, C,
        *spatial)``: a running ``maximum`` (or sum) over the windows' strided slices, one
        per kernel offset. Returns ``(y, ctx)``; ``ctx`` (what :meth:`pool_backward`
        needs) is None unless ``train``. The kernel must fit (the layer checks)."""
        _, keys = _windows.plan(tuple(x.shape[2:]), kernel, stride, "pooling")
        y = x[keys[0]]
        for key in keys[1:]:
            y = xp.maximum(y, x[key]) if mode == "max" else y + x[key]
        if mode == "avg":
            y = y / len(keys)
        if not train:
            return y, None
        kept = (x, y) if mode == "max" else None
        return y, (mode, tuple(x.shape), kept, keys, _windows.overlapping(kernel, stride))

    def pool_backward(self, xp: Any, ctx: Any, dy: Any) -> Any:
        """``dx``: each window's gradient to the element that won it (the first one on
        ties, as PyTorch) for max, shared equally for mean; summed where windows overlap."""
        mode, shape, kept, keys, overlap = ctx
        if mode == "avg":
            share = dy / len(keys)
            parts: Any = [share] * len(keys)
        else:
            parts = self._pool_winner_grads(xp, *kept, dy, keys)
        return _windows.scatter(xp, self, parts, shape, keys, overlap)

    def _pool_winner_grads(self, xp: Any, x: Any, y: Any, dy: Any, keys: list[tuple]):
        """Per offset, ``dy`` where that offset holds its window's first maximum, else 0."""
        free = None  # windows whose winner is not found yet
        for i, key in enumerate(keys):
            won = x[key] == y
            if free is not None:
                won = won & free
            if i < len(keys) - 1:
                free = ~won if free is None else free ^ won  # won lies inside free
            yield self.keep(xp, dy, won)


def _unpad(dxpad: Any, padding: tuple[int, ...]) -> Any:
    """``dxpad (N, C, *padded)`` without its ``padding`` on each spatial side."""
    if not any(padding):
        return dxpad
    inner = (slice(None), slice(None)) + tuple(
        slice(p, m - p) for p, m in zip(padding, dxpad.shape[2:], strict=True))
    return dxpad[inner]


# -- counter-based random numbers, in standard integer arithmetic ---------------------------
# A draw is a pure function of (key, position, element index), so it needs no generator
# state: the same numbers come out eagerly and inside a traced or captured step, where
# the position is a device array the step reads. torch and CuPy draw this way (JAX uses
# its own counter-based generator). Every value stays in [0, 2**32) in int64 arithmetic,
# and products are split into 16-bit halves, so nothing overflows on any library.
_M32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``x`` in [0, 2**32) (an int or an int64 array)."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def hash32(x: Any) -> Any:
    """A 32-bit integer hash with full avalanche (Wellons' "lowbias32"), on ints or int64
    arrays with values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def fold_key(prefix: tuple[int, ...]) -> int:
    """One 32-bit key from a random stream's key (the seed, the epoch): each element's
    two 32-bit halves hashed in."""
    k = 0x2545F491
    for v in prefix:
        v = int(v) % 2**64
        for half in (v & _M32, v >> 32):
            k = hash32(k ^ hash32(half))
    return k


def counter_uniform(xp: Any, shape: tuple[int, ...], dtype: Any, dev: Any, key: Any,
                    position: Any) -> Any:
    """Uniform [0, 1) draws of ``shape`` for stream position ``position`` under ``key``
    (from :func:`fold_key`): ints, or 0-d int64 arrays on ``dev``. 24 random bits per
    element, made in float32 and cast to ``dtype``."""
    n = math.prod(shape)
    k = hash32(key ^ hash32(position))
    idx = xp.arange(n, dtype=xp.int64, device=dev)
    bits = hash32((hash32(idx ^ k) + k) & _M32)
    u = xp.astype(bits >> 8, xp.float32) * (1.0 / 2**24)
    u = xp.reshape(u, shape)
    return u if u.dtype == dtype else xp.astype(u, dtype)
