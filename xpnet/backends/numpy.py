"""NumPy: the host backend, always available.

NumPy >= 2.1 implements the standard itself, and its own namespace skips a layer of
Python calls that array-api-compat's wrapper adds, so that is the namespace used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _compat, _windows
from .base import Adapter, BackendUnavailableError, Placement
from .standard import StandardOps


def numpy_namespace() -> Any:
    """NumPy's own namespace where it implements the standard, else the wrapper."""
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 1):
        return np
    import array_api_compat.numpy as xnp

    return xnp


class NumpyOps(StandardOps):
    """NumPy: reuse each fresh result in place instead of allocating temporaries."""

    on_host = True

    def linear(self, xp, x, W, b):
        y = x @ W.T
        if b is not None:
            y += b
        return y

    def relu(self, xp, x):
        # against an array of zeros, not the scalar 0: NumPy 2.4's maximum is 1.4-3x
        # faster on float32 conv activations that way (same loop, same results)
        if x.dtype.kind != "f":
            return super().relu(xp, x)
        return np.maximum(x, np.zeros(x.shape, dtype=x.dtype))

    def keep(self, xp, dy, mask):
        return dy * mask  # bool * float32 stays float32, with no astype pass

    def sigmoid(self, xp, x):
        y = np.multiply(x, 0.5)
        np.tanh(y, out=y)
        y *= 0.5
        y += 0.5
        return y

    def sigmoid_grad(self, xp, dy, y):
        g = 1.0 - y
        g *= y
        g *= dy
        return g

    def tanh_grad(self, xp, dy, y):
        g = np.multiply(y, y)
        np.subtract(1.0, g, out=g)
        g *= dy
        return g

    def silu_grad(self, xp, dy, ctx):
        x, s = ctx
        g = 1.0 - s                            # the standard's operations, in place
        g *= x
        g += 1.0
        g *= s
        g *= dy
        return g

    def softmax_xent_grad(self, xp, z, y, ctx, n):
        g = ctx - y
        g /= n
        return g

    def adam_update_(self, xp, value, grad, m, v, decay, step, unbias, *, betas, eps,
                     weight_decay=0.0, decoupled=False):
        # The standard update's operations in the same order (so the same bits), with
        # two temporaries instead of eight.
        b1, b2 = betas
        g = grad
        if weight_decay and decoupled:
            value -= decay * value
        elif weight_decay:
            g = g + weight_decay * value
        t = np.multiply(g, 1 - b1)
        if m is None:
            m = t
        else:
            m *= b1
            m += t
        d = np.multiply(g, g)
        d *= 1 - b2
        if v is None:
            v, d = d, np.sqrt(d)
        else:
            v *= b2
            v += d
            np.sqrt(v, out=d)
        d *= unbias
        d += eps
        np.divide(m, d, out=d)
        d *= step
        value -= d
        return value, m, v

    def sum_axes(self, xp, a, axes):
        if a.dtype == np.float16:  # float16 adds across rows one by one and stalls
            return np.add.reduce(a, axis=axes, dtype=np.float32).astype(np.float16)
        return np.add.reduce(a, axis=axes)  # skips np.sum's Python wrapper

    def erf(self, xp, x):
        special = _scipy_special()
        if special is None:
            return super().erf(xp, x)
        y = special.erf(x)  # float16 comes back float64 (SciPy has no half loop)
        return y if y.dtype == x.dtype else y.astype(x.dtype)

    def gelu(self, xp, x):
        # float32: erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, about two
        # float32 ulps near 1) in place. SciPy's erf runs in float64 and takes about six
        # times as long. Forward also forms the local slope Phi(x) + x phi(x) from the same
        # exp(-x^2/2), so backward is one product and keeps one array instead of two.
        # (Slices that stay in L2 measured no faster inside a training step.)
        if x.dtype != np.float32:
            return super().gelu(xp, x)
        z = np.abs(x)
        z *= _SQRT_HALF                        # |x| / sqrt 2
        gauss = np.square(z)
        np.negative(gauss, out=gauss)
        np.exp(gauss, out=gauss)               # exp(-x^2 / 2)
        t = z                                  # z is not needed again
        t *= _AS_P
        t += 1.0
        np.reciprocal(t, out=t)                # t = 1 / (1 + p z)
        poly = t * _AS_A[4]
        for a in _AS_A[3::-1]:
            poly += a
            poly *= t                          # (a1 t + ... + a5 t^5): erfc(z) / exp(-z^2)
        poly *= gauss                          # erfc(|x| / sqrt 2)
        poly *= -0.5
        poly += 0.5                            # (1 - erfc) / 2 = erf(|x| / sqrt 2) / 2
        np.copysign(poly, x, out=poly)
        poly += 0.5                            # Phi(x)
        y = x * poly
        slope = np.multiply(x, gauss, out=gauss)
        slope *= _INV_SQRT_2PI
        slope += poly                          # Phi(x) + x phi(x)
        return y, _GeluSlope(slope)

    def gelu_grad(self, xp, dy, ctx):
        if not isinstance(ctx, _GeluSlope):
            return super().gelu_grad(xp, dy, ctx)
        return dy * ctx.slope

    # -- layer normalisation: the standard's operations, in place ------------------------
    def layer_norm(self, xp, x, weight, bias, eps):
        if x.dtype.kind != "f":
            return super().layer_norm(xp, x, weight, bias, eps)
        d = x.shape[-1]
        mean = np.add.reduce(x, axis=-1, keepdims=True)
        mean /= d                              # what np.mean does: the sum, then / D
        xhat = np.subtract(x, mean)            # centred, made xhat in place below
        work = np.multiply(xhat, xhat)
        inv = np.add.reduce(work, axis=-1, keepdims=True)
        inv /= d
        inv += eps
        np.sqrt(inv, out=inv)
        np.divide(1.0, inv, out=inv)
        xhat *= inv
        y = xhat
        if weight is not None:
            y = np.multiply(xhat, weight, out=work)
        if bias is not None:
            y = np.add(y, bias, out=work)
        return y, (xhat, inv)

    def layer_norm_grad(self, xp, dy, ctx, weight, bias):
        xhat, inv = ctx
        if xhat.dtype.kind != "f":
            return super().layer_norm_grad(xp, dy, ctx, weight, bias)
        d = xhat.shape[-1]
        rows = (-1, d)
        g = np.multiply(dy, weight) if weight is not None else np.array(dy, copy=True)
        sum_g = np.add.reduce(g, axis=-1, keepdims=True)
        work = np.multiply(g, xhat)
        sum_gx = np.add.reduce(work, axis=-1, keepdims=True)
        dweight = None
        if weight is not None:
            np.multiply(dy, xhat, out=work)
            dweight = np.add.reduce(work.reshape(rows), axis=0)
        dbias = None if bias is None else np.add.reduce(dy.reshape(rows), axis=0)
        np.multiply(xhat, sum_gx, out=work)
        g *= d
        g -= sum_g
        g -= work
        g *= inv / d                           # (inv / D) (D g - sum(g) - xhat sum(g xhat))
        return g, dweight, dbias

    def rows_add(self, xp, n_rows, index, values):
        if n_rows * index.shape[0] <= self.rows_add_onehot_limit:
            return self.rows_add_onehot(xp, n_rows, index, values)  # BLAS beats add.at here
        out = np.zeros((n_rows, values.shape[1]), dtype=values.dtype)
        np.add.at(out, index, values)  # unbuffered: repeated indices sum
        return out

    # -- convolution: channel-major im2col, one strided gather and one GEMM --------------
    #: The flat-grid gather (see ``_windows.Lattice``) is used while at most this
    #: fraction of its windows is dropped; otherwise the grid is the output positions.
    conv_flat_waste = 0.4
    #: With at most this many input channels (and a flat grid), the weight gradient is
    #: one small product per tap straight from the padded input, ``dg @ slice_t.T``:
    #: cheaper than reading ``cols`` again, which is then not kept at all.
    conv_tap_dw_channels = 4

    def conv_forward(self, xp, x, W, b, stride, padding, dilation=None, groups=1):
        """:meth:`StandardOps.conv_forward` for ``groups == 1``, laid out channel-major.

        Each input channel of the padded batch is stored flat, ``xt (C, flat)``, and one
        ``as_strided`` view of it, copied once, is ``cols (C K, M)``: a row per
        (channel, tap), the ``M`` windows along it (with stride 1 the grid is flat, and
        each row is a single contiguous run; see ``_windows.Lattice``). With a bias,
        ``cols`` gains a row of ones and ``W2`` the bias as its last column. Then ``Y =
        W2 @ cols`` is one GEMM ``(O, C K + 1) @ (C K + 1, M)`` whose result is
        channel-major, and a single copy crops and transposes it to ``(N, O, *out)``.
        Grouped convolutions take the standard path.

        Kept for backward: ``cols``, or, with few input channels on a flat grid, only
        the padded input ``xt`` (see ``conv_tap_dw_channels``). Every array is made
        afresh per call, so a kept one is never overwritten by a later call."""
        if groups != 1:
            return super().conv_forward(xp, x, W, b, stride, padding, dilation, groups)
        lat = _lattice(tuple(x.shape), tuple(W.shape[2:]), tuple(stride), tuple(padding),
                       None if dilation is None else tuple(dilation), self.conv_flat_waste)
        c, o, d = x.shape[1], W.shape[0], x.ndim - 2
        xt = np.empty((c, lat.flat_size), dtype=x.dtype)
        _fill_padded(xt, lat, x)
        ck = c * len(lat.taps)
        cols = np.empty((ck + (b is not None), lat.positions), dtype=x.dtype)
        np.copyto(cols[:ck].reshape(c, *lat.kernel, *lat.grid), _windows_view(xt, lat))
        w_rows = W.reshape(o, ck)  # W (O, C, *k) as (O, C K): cols' row order
        if b is not None:  # the bias as one more column of W2, times a row of ones
            cols[ck] = 1
            w_rows = np.concatenate([w_rows, b[:, None]], axis=1)
        yg = w_rows @ cols
        shape, key = lat.crop()
        y = np.empty((x.shape[0], o, *lat.outs), dtype=yg.dtype)
        np.copyto(y, yg.reshape(o, *shape)[(slice(None), *key)].transpose(1, 0, *range(2, 2 + d)))
        if lat.flat and c <= self.conv_tap_dw_channels:
            return y, _ConvTape(xt, lat, W, b is not None, per_tap=True)
        return y, _ConvTape(cols, lat, W, b is not None)

    def conv_backward(self, xp, ctx, dy, need_input):
        """:meth:`StandardOps.conv_backward` for a :meth:`conv_forward` of this class.

        ``delta`` is laid out channel-major as ``(O, M)``, zeros at the grid's dropped
        windows; then ``[dW2, db] = (cols @ delta.T).T`` (the row of ones gives ``db``;
        this orientation runs twice as fast as ``delta @ cols.T``), or per tap ``dW[:, :,
        t] = delta @ xt_t.T`` from the kept padded input; ``dcols = W2.T @ delta``, added
        back tap by tap through strided views of a ``(C, flat)`` buffer (one contiguous
        run per channel on a flat grid), whose interior is ``dx``."""
        if not isinstance(ctx, _ConvTape):
            return super().conv_backward(xp, ctx, dy, need_input)
        cols, lat, W, has_bias = ctx.cols, ctx.lattice, ctx.W, ctx.has_bias
        o, c, d = W.shape[0], W.shape[1], dy.ndim - 2
        shape, key = lat.crop()
        dg = np.empty((o, *shape), dtype=dy.dtype)
        if lat.flat:  # the dropped windows must add nothing
            for axis in range(d):
                edge = [slice(None)] * (2 + d)
                edge[2 + axis] = slice(lat.outs[axis], None)
                dg[tuple(edge)] = 0
        np.copyto(dg[(slice(None), *key)], dy.transpose(1, 0, *range(2, 2 + d)))
        dg = dg.reshape(o, lat.positions)
        ck = c * len(lat.taps)
        if ctx.per_tap:  # cols holds xt (C, flat): dW[:, :, t] = dg @ (tap t's slice).T
            m = lat.positions
            dW = np.empty((o, c, len(lat.taps)), dtype=dg.dtype)
            for t, offset in enumerate(lat.tap_offsets):
                dW[:, :, t] = dg @ cols[:, offset:offset + m].T
            dW = dW.reshape(W.shape)
            db = np.add.reduce(dg, axis=1) if has_bias else None
        else:
            grads = (cols @ dg.T).T  # twice the speed of dg @ cols.T
            dW = np.ascontiguousarray(grads[:, :ck]).reshape(W.shape)
            db = np.ascontiguousarray(grads[:, ck]) if has_bias else None  # dg times the ones
        if not need_input:
            return None, dW, db
        dcols = (W.reshape(o, ck).T @ dg).reshape(c, len(lat.taps), *lat.grid)
        dxt = np.zeros((c, lat.flat_size), dtype=dy.dtype)
        for t, offset in enumerate(lat.tap_offsets):
            part = _grid_view(dxt, lat, offset)
            np.add(part, dcols[:, t], out=part)
        padded = dxt[:, :lat.stored].reshape(c, lat.batch, *lat.padded)
        dx = np.empty((lat.batch, c, *lat.spatial), dtype=dy.dtype)
        np.copyto(dx, padded[(slice(None), *lat.interior())].transpose(1, 0, *range(2, 2 + d)))
        return dx, dW, db

    # -- pooling: max pooling keeps each window's winning offset, not the input -------
    def pool_forward(self, xp, x, kernel, stride, mode, train):
        """:meth:`StandardOps.pool_forward`; for max pooling in training it also finds,
        while taking the running maximum, the offset that wins each window (the first
        on ties: a later offset wins only when strictly greater), kept as one byte per
        output, so backward needs neither the input nor a comparison with it. Each
        offset's slice is copied to a contiguous block first: NumPy runs element-wise
        work on contiguous operands several times faster than on stride-2 views."""
        keys = _pool_keys(tuple(x.shape[2:]), tuple(kernel), tuple(stride))
        if mode != "max" or not train or len(keys) > 255:  # 255: the offset is one byte
            return super().pool_forward(xp, x, kernel, stride, mode, train)
        y = x[keys[0]].copy()
        winner = np.zeros(y.shape, dtype=np.uint8)
        for i, key in enumerate(keys[1:], 1):
            v = np.ascontiguousarray(x[key])
            won = np.greater(v, y).view(np.uint8)
            np.maximum(y, v, out=y)
            won *= np.uint8(i)
            np.maximum(winner, won, out=winner)  # offsets only grow: the max is the last win
        return y, _PoolTape(tuple(x.shape), keys, winner, kernel, stride)

    def pool_backward(self, xp, ctx, dy):
        """:meth:`StandardOps.pool_backward`; after a max-pooling forward of this class,
        each offset's slice of ``dx`` gets ``dy`` where that offset won, one pass per
        offset (written straight into the slice where windows do not overlap, with no
        zero fill at all where they also tile the input)."""
        if not isinstance(ctx, _PoolTape):
            return super().pool_backward(xp, ctx, dy)
        overlap = _windows.overlapping(ctx.kernel, ctx.stride)
        tiles = not overlap and all(
            s == k and n % k == 0
            for n, k, s in zip(ctx.shape[2:], ctx.kernel, ctx.stride, strict=True))
        dx = np.empty(ctx.shape, dtype=dy.dtype) if tiles else np.zeros(ctx.shape, dy.dtype)
        for i, key in enumerate(ctx.keys):
            won = ctx.winner == i
            if overlap:
                part = dx[key]
                part += dy * won
            else:
                np.multiply(dy, won, out=dx[key])
        return dx


class _GeluSlope:
    """What :meth:`NumpyOps.gelu_grad` needs from a float32 forward: ``Phi(x) + x phi(x)``."""

    __slots__ = ("slope",)

    def __init__(self, slope: Any):
        self.slope = slope


class _ConvTape:
    """What :meth:`NumpyOps.conv_backward` needs from its forward pass."""

    __slots__ = ("cols", "lattice", "W", "has_bias", "per_tap")

    def __init__(self, cols: Any, lattice: Any, W: Any, has_bias: bool, per_tap: bool = False):
        self.cols, self.lattice, self.W, self.has_bias = cols, lattice, W, has_bias
        self.per_tap = per_tap  # cols is the padded input xt (C, flat) instead


class _PoolTape:
    """What :meth:`NumpyOps.pool_backward` needs from a max-pooling forward pass."""

    __slots__ = ("shape", "keys", "winner", "kernel", "stride")

    def __init__(self, shape: tuple[int, ...], keys: list, winner: Any,
                 kernel: tuple[int, ...], stride: tuple[int, ...]):
        self.shape, self.keys, self.winner = shape, keys, winner
        self.kernel, self.stride = kernel, stride


@functools.lru_cache(maxsize=64)
def _pool_keys(spatial: tuple[int, ...], kernel: tuple[int, ...],
               stride: tuple[int, ...]) -> tuple[tuple, ...]:
    """Each kernel offset's slice of a pooling input (``_windows.plan``, made once)."""
    return tuple(_windows.plan(spatial, kernel, stride, "pooling")[1])


@functools.lru_cache(maxsize=64)
def _lattice(shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
             padding: tuple[int, ...], dilation: tuple[int, ...] | None,
             waste: float) -> _windows.Lattice:
    """The lattice of a convolution of an input of ``shape``: a flat grid when it drops
    at most ``waste`` of its windows, else the output positions (made once per shape)."""
    lat = _windows.Lattice(shape[0], shape[2:], kernel, stride, padding, dilation, flat=True)
    if lat.flat and lat.waste() > waste:
        lat = _windows.Lattice(shape[0], shape[2:], kernel, stride, padding, dilation,
                               flat=False)
    return lat


def _fill_padded(xt: Any, lat: Any, x: Any) -> None:
    """Write ``x (N, C, *spatial)`` into ``xt (C, flat)`` as the lattice lays it out:
    zeros around (padding) and after (the tail a flat grid reads), the input inside."""
    c, d = xt.shape[0], x.ndim - 2
    xt[:, lat.stored:] = 0
    padded = xt[:, :lat.stored].reshape(c, lat.batch, *lat.padded)
    for axis, p in enumerate(lat.padding):
        if p:
            for side in (slice(0, p), slice(lat.padded[axis] - p, None)):
                edge = [slice(None)] * (2 + d)
                edge[2 + axis] = side
                padded[tuple(edge)] = 0
    padded[(slice(None), *lat.interior())] = x.transpose(1, 0, *range(2, 2 + d))


def _windows_view(xt: Any, lat: Any) -> Any:
    """``(C, *kernel, *grid)``: every tap of every window of ``xt (C, flat)``, a view."""
    item = xt.itemsize
    return as_strided(xt, (xt.shape[0], *lat.kernel, *lat.grid),
                      (xt.strides[0], *(t * item for t in lat.tap_steps),
                       *(g * item for g in lat.grid_steps)), writeable=False)


def _grid_view(xt: Any, lat: Any, offset: int) -> Any:
    """``(C, *grid)``: the element each window holds at the tap ``offset`` elements from
    its start, a writeable view of ``xt (C, flat)`` (no element named twice)."""
    item = xt.itemsize
    return as_strided(xt[:, offset:], (xt.shape[0], *lat.grid),
                      (xt.strides[0], *(g * item for g in lat.grid_steps)))

_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
#: Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) exp(-z^2), t = 1/(1 + p z)
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

_special: list[Any] = []


def _scipy_special() -> Any:
    """``scipy.special`` when SciPy is installed, else None (imported on first use)."""
    if not _special:
        try:
            import scipy.special as special
        except ImportError:
            special = None
        _special.append(special)
    return _special[0]


_bfloat16_checked: list[str] = []


def _bfloat16_problem(xp: Any) -> str:
    """Why ``ml_dtypes.bfloat16`` cannot serve as NumPy's bfloat16 here ("" if it can):
    the namespace must classify it as a real floating dtype and keep it through ``@``.
    (ml_dtypes 0.6 with NumPy 2.4: ``np.isdtype`` raises TypeError for it, and the
    product of two bfloat16 matrices is float32.) Checked once."""
    if not _bfloat16_checked:
        try:
            import ml_dtypes
        except ImportError:
            _bfloat16_checked.append("ml_dtypes is not installed (pip install ml_dtypes)")
            return _bfloat16_checked[0]
        bf16 = np.dtype(ml_dtypes.bfloat16)
        a = np.ones((2, 2), dtype=bf16)
        try:
            floating = xp.isdtype(bf16, "real floating")
        except TypeError as e:
            problem = (f"NumPy's array API namespace does not accept ml_dtypes.bfloat16 "
                       f"({str(e).rstrip('.')})")
        else:
            problem = ("" if floating and (a @ a).dtype == bf16 else
                       f"with ml_dtypes.bfloat16, isdtype(..., 'real floating') is {floating} "
                       f"and a matrix product is {(a @ a).dtype}")
        _bfloat16_checked.append(problem)
    return _bfloat16_checked[0]


class NumpyAdapter(Adapter):
    name = "numpy"
    aliases = ("np",)
    modules = ("numpy",)
    namespaces = ("numpy", "array_api_compat.numpy")
    package = "numpy"
    install = "pip install numpy"

    def __init__(self) -> None:
        super().__init__()
        self.xp = numpy_namespace()
        _compat.prefer_namespace(np.ndarray, self.xp)

    def open(self, device: str | None) -> Placement:
        if device not in (None, "cpu"):
            raise BackendUnavailableError(
                f"numpy runs only on the CPU, not on {device!r}; for a GPU use "
                f"xn.use('cupy', device={device!r}) (pip install \"xpnet[cuda12]\")"
            )
        return Placement(self.xp, "cpu", "cpu")

    def placement_of(self, x: Any) -> Placement:
        return Placement(self.xp, "cpu", "cpu")

    def to_device(self, place, host, dtype, copy):
        return np.array(host, dtype=dtype, copy=True) if copy else np.asarray(host, dtype=dtype)

    def to_host(self, x):
        return np.asarray(x)

    def make_ops(self) -> StandardOps:
        return NumpyOps()

    def quiet_float_errors(self) -> Any:
        return np.errstate(over="ignore", invalid="ignore")

    def low_precision_dtype(self, xp: Any, name: str) -> Any:
        """float16 is NumPy's own; bfloat16 would come from ``ml_dtypes``, used only if
        NumPy's array API namespace accepts it (:func:`_bfloat16_problem` checks)."""
        if name != "bfloat16":
            return super().low_precision_dtype(xp, name)
        problem = _bfloat16_problem(xp)
        if problem:
            raise TypeError(f"numpy: no bfloat16 for mixed precision: {problem}. Use "
                            f"precision=\"fp16-mixed\" on numpy, or bf16-mixed on torch or jax")
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)

    def limit_threads(self, n: int) -> None:
        try:  # NumPy's BLAS pool, through threadpoolctl when installed
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=n)

    def set_threads(self, n: int) -> Callable[[], None] | None:
        """Every BLAS and OpenMP pool loaded in the process (NumPy's, and those torch or
        SciPy bring), through threadpoolctl, which restores the counts it found."""
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise ImportError("threads: limiting the BLAS threads needs threadpoolctl: "
                              "pip install threadpoolctl") from None
        return threadpool_limits(limits=n).restore_original_limits

    def mpi_direct(self, x, cuda_aware):
        return True

    def flat_buffer(self, arrays):
        return np.concatenate([a.reshape(-1) for a in arrays])
