"""The fused CuPy kernels (``CupyOps``) and the primitives they implement.

- Each primitive these kernels brought into ``StandardOps`` (``tanh_grad``, ``silu`` /
  ``silu_grad``, ``softmax_xent_grad``, ``sgd_update_``, ``adam_update_``) against NumPy
  written by hand, on every backend case: the standard version and the case's own ops.
- Each fused kernel against ``StandardOps`` on CuPy arrays (skipped, saying why, without
  CuPy and a GPU).
- Without a GPU: a stand-in ``cupy`` module whose ``ElementwiseKernel`` and
  ``ReductionKernel`` check each call's arguments against the parameter lists as CuPy
  does, and run the kernel's CUDA C with NumPy. The kernels are written in a subset of C
  that is also Python (declarations, assignments, arithmetic, comparisons, functional
  casts, math functions), so the stand-in runs the very source the GPU compiles.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import types

import array_api_compat
import numpy as np
import pytest

import xpnet as xn
from xpnet import backends
from xpnet.backend import to_numpy
from xpnet.backends import StandardOps
from xpnet.backends.cupy import KERNELS, CupyOps, build_kernel
from xpnet.testing import CASES, open_case

LIBRARY_OPS = "the case's own ops"


def _dtype(be):
    return ("float64", 1e-12) if be.supports("float64") else ("float32", 2e-5)


def _both_ops(be):
    """``StandardOps`` and the case's own ops (a library's fast path or fused kernels)."""
    return [("StandardOps", StandardOps()), (LIBRARY_OPS, backends.ops(be.xp))]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- the new primitives against NumPy by hand, on every backend case --------------------
def test_activation_primitives_match_numpy(be, rng):
    dtype, tol = _dtype(be)
    x = rng.standard_normal((4, 5)) * 3
    dy = rng.standard_normal((4, 5))
    y = np.tanh(x)
    s = _sigmoid(x)
    for label, o in _both_ops(be):
        xp = be.xp
        got = o.tanh_grad(xp, be.asarray(dy, dtype=dtype), be.asarray(y, dtype=dtype))
        np.testing.assert_allclose(to_numpy(got), dy * (1 - y**2), rtol=tol, atol=tol,
                                   err_msg=f"tanh_grad, {label}")
        out, ctx = o.silu(xp, be.asarray(x, dtype=dtype))
        np.testing.assert_allclose(to_numpy(out), x * s, rtol=tol, atol=tol,
                                   err_msg=f"silu, {label}")
        got = o.silu_grad(xp, be.asarray(dy, dtype=dtype), ctx)
        # d(x s)/dx = s + x s (1 - s), written another way than the primitive's
        np.testing.assert_allclose(to_numpy(got), dy * (s + x * s * (1 - s)), rtol=tol,
                                   atol=tol, err_msg=f"silu_grad, {label}")
        assert got.dtype == be.dtype(dtype), label


def test_softmax_xent_and_gradient_match_numpy(be, rng):
    dtype, tol = _dtype(be)
    z = rng.standard_normal((6, 4)) * 20  # rows whose softmax is nearly one-hot
    y = np.eye(4)[[0, 3, 1, 1, 2, 0]]
    y[5] = [0.25, 0.25, 0.5, 0.0]  # a row of probabilities
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    for label, o in _both_ops(be):
        zd, yd = be.asarray(z, dtype=dtype), be.asarray(y, dtype=dtype)
        rows, ctx = o.softmax_xent(be.xp, zd, yd)
        np.testing.assert_allclose(to_numpy(rows), -(y * logp).sum(axis=1), rtol=tol,
                                   atol=tol, err_msg=f"softmax_xent, {label}")
        g = o.softmax_xent_grad(be.xp, zd, yd, ctx, 6)
        np.testing.assert_allclose(to_numpy(g), (np.exp(logp) - y) / 6, rtol=tol, atol=tol,
                                   err_msg=f"softmax_xent_grad, {label}")


SGD_CASES = [dict(momentum=0.0), dict(momentum=0.0, weight_decay=0.1),
             dict(momentum=0.9), dict(momentum=0.9, weight_decay=0.01),
             dict(momentum=0.8, nesterov=True), dict(momentum=0.8, nesterov=True,
                                                    weight_decay=0.05)]


def _sgd_by_hand(w, grads, lrs, momentum=0.0, nesterov=False, weight_decay=0.0):
    buf = None
    for g, lr in zip(grads, lrs, strict=True):
        d = g + weight_decay * w
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        w = w - lr * d
    return w, buf


def _adam_by_hand(w, grads, lrs, betas, eps, weight_decay=0.0, decoupled=False):
    m = v = np.zeros_like(w)
    b1, b2 = betas
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return w, m, v


def _coefficient(be, c, dtype, as_array):
    """A step's coefficient as the optimizer passes it eagerly (a float) or as a
    compiled step does (a 0-d array of the parameters' dtype)."""
    return be.asarray(np.asarray(c), dtype=dtype) if as_array else c


def _check_in_place(be, label, kept, before, arrays_before):
    """The update wrote into the arrays it was given, except on JAX, where it must
    leave them untouched and return new ones."""
    if be.name == "jax":
        for a, host in arrays_before:
            np.testing.assert_array_equal(to_numpy(a), host,
                                          err_msg=f"{label}: JAX input changed")
    else:
        assert kept is before, f"{label}: the update did not happen in place"


def _config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("config", SGD_CASES, ids=_config_id)
@pytest.mark.parametrize("as_array", [False, True], ids=["float-lr", "device-lr"])
def test_sgd_update_matches_numpy(be, rng, config, as_array):
    dtype, tol = _dtype(be)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    lrs = [0.1, 0.05, 0.2]
    want_w, want_buf = _sgd_by_hand(w0, grads, lrs, **config)
    for label, o in _both_ops(be):
        w, buf = be.asarray(w0, dtype=dtype), None
        for g, lr in zip(grads, lrs, strict=True):
            before, host = w, to_numpy(w)
            w, buf = o.sgd_update_(be.xp, w, be.asarray(g, dtype=dtype), buf,
                                   _coefficient(be, lr, dtype, as_array), **config)
            _check_in_place(be, f"sgd_update_, {label}", w, before, [(before, host)])
        np.testing.assert_allclose(to_numpy(w), want_w, rtol=tol, atol=tol,
                                   err_msg=f"sgd_update_ {config}, {label}")
        if config["momentum"]:
            np.testing.assert_allclose(to_numpy(buf), want_buf, rtol=tol, atol=tol,
                                       err_msg=f"momentum buffer {config}, {label}")
        else:
            assert buf is None, label


ADAM_CASES = [dict(weight_decay=0.0), dict(weight_decay=0.1),
              dict(weight_decay=0.1, decoupled=True)]


@pytest.mark.parametrize("config", ADAM_CASES, ids=["adam", "adam-l2", "adamw"])
@pytest.mark.parametrize("as_array", [False, True], ids=["float-coefficients",
                                                         "device-coefficients"])
def test_adam_update_matches_numpy(be, rng, config, as_array):
    dtype, tol = _dtype(be)
    betas, eps = (0.9, 0.99), 1e-6
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    lrs = [0.01, 0.02, 0.005]
    want = _adam_by_hand(w0, grads, lrs, betas, eps, **config)
    for label, o in _both_ops(be):
        w, m, v = be.asarray(w0, dtype=dtype), None, None
        for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
            coefficients = (lr * config["weight_decay"], lr / (1 - betas[0] ** t),
                            1.0 / math.sqrt(1 - betas[1] ** t))  # Adam.coefficients
            before, host = (w, m, v), [(a, to_numpy(a)) for a in (w, m, v) if a is not None]
            w, m, v = o.adam_update_(
                be.xp, w, be.asarray(g, dtype=dtype), m, v,
                *(_coefficient(be, c, dtype, as_array) for c in coefficients),
                betas=betas, eps=eps, **config)
            if t == 2:  # the moments exist from the first step on
                for kept, given in zip((w, m, v), before, strict=True):
                    _check_in_place(be, f"adam_update_, {label}", kept, given, host)
        for got, expect, what in zip((w, m, v), want, ("value", "m", "v"), strict=True):
            np.testing.assert_allclose(to_numpy(got), expect, rtol=tol, atol=tol,
                                       err_msg=f"adam_update_ {config} {what}, {label}")


# -- the fused kernels against StandardOps on CuPy arrays (a GPU) ----------------------
def _activation_pairs(o, ref, xp, x, dy):
    """``{name: (ops o's result, the standard one's)}`` for each fused activation kernel,
    forward and backward, on the same ``x`` and ``dy``."""
    return {
        "sigmoid": (o.sigmoid(xp, x), ref.sigmoid(xp, x)),
        "sigmoid_grad": (o.sigmoid_grad(xp, dy, ref.sigmoid(xp, x)),
                         ref.sigmoid_grad(xp, dy, ref.sigmoid(xp, x))),
        "tanh_grad": (o.tanh_grad(xp, dy, xp.tanh(x)), ref.tanh_grad(xp, dy, xp.tanh(x))),
        "relu_grad": (o.relu_grad(xp, dy, ref.relu(xp, x)),
                      ref.relu_grad(xp, dy, ref.relu(xp, x))),
        "gelu": (o.gelu(xp, x)[0], ref.gelu(xp, x)[0]),
        "gelu_grad": (o.gelu_grad(xp, dy, o.gelu(xp, x)[1]),
                      ref.gelu_grad(xp, dy, ref.gelu(xp, x)[1])),
        "silu": (o.silu(xp, x)[0], ref.silu(xp, x)[0]),
        "silu_grad": (o.silu_grad(xp, dy, o.silu(xp, x)[1]),
                      ref.silu_grad(xp, dy, ref.silu(xp, x)[1])),
    }


@pytest.fixture
def cupy_be():
    """The cupy-cuda0 case, or a skip saying why it cannot run here."""
    return open_case(next(c for c in CASES if c.id == "cupy-cuda0"))


GPU_DTYPES = [("float32", 2e-6), ("float64", 1e-13)]


@pytest.mark.parametrize("dtype,tol", GPU_DTYPES)
def test_cupy_activation_kernels_match_standard(cupy_be, rng, dtype, tol):
    xp, ref = cupy_be.xp, StandardOps()
    x = cupy_be.asarray(rng.standard_normal((37, 19)) * 4, dtype=dtype)
    dy = cupy_be.asarray(rng.standard_normal((37, 19)), dtype=dtype)
    o = backends.ops(xp)
    assert isinstance(o, CupyOps) and o.fused
    checks = _activation_pairs(o, ref, xp, x, dy)
    for name, (got, want) in checks.items():
        assert (name, "double" if dtype == "float64" else "float") in o._kernels, name
        assert got.dtype == want.dtype, name
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=tol, atol=tol,
                                   err_msg=name)


@pytest.mark.parametrize("dtype,tol", GPU_DTYPES)
def test_cupy_softmax_xent_kernels_match_standard(cupy_be, rng, dtype, tol):
    xp, o, ref = cupy_be.xp, backends.ops(cupy_be.xp), StandardOps()
    z = cupy_be.asarray(rng.standard_normal((33, 10)) * 30, dtype=dtype)
    y = cupy_be.asarray(np.eye(10)[rng.integers(0, 10, 33)], dtype=dtype)
    rows, ctx = o.softmax_xent(xp, z, y)
    want_rows, p = ref.softmax_xent(xp, z, y)
    assert isinstance(ctx, tuple)  # the fused path: no softmax array kept
    np.testing.assert_allclose(to_numpy(rows), to_numpy(want_rows), rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(to_numpy(o.softmax_xent_grad(xp, z, y, ctx, 33)),
                               to_numpy(ref.softmax_xent_grad(xp, z, y, p, 33)),
                               rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("dtype,tol", GPU_DTYPES)
def test_cupy_optimizer_kernels_match_standard(cupy_be, rng, dtype, tol):
    xp, o, ref = cupy_be.xp, backends.ops(cupy_be.xp), StandardOps()

    def arr(shape):
        return cupy_be.asarray(rng.standard_normal(shape), dtype=dtype)

    for config in SGD_CASES:
        w, g, buf = arr((65, 3)), arr((65, 3)), arr((65, 3))
        w2, buf2 = xp.asarray(w, copy=True), xp.asarray(buf, copy=True)
        got = o.sgd_update_(xp, w, g, buf, 0.1, **config)
        want = ref.sgd_update_(xp, w2, g, buf2, 0.1, **config)
        assert got[0] is w
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=tol, atol=tol,
                                       err_msg=str(config))
    for config in ADAM_CASES:
        w, g, m, v = arr((65, 3)), arr((65, 3)), arr((65, 3)), xp.abs(arr((65, 3)))
        copies = [xp.asarray(a, copy=True) for a in (w, m, v)]
        # a 0-d float64 coefficient for float32 parameters is cast for the kernel
        coefficients = (0.001, cupy_be.asarray(np.float64(0.01)), 1.05)
        got = o.adam_update_(xp, w, g, m, v, *coefficients, betas=(0.9, 0.999), eps=1e-8,
                             **config)
        want = ref.adam_update_(xp, copies[0], g, copies[1], copies[2], 0.001, 0.01, 1.05,
                                betas=(0.9, 0.999), eps=1e-8, **config)
        assert all(a is b for a, b in zip(got, (w, m, v), strict=True))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=tol * 10, atol=tol,
                                       err_msg=str(config))


def test_cupy_update_replays_in_a_cuda_graph_with_a_device_coefficient(cupy_be):
    """A captured SGD step reads its learning rate from device memory at each replay."""
    import cupy

    xp, o = cupy_be.xp, backends.ops(cupy_be.xp)
    w = cupy_be.asarray(np.ones(8), dtype="float32")
    g = cupy_be.asarray(np.full(8, 2.0), dtype="float32")
    lr = cupy_be.asarray(np.float32(0.5))
    o.sgd_update_(xp, w, g, None, lr)  # builds and loads the kernel: w = 1 - 0.5 * 2 = 0
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        o.sgd_update_(xp, w, g, None, lr)  # recorded, not run
        graph = stream.end_capture()
    lr.fill(0.25)
    cupy.cuda.get_current_stream().synchronize()
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(to_numpy(w), np.full(8, -0.5))  # 0 - 0.25 * 2


def test_cupy_standard_path_when_fused_kernels_are_off(cupy_be, rng):
    o = backends.ops(cupy_be.xp)
    x = cupy_be.asarray(rng.standard_normal((4, 4)), dtype="float32")
    o.fused = False
    try:
        y, ctx = o.silu(cupy_be.xp, x)
    finally:
        o.fused = True
    assert ctx[1] is not None  # the standard path keeps sigmoid(x)
    np.testing.assert_allclose(to_numpy(o.silu_grad(cupy_be.xp, x, ctx)),
                               to_numpy(StandardOps().silu_grad(cupy_be.xp, x, ctx)),
                               rtol=2e-6, atol=2e-6)


# -- without a GPU: a stand-in cupy that runs the kernels' source with NumPy ------------
_C_TYPES = {"float": np.float32, "double": np.float64}
_FUNCTIONS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh}


def _erf(x):
    """erf element-wise through math.erf (in double), in the argument's dtype: the C
    function a kernel's source calls."""
    x = np.asarray(x)
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


#: ``cupyx.scipy.special.erf``'s loops in CuPy 14 (``_erf.py``): float16 has none of its
#: own, so a float16 argument gives float64
_SPECIAL_ERF_LOOPS = {np.dtype(np.float16): np.float64, np.dtype(np.float32): np.float32,
                      np.dtype(np.float64): np.float64}


def _special_erf(x):
    """``cupyx.scipy.special.erf`` as CuPy 14 has it: loops ``e->d``, ``f->f``, ``d->d``."""
    out = _SPECIAL_ERF_LOOPS[np.asarray(x).dtype]
    return _erf(np.asarray(x).astype(out))


# -- a stand-in CuPy with two devices ----------------------------------------------------
# CuPy runs every kernel on the *current* device and makes every new array there; an
# array of another device is refused by the kernel (CuPy 14's ``_check_peer_access``:
# ValueError without peer access; with it, a PerformanceWarning and a kernel on the wrong
# device reading across the bus). array-api-compat's CuPy namespace drops ``device=`` in
# ``zeros``, ``arange``, ``*_like``... (only ``asarray`` enters the device). The arrays
# below hold NumPy data and a device number; their operators, the namespace's functions
# and the kernels check that every array is on the current device and put results there.
class _Runtime:
    """``cupy.cuda.runtime``: the current device of this (single-threaded) test."""

    def __init__(self, count: int):
        self.count, self.current = count, 0

    def getDeviceCount(self):  # noqa: N802 - CuPy's names
        return self.count

    def getDevice(self):  # noqa: N802
        return self.current

    def setDevice(self, i):  # noqa: N802
        assert 0 <= i < self.count, f"no device {i}"
        self.current = i

    def getDeviceProperties(self, i):  # noqa: N802
        return {"name": b"Stand-in GPU", "totalGlobalMem": 80 * 2**30}

    def runtimeGetVersion(self):  # noqa: N802
        return 13000

    driverGetVersion = runtimeGetVersion  # noqa: N815


class _Device:
    """``cupy.cuda.Device``: a context manager that makes it current; compared by id."""

    runtime: _Runtime  # set by the fixture

    def __init__(self, i=None):
        self.id = self.runtime.getDevice() if i is None else int(i)
        self._stack = []

    def __enter__(self):
        self._stack.append(self.runtime.getDevice())
        self.runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc):
        self.runtime.setDevice(self._stack.pop())

    compute_capability = "90"

    def use(self):
        self.runtime.setDevice(self.id)

    def synchronize(self):
        _declare_synchronize()

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(("cuda", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _refuse_other_device(*arrays):
    current = _Device.runtime.getDevice()
    for a in arrays:
        if a._device_id != current:
            raise ValueError(f"The device where the array resides ({a._device_id}) is "
                             f"different from the current device ({current}). Peer access "
                             f"is unavailable between these devices.")


class _GpuArray(np.lib.mixins.NDArrayOperatorsMixin):
    """``cupy.ndarray`` in the stand-in: NumPy data on one of the stand-in's devices.
    Views (slices, ``.T``) stay on the array's device without a kernel; everything else
    is a kernel on the current device."""

    __module__ = "cupy"  # how xpnet's registry tells the library of an array

    def __init__(self, data, device_id):
        self._a, self._device_id = data, device_id

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    T = property(lambda self: _GpuArray(self._a.T, self._device_id))
    mT = property(lambda self: _GpuArray(self._a.mT, self._device_id))
    device = property(lambda self: _Device(self._device_id))

    def get(self):
        _refuse_sync()
        return np.array(self._a, copy=True)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        _refuse_other_device(*_gpu_arrays(inputs + tuple(out)))
        if ufunc is np.matmul and _capturing():
            raise NotImplementedError(CUBLAS_REFUSAL)
        if out:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
            _run_in_place(lambda: getattr(ufunc, method)(*_unwrap(inputs), **kwargs))
            return out[0] if len(out) == 1 else out
        return _wrap(_run(lambda: getattr(ufunc, method)(*_unwrap(inputs), **kwargs)))

    def __getitem__(self, key):
        if _gpu_arrays(key):  # advanced indexing: a gather kernel
            _refuse_other_device(self, *_gpu_arrays(key))
            return _wrap(_run(lambda: self._a[_unwrap(key)]))
        return _GpuArray(self._a[key], self._device_id)  # a view

    def __setitem__(self, key, value):
        _refuse_other_device(self, *_gpu_arrays((key, value)))
        _run_in_place(lambda: self._a.__setitem__(_unwrap(key), _unwrap(value)))

    def astype(self, dtype, copy=True):
        _refuse_other_device(self)
        return _wrap(_run(lambda: self._a.astype(dtype, copy=True)))

    def reshape(self, *shape):
        return _GpuArray(self._a.reshape(*shape), self._device_id)

    def __float__(self):
        _refuse_sync()
        return float(self._a)

    def __int__(self):
        _refuse_sync()
        return int(self._a)

    def __bool__(self):
        _refuse_sync()
        return bool(self._a)

    def __index__(self):
        _refuse_sync()
        return self._a.__index__()

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"stand-in cupy array on cuda:{self._device_id}: {self._a!r}"


CUBLAS_REFUSAL = "calling cuBLAS API during stream capture is currently unsupported"


class _Stream:
    """``cupy.cuda.Stream``: current inside ``with``; a capture records each kernel (a
    closure over the arrays it reads and writes) instead of running it, and the graph
    it ends with replays them in order on the same arrays."""

    stack: list  # the current stream is the last (set by the fixture)

    def __init__(self, non_blocking=False):
        self.recorded = None  # a list while capturing

    def __enter__(self):
        self.stack.append(self)
        return self

    def __exit__(self, *exc):
        self.stack.pop()

    def begin_capture(self):
        assert self.recorded is None, "already capturing"
        self.recorded = []

    def end_capture(self):
        graph, self.recorded = _Graph(self.recorded), None
        return graph

    def is_capturing(self):
        return self.recorded is not None

    def synchronize(self):
        if self.is_capturing():
            raise RuntimeError("the current stream is capturing, so synchronous API calls "
                               "are disallowed")


class _Graph:
    def __init__(self, kernels):
        self.kernels = kernels

    def launch(self, stream=None):
        for kernel in self.kernels:
            kernel()


def _capturing():
    return _Stream.stack[-1].is_capturing()


def _refuse_sync(what="synchronous API calls"):
    if _capturing():
        raise RuntimeError(f"the current stream is capturing, so {what} are disallowed")
    if what == "synchronous API calls":  # a read back to the host
        _declare_synchronize()


_SYNC_ALLOWED = [True]


def _declare_synchronize():
    """``cupy._core.syncdetect``: under ``cupyx.allow_synchronize(False)`` a read of
    device data on the host (``.get()``, ``float()``...) or a device synchronize raises."""
    if not _SYNC_ALLOWED[-1]:
        raise RuntimeError("Device synchronization was detected while disallowed.")


@contextlib.contextmanager
def _allow_synchronize(allow):
    _SYNC_ALLOWED.append(allow)
    try:
        yield
    finally:
        _SYNC_ALLOWED.pop()


def _scatter_add(a, index, values):
    """``cupyx.scatter_add``: repeated indices sum (a kernel, in place)."""
    _refuse_other_device(*_gpu_arrays((a, index, values)))
    _run_in_place(lambda: np.add.at(_unwrap(a), _unwrap(index), _unwrap(values)))


def _run(fn):
    """A kernel making new arrays: run now (while capturing too, so the outputs exist
    with their shapes: CuPy allocates them at capture) and, while capturing, recorded to
    write the same outputs at each replay."""
    result = fn()
    if _capturing():
        outs = result if isinstance(result, tuple) else (result,)
        outs = tuple(np.asarray(o) if isinstance(o, np.generic) else o for o in outs)

        def replay(outs=outs):
            new = fn()
            for o, n in zip(outs, new if isinstance(new, tuple) else (new,)):
                np.copyto(o, n)

        _Stream.stack[-1].recorded.append(replay)
        return outs if isinstance(result, tuple) else outs[0]
    return result


def _run_in_place(fn):
    """A kernel writing into arrays it is given: run now, or recorded while capturing
    (a capture does not run it)."""
    if _capturing():
        _Stream.stack[-1].recorded.append(fn)
    else:
        fn()


def _gpu_arrays(obj):
    if isinstance(obj, _GpuArray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for o in obj for a in _gpu_arrays(o)]
    if isinstance(obj, dict):
        return _gpu_arrays(list(obj.values()))
    return []


def _unwrap(obj):
    if isinstance(obj, _GpuArray):
        return obj._a
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    return obj


def _wrap(obj, device_id=None):
    """Results: NumPy arrays and scalars become arrays on the current device."""
    device_id = _Device.runtime.getDevice() if device_id is None else device_id
    if isinstance(obj, (np.ndarray, np.generic)):
        return _GpuArray(np.asarray(obj), device_id)
    if isinstance(obj, tuple):
        items = [_wrap(o, device_id) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_wrap(o, device_id) for o in obj]
    return obj


#: functions array-api-compat's CuPy namespace makes on the current device, dropping
#: ``device=`` (``_aliases`` calls ``_check_device``, which ignores CuPy)
_DROPS_DEVICE = {"zeros", "ones", "empty", "full", "arange", "eye", "linspace",
                 "zeros_like", "ones_like", "empty_like", "full_like"}


class _Namespace(types.ModuleType):
    """``array_api_compat.cupy`` in the stand-in: NumPy's namespace on the arrays above."""

    def __init__(self):
        super().__init__("array_api_compat.cupy")

    def __getattr__(self, name):
        target = getattr(np, name)
        if name.startswith("__") and name != "__array_namespace_info__":
            raise AttributeError(name)
        if not callable(target) or isinstance(target, type) or name in (
                "isdtype", "finfo", "iinfo", "result_type", "can_cast",
                "__array_namespace_info__"):
            return target  # dtypes, constants, dtype functions

        def call(*args, **kwargs):
            if name == "asarray":
                return self._asarray(*args, **kwargs)
            if name in _DROPS_DEVICE:
                kwargs.pop("device", None)
            else:
                assert kwargs.pop("device", None) is None, f"{name}(device=...)"
                _refuse_other_device(*_gpu_arrays((args, kwargs)))
            return _wrap(_run(lambda: target(*_unwrap(args), **{k: _unwrap(v) for k, v in
                                                                 kwargs.items()})))

        return call

    @staticmethod
    def astype(x, dtype, /, *, copy=True, device=None):
        return x.astype(dtype)

    @staticmethod
    def _asarray(obj, dtype=None, device=None, copy=None):
        """array-api-compat's: ``with cupy.cuda.Device(device)``, so the copy lands on
        ``device`` (the current one when None); another device's array is copied over
        (a peer copy, which CuPy allows)."""
        with _Device(device.id if isinstance(device, _Device) else device) as dev:
            if not isinstance(obj, _GpuArray):
                _refuse_sync("H2D transfers")
                return _GpuArray(np.array(obj, dtype=dtype, copy=True), dev.id)
            if obj._device_id == dev.id and not copy and (dtype is None or
                                                          obj.dtype == dtype):
                return obj
            return _GpuArray(_run(lambda: np.array(obj._a, dtype=dtype, copy=True)), dev.id)


#: the stand-in's namespace (one object: xpnet caches the namespace of an array type)
_NAMESPACE = _Namespace()


def _device_kernel(call):
    """A stand-in kernel's ``__call__`` on stand-in arrays: every argument on the current
    device (else CuPy's ValueError), outputs given written in place, new ones made on the
    current device; recorded while a stream captures."""

    def run(self, *args, **kwargs):
        gpu = _gpu_arrays(args)
        if not gpu:
            return call(self, *args, **kwargs)
        _refuse_other_device(*gpu)
        if len(args) == len(self.ins) + len(self.outs):  # outputs given: in place
            _run_in_place(lambda: call(self, *_unwrap(list(args)), **kwargs))
            outs = args[len(self.ins):]
            return outs[0] if len(outs) == 1 else tuple(outs)
        return _wrap(_run(lambda: call(self, *_unwrap(list(args)), **kwargs)))

    return run


def _gpu_special_erf(x):
    """``cupyx.scipy.special.erf`` on the stand-in's arrays (a kernel like the others)."""
    if not isinstance(x, _GpuArray):
        return _special_erf(x)
    _refuse_other_device(x)
    return _wrap(_run(lambda: _special_erf(x._a)))


def _params(spec):
    """CuPy's parameter list ``"T x, T y"`` as [(type, name)]."""
    out = []
    for part in spec.split(","):
        words = part.split()
        assert len(words) == 2, f"parameter {part!r}: expected 'TYPE NAME'"
        assert len(words[0]) == 1, f"parameter {part!r}: expected a type placeholder"
        assert words[1] != "i" and not words[1].startswith("_"), f"reserved name in {part!r}"
        out.append((words[0], words[1]))
    return out


def _statements(body, outputs):
    """The kernel's C statements as Python: ``float a = e;`` -> ``a = e``; an output
    ``y = e;`` -> ``y[...] = e``; also returns the locals it declares."""
    lines, declared, assigned = [], set(), set()
    assert body.strip().endswith(";"), "a statement does not end with ';'"
    for stmt in filter(None, (s.strip() for s in body.split(";"))):
        m = re.fullmatch(r"(float|double)\s+([A-Za-z_]\w*)\s*=\s*(.+)", stmt)
        if m:
            declared.add(m[2])
            lines.append(f"{m[2]} = {m[3]}")
            continue
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(.+)", stmt)
        assert m, f"not a declaration or an assignment: {stmt!r}"
        if m[1] in outputs:
            assigned.add(m[1])
            lines.append(f"{m[1]}[...] = {m[2]}")
        else:
            assert m[1] in declared, f"{m[1]!r} assigned before it is declared"
            lines.append(stmt)
    assert assigned == set(outputs), f"outputs never written: {set(outputs) - assigned}"
    return "\n".join(lines), declared


def _bind_types(ins, outs, in_args, out_args):
    """The dtype of each placeholder, as CuPy decides it: from the array arguments,
    outputs first; two dtypes for one placeholder raise TypeError."""
    types_ = {}
    for (t, name), a in [*zip(outs, out_args), *zip(ins, in_args)]:
        if isinstance(a, np.ndarray):
            if types_.setdefault(t, a.dtype) != a.dtype:
                raise TypeError(f"Type is mismatched. {name} {a.dtype} {types_[t]} {t}")
    return types_


def _environment(ins, in_args, types_):
    env = {**_FUNCTIONS, "erf": _erf, "float": _cast(np.float32), "double": _cast(np.float64)}
    env.update({t: _cast(d) for t, d in types_.items()})
    shape = np.broadcast_shapes(*(a.shape for a in in_args if isinstance(a, np.ndarray)))
    for (t, name), a in zip(ins, in_args, strict=True):
        if t not in types_:
            raise TypeError(f"{name}: placeholder {t} is bound by no array")
        env[name] = (np.broadcast_to(a, shape) if isinstance(a, np.ndarray)
                     else np.asarray(a, dtype=types_[t]))  # a scalar takes T's dtype
    return env, shape


def _cast(dtype):
    return lambda v: np.asarray(v, dtype=dtype)


class _ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        self.name, self.ins, self.outs = name, _params(in_params), _params(out_params)
        _real_of(name)
        self.code, declared = _statements(operation, [n for _, n in self.outs])
        _check_names(self.code, self.ins + self.outs, declared, name)
        _calls.setdefault(name, 0)

    def __call__(self, *args):
        nin = len(self.ins)
        if len(args) not in (nin, nin + len(self.outs)):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be "
                            f"either {nin} or {nin + len(self.outs)} (with outputs), but "
                            f"given {len(args)}.")
        in_args, out_args = list(args[:nin]), list(args[nin:])
        types_ = _bind_types(self.ins, self.outs, in_args, out_args)
        env, shape = _environment(self.ins, in_args, types_)
        shape = np.broadcast_shapes(shape, *(a.shape for a in out_args))
        if not out_args:
            out_args = [np.empty(shape, dtype=types_[t]) for t, _ in self.outs]
        for a in out_args:
            if a.shape != shape:
                raise ValueError("Out shape is mismatched")
        env.update({name: a for (_, name), a in zip(self.outs, out_args, strict=True)})
        exec(self.code, env)  # noqa: S102 - the kernel's own source, translated above
        _calls[self.name] += 1
        return out_args[0] if len(out_args) == 1 else tuple(out_args)

    __call__ = _device_kernel(__call__)


class _ReductionKernel:
    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name="reduce_kernel", reduce_type=None, **kwargs):
        self.name, self.ins, self.outs = name, _params(in_params), _params(out_params)
        assert (reduce_expr, identity) == ("a + b", "0"), "the stand-in reduces sums only"
        assert reduce_type in _C_TYPES, f"reduce_type {reduce_type!r}"
        self.reduce_type, self.map_expr = _C_TYPES[reduce_type], map_expr
        self.post, declared = _statements(post_map_expr + ";", [n for _, n in self.outs])
        _check_names(map_expr, self.ins, set(), name)
        _check_names(self.post, self.outs + [("", "a")], declared, name)
        _calls.setdefault(name, 0)

    def __call__(self, *args, axis=None, keepdims=False):
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError(f"Wrong number of arguments for {self.name}")
        assert len(args) == len(self.ins), "the stand-in makes its outputs"
        types_ = _bind_types(self.ins, self.outs, list(args), [])
        env, _ = _environment(self.ins, list(args), types_)
        mapped = np.asarray(eval(self.map_expr, env), dtype=self.reduce_type)  # noqa: S307
        env["a"] = np.sum(mapped, axis=axis, keepdims=keepdims, dtype=self.reduce_type)
        outs = [np.empty(env["a"].shape, dtype=types_[t]) for t, _ in self.outs]
        env.update({name: a for (_, name), a in zip(self.outs, outs, strict=True)})
        exec(self.post, env)  # noqa: S102
        _calls[self.name] += 1
        return outs[0]

    __call__ = _device_kernel(__call__)


def _real_of(kernel_name):
    real = kernel_name.rsplit("_", 1)[-1]
    assert real in _C_TYPES, f"kernel name {kernel_name!r} does not end in its compute type"
    return real


def _check_names(code, params, declared, kernel):
    """Every name the source reads is a parameter, a local, a cast or a math function,
    and every input parameter is read."""
    known = {n for _, n in params} | declared | set(_FUNCTIONS) | {"erf", "float", "double",
                                                                  "T"}
    used = set(compile(code, kernel, "exec").co_names)
    assert used <= known, f"{kernel}: unknown names {sorted(used - known)}"
    unread = {n for _, n in params} - used - {"a"}
    assert not unread, f"{kernel}: parameters never used {sorted(unread)}"


_calls: dict[str, int] = {}


@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in ``cupy`` module in sys.modules (and ``cupyx.scipy.special.erf``, which
    CupyOps.erf imports), and a fresh CupyOps that builds its kernels from it (its
    ``xp`` is NumPy's namespace)."""
    module = types.ModuleType("cupy")
    module.ElementwiseKernel, module.ReductionKernel = _ElementwiseKernel, _ReductionKernel
    monkeypatch.setitem(sys.modules, "cupy", module)
    for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.special"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["cupyx"].scipy = sys.modules["cupyx.scipy"]
    sys.modules["cupyx.scipy"].special = sys.modules["cupyx.scipy.special"]
    sys.modules["cupyx.scipy.special"].erf = _special_erf
    _calls.clear()
    return CupyOps()


@pytest.mark.parametrize("real", ["float", "double"])
def test_every_kernel_source_fits_its_parameter_lists(fake_cupy, real):
    for name in KERNELS:
        kernel = build_kernel(name, real)  # the stand-in checks names and outputs
        assert kernel.name == f"xpnet_{name}_{real}"
        assert "REAL" not in getattr(kernel, "code", "") + getattr(kernel, "post", "")


def test_stand_in_rejects_what_cupy_rejects(fake_cupy):
    k = build_kernel("sgd_momentum", "float")
    w, g = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        k(g, 0.1, 0.9, w)  # the momentum buffer left out
    with pytest.raises(TypeError, match="Type is mismatched"):
        k(g, np.asarray(0.1), 0.9, w, np.zeros(3, np.float32))  # a float64 coefficient
    with pytest.raises(ValueError, match="Out shape"):
        k(g, 0.1, 0.9, w, np.zeros(1, np.float32))


FAKE_DTYPES = [(np.float32, 3e-6), (np.float64, 1e-13)]


def _kernels_called(*names):
    missing = [n for n in names if not any(k.startswith(f"xpnet_{n}_") and c
                                           for k, c in _calls.items())]
    assert not missing, f"the fused path did not run: {missing}"


@pytest.mark.parametrize("dtype,tol", FAKE_DTYPES)
def test_activation_kernels_on_the_stand_in(fake_cupy, rng, dtype, tol):
    o, ref, xp = fake_cupy, StandardOps(), np
    x = (rng.standard_normal((5, 7)) * 4).astype(dtype)
    dy = rng.standard_normal((5, 7)).astype(dtype)
    pairs = _activation_pairs(o, ref, xp, x, dy)
    _kernels_called(*pairs)
    for name, (got, want) in pairs.items():
        assert got.dtype == want.dtype == dtype, name
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
    # a ctx the fused forward made (x only) still works on the standard path
    gelu_ctx, silu_ctx = o.gelu(xp, x)[1], o.silu(xp, x)[1]
    assert gelu_ctx[1] is None and silu_ctx[1] is None
    o.fused = False
    np.testing.assert_allclose(o.gelu_grad(xp, dy, gelu_ctx),
                               ref.gelu_grad(xp, dy, ref.gelu(xp, x)[1]), rtol=tol, atol=tol)
    np.testing.assert_allclose(o.silu_grad(xp, dy, silu_ctx),
                               ref.silu_grad(xp, dy, ref.silu(xp, x)[1]), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", FAKE_DTYPES)
def test_softmax_xent_kernels_on_the_stand_in(fake_cupy, rng, dtype, tol):
    o, ref = fake_cupy, StandardOps()
    z = (rng.standard_normal((9, 5)) * 30).astype(dtype)
    y = np.eye(5, dtype=dtype)[rng.integers(0, 5, 9)]
    y[0] = [0.5, 0.5, 0, 0, 0]
    rows, ctx = o.softmax_xent(np, z, y)
    want_rows, p = ref.softmax_xent(np, z, y)
    _kernels_called("logsumexp", "xent_rows")
    assert isinstance(ctx, tuple) and rows.shape == (9,) and rows.dtype == dtype
    np.testing.assert_allclose(rows, want_rows, rtol=tol * 10, atol=tol)
    g = o.softmax_xent_grad(np, z, y, ctx, 9)
    _kernels_called("softmax_xent_grad")
    np.testing.assert_allclose(g, ref.softmax_xent_grad(np, z, y, p, 9), rtol=tol * 10,
                               atol=tol)
    o.fused = False  # the fused ctx on the standard path
    np.testing.assert_allclose(o.softmax_xent_grad(np, z, y, ctx, 9),
                               ref.softmax_xent_grad(np, z, y, p, 9), rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("dtype,tol", FAKE_DTYPES)
def test_optimizer_kernels_on_the_stand_in(fake_cupy, rng, dtype, tol):
    o, ref = fake_cupy, StandardOps()

    def arr():
        return rng.standard_normal((4, 3)).astype(dtype)

    for config in SGD_CASES:
        for first in (True, False):
            w, g, buf = arr(), arr(), None if first else arr()
            w2, buf2 = w.copy(), None if first else buf.copy()
            lr = np.asarray(0.1)  # a float64 0-d array, cast for the kernel
            got = o.sgd_update_(np, w, g, buf, lr, **config)
            want = ref.sgd_update_(np, w2, g, buf2, 0.1, **config)
            assert got[0] is w and (first or not config["momentum"] or got[1] is buf)
            for a, b in zip(got, want, strict=True):
                if b is None:
                    assert a is None, config
                else:
                    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=str(config))
    _kernels_called("sgd", "sgd_decay", "sgd_momentum", "sgd_momentum_decay",
                    "sgd_nesterov", "sgd_nesterov_decay")
    for config in ADAM_CASES:
        for first in (True, False):
            w, g = arr(), arr()
            m, v = (None, None) if first else (arr(), np.abs(arr()))
            copies = [w.copy()] + ([None, None] if first else [m.copy(), v.copy()])
            got = o.adam_update_(np, w, g, m, v, 0.002, np.asarray(0.01), 1.05,
                                 betas=(0.9, 0.999), eps=1e-8, **config)
            want = ref.adam_update_(np, copies[0], g, copies[1], copies[2], 0.002, 0.01,
                                    1.05, betas=(0.9, 0.999), eps=1e-8, **config)
            assert got[0] is w and (first or (got[1] is m and got[2] is v))
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol, err_msg=str(config))
    _kernels_called("adam", "adam_l2", "adamw")


def test_other_dtypes_take_the_standard_path(fake_cupy):
    x = np.linspace(-2, 2, 6).astype(np.int64)
    np.testing.assert_array_equal(fake_cupy.tanh_grad(np, x, x), x * (1 - x * x))
    w, g = np.ones(3, np.float32), np.ones(3, np.float64)  # two dtypes
    fake_cupy.sgd_update_(np, w, g, None, 0.5)
    np.testing.assert_array_equal(w, 0.5)
    assert not any(_calls.values())


# -- NumPy's in-place versions take the standard path's bits ----------------------------
def test_numpy_in_place_primitives_equal_the_standard_bits(rng):
    """NumpyOps reorders nothing: its in-place tanh_grad, silu_grad, softmax_xent_grad
    and Adam step give exactly StandardOps' results on NumPy arrays."""
    from xpnet.backends.numpy import NumpyOps

    fast, ref = NumpyOps(), StandardOps()
    for dtype in (np.float32, np.float64):
        x, dy, y = (rng.standard_normal((6, 5)).astype(dtype) for _ in range(3))
        np.testing.assert_array_equal(fast.tanh_grad(np, dy, y), ref.tanh_grad(np, dy, y))
        ctx = ref.silu(np, x)[1]
        np.testing.assert_array_equal(fast.silu_grad(np, dy, ctx), ref.silu_grad(np, dy, ctx))
        np.testing.assert_array_equal(fast.softmax_xent_grad(np, x, y, dy, 6),
                                      ref.softmax_xent_grad(np, x, y, dy, 6))
        for config in ADAM_CASES:
            states = [[rng.standard_normal((6, 5)).astype(dtype), None, None] for _ in "ab"]
            states[1] = [a.copy() if a is not None else None for a in states[0]]
            for t in (1, 2):
                g = rng.standard_normal((6, 5)).astype(dtype)
                for o, state in zip((fast, ref), states, strict=True):
                    state[:] = o.adam_update_(np, *state[:1], g, *state[1:], 0.003, 0.1 / t,
                                              1.2, betas=(0.9, 0.999), eps=1e-8, **config)
                for a, b in zip(*states, strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=str(config))


def test_gpu_bench_turns_fused_kernels_off_only_while_it_runs(monkeypatch):
    import xpnet.backends
    from bench import gpu

    o, seen = CupyOps(), []
    monkeypatch.setattr(xpnet.backends, "ops", lambda xp: o)
    run = gpu.unfused(types.SimpleNamespace(xp=None), lambda: seen.append(o.fused))
    run()
    assert seen == [False] and o.fused
    monkeypatch.setattr(xpnet.backends, "ops", lambda xp: StandardOps())
    plain = object()
    assert gpu.unfused(types.SimpleNamespace(xp=None), plain) is plain  # nothing to turn off


# -- dtypes: what CuPy's own functions return --------------------------------------------
def test_stand_in_erf_widens_float16_as_cupy_does():
    assert _special_erf(np.ones(2, np.float16)).dtype == np.float64
    assert _special_erf(np.ones(2, np.float32)).dtype == np.float32


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard-path"])
def test_erf_and_gelu_keep_float16(fake_cupy, rng, fused):
    """cupyx.scipy.special.erf turns float16 into float64 (its only half loop is e->d);
    CupyOps.erf gives the argument's dtype back, so the unfused GELU (float16 takes the
    standard path: the kernels compute float16 only through fp16 mixed precision's casts)
    stays float16 forward and backward."""
    x = (rng.standard_normal((3, 4)) * 2).astype(np.float16)
    fake_cupy.fused = fused
    got = fake_cupy.erf(np, x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, np.vectorize(math.erf)(x.astype(np.float64)), atol=2e-3)
    y, ctx = fake_cupy.gelu(np, x)
    assert y.dtype == np.float16
    assert fake_cupy.gelu_grad(np, np.ones_like(x), ctx).dtype == np.float16


# -- two devices: arrays and kernels of a model on cuda:1 stay there ----------------------
@pytest.fixture
def two_gpus(monkeypatch):
    """The stand-in CuPy with two devices (device 0 current) as ``cupy``, ``cupyx`` and
    ``array_api_compat.cupy``; xpnet's CuPy adapter opens it and builds fresh ops (their
    kernels the stand-in's). Yields its runtime (``.current``: the current device)."""
    runtime = _Runtime(2)
    monkeypatch.setattr(_Device, "runtime", runtime, raising=False)
    monkeypatch.setattr(_Stream, "stack", [_Stream()], raising=False)
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0 (stand-in)"
    cupy.ndarray, cupy.is_available = _GpuArray, lambda: True
    cupy.ElementwiseKernel, cupy.ReductionKernel = _ElementwiseKernel, _ReductionKernel
    cupy.cuda = types.SimpleNamespace(
        runtime=runtime, Device=_Device, Stream=_Stream,
        MemoryPool=lambda: types.SimpleNamespace(malloc=None),
        using_allocator=lambda malloc: contextlib.nullcontext(),
        get_current_stream=lambda: _Stream.stack[-1])
    cupy.zeros = _NAMESPACE.zeros
    cupy.concatenate = _NAMESPACE.concat
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.special"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["cupyx"].scipy = sys.modules["cupyx.scipy"]
    sys.modules["cupyx"].allow_synchronize = _allow_synchronize
    sys.modules["cupyx"].scatter_add = _scatter_add
    sys.modules["cupyx.scipy"].special = sys.modules["cupyx.scipy.special"]
    sys.modules["cupyx.scipy.special"].erf = _gpu_special_erf
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", _NAMESPACE)
    monkeypatch.setattr(array_api_compat, "cupy", _NAMESPACE, raising=False)
    monkeypatch.setattr(backends.ADAPTERS["cupy"], "_ops", None)  # kernels of this cupy
    monkeypatch.setattr(backends, "_by_namespace", {})
    _calls.clear()
    yield runtime


def test_stand_in_has_cupys_device_rules(two_gpus):
    xp = _NAMESPACE
    with _Device(1):
        a = xp.asarray(np.ones(3, np.float32))
        b = xp.zeros(3, dtype=xp.float32, device=_Device(0))  # array-api-compat drops it
    assert a.device.id == 1 and b.device.id == 1 and two_gpus.current == 0
    with pytest.raises(ValueError, match="different from the current device"):
        a + a  # a kernel on device 0 reading device 1's memory
    with pytest.raises(ValueError, match="different from the current device"):
        build_kernel("sigmoid", "float")(a)
    c = xp.asarray(a, device=_Device(0))  # asarray enters the device: a copy across
    assert c.device.id == 0 and (c + c).device.id == 0
    assert xp.zeros_like(a).device.id == 0  # like CuPy: on the current device
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)


def _mlp_on(be):
    with be:
        xn.seed(0)
        return xn.Sequential(xn.Linear(8, 16), xn.Tanh(), xn.Linear(16, 3))


def test_backend_makes_its_device_current(two_gpus):
    """``with backend:`` (and ``xn.use``) make a CuPy device current, as ``with
    cupy.cuda.Device(1):`` does, and restore the one before."""
    be = xn.backend.make("cupy", "cuda:1")
    with be:
        assert two_gpus.current == 1
        with xn.backend.make("cupy", "cuda:0"):
            assert two_gpus.current == 0
        assert two_gpus.current == 1
    assert two_gpus.current == 0
    with xn.use("cupy", "cuda:1"):
        assert two_gpus.current == 1
    assert two_gpus.current == 0
    xn.use("cupy", "cuda:1")  # like torch.cuda.set_device: holds after the call
    assert two_gpus.current == 1
    xn.use("numpy")
    assert two_gpus.current == 1  # NumPy has no device to make current
    with xn.backend.make("cupy", "cuda:0"):
        assert two_gpus.current == 0
    assert two_gpus.current == 1


def test_a_model_on_cuda1_trains_and_predicts_there(two_gpus, rng):
    """fit, evaluate and predict run on the model's device, whatever device is current:
    every array they make is on cuda:1 (the stand-in refuses a kernel on an array of
    another device, as CuPy does without peer access), and the numbers are NumPy's."""
    x = rng.standard_normal((30, 8)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    runs = {}
    for name, device in (("numpy", "cpu"), ("cupy", "cuda:1")):
        be = xn.backend.make(name, device)
        model = _mlp_on(be)
        opt = xn.Adam(model.parameters(), lr=0.01)
        assert two_gpus.current == 0
        hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
                      batch_size=8, seed=1, progress=False, validation_data=(x, y))
        scores = xn.evaluate(model, x, y)
        out = xn.predict(model, x)
        runs[name] = (hist.history, scores, xn.to_numpy(out), model, opt)
        assert two_gpus.current == 0
    *_, model, opt = runs["cupy"]
    with pytest.raises(ValueError, match="different from the current device"):
        model(be.asarray(x))  # by hand, with device 0 current: CuPy refuses
    with model.backend:  # what fit, evaluate and predict do
        direct = model(be.asarray(x))
    for a in [*model.arrays(), *opt.arrays(), direct]:
        assert xn.backend.backend_of(a).device_name == "cuda:1"
    np.testing.assert_allclose(runs["cupy"][0]["loss"], runs["numpy"][0]["loss"], rtol=1e-5)
    assert runs["cupy"][1] == pytest.approx(runs["numpy"][1], rel=1e-5)
    np.testing.assert_allclose(runs["cupy"][2], runs["numpy"][2], rtol=1e-5, atol=1e-6)
    assert _calls["xpnet_adam_float"]  # the fused kernels ran, on cuda:1


def test_compiled_steps_on_cuda1(two_gpus, rng):
    """compile_step's CUDA graph on cuda:1 with device 0 current: a model with matmuls
    is refused at its first capture (cuBLAS on a capturing stream) and runs eagerly; one
    without is captured (the stand-in records each kernel and a launch replays them) and
    takes the eager steps."""
    import warnings

    from xpnet.train import compiled

    x = rng.standard_normal((8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    builds = {"mlp": lambda: xn.Sequential(xn.Linear(8, 8), xn.Tanh(), xn.Linear(8, 3)),
              "no-gemm": lambda: xn.Sequential(xn.LayerNorm(8), xn.Tanh(), xn.LayerNorm(8))}
    for label, build in builds.items():
        costs = {}
        for name, device, compile in (("numpy", "cpu", False), ("cupy", "cuda:1", True)):
            be = xn.backend.make(name, device)
            with be:
                xn.seed(3)
                model = build()
            step = xn.compile_step(model, xn.SoftmaxCrossEntropy(),
                                   xn.Adam(model.parameters(), lr=0.05))
            xd, yd = be.asarray(x), be.asarray(y)
            compiled._said.clear()
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                costs[name] = [float(xn.to_numpy(step(xd, yd))) for _ in range(5)]
            assert two_gpus.current == 0
            if compile:
                assert all(xn.backend.backend_of(a).device_name == "cuda:1"
                           for a in model.arrays())
                if label == "mlp":
                    assert step.kind == "eager" and "cuBLAS" in step.refused
                    assert any("cuBLAS" in str(w.message) for w in seen)
                else:
                    assert step.kind == "graph" and step.refused is None
                    assert len(step._graphs) == 1
        np.testing.assert_allclose(costs["cupy"], costs["numpy"], rtol=1e-5, err_msg=label)


def test_gradcheck_and_check_layer_on_cuda1(two_gpus, rng):
    """The test kit on a layer of the second device, with device 0 current."""
    from xpnet.testing import check_layer

    be = xn.backend.make("cupy", "cuda:1")
    layer = _mlp_on(be)
    x = be.asarray(rng.standard_normal((4, 8)), dtype="float32")
    assert xn.gradcheck(layer, x)
    check_layer(layer, x)
    assert two_gpus.current == 0


def test_gpu_bench_capture_gain_on_the_stand_in(two_gpus):
    """``bench.gpu --capture`` on CuPy: the step without matmuls is captured (a graph
    replayed), the eager one is not."""
    from bench import gpu

    out = gpu.capture_gain(xn.backend.make("cupy", "cuda:1"), batch=4, width=8, steps=2,
                           rounds=1)
    assert out["eager"][1] == "eager" and out["compiled"][1] == "graph"
    assert two_gpus.current == 0


def test_selftest_on_the_second_stand_in_gpu(two_gpus, capsys):
    """``xpnet selftest --backend cupy --device cuda:1`` with device 0 current: every
    layer, the compiled steps (the MLP's capture refused, the one without matmuls
    captured), the host-read guard (the stand-in's ``cupyx.allow_synchronize``) and the
    training run, all on cuda:1."""
    from xpnet.cli import main

    code = main(["selftest", "--backend", "cupy", "--device", "cuda:1"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line[:34].strip(): line for line in out.splitlines()}
    assert "Stand-in GPU" in rows["versions"]
    assert "kind eager (calling cuBLAS API" in rows["compiled step: MLP"]
    assert "kind graph" in rows["compiled step: no matmul"]
    assert " OK " in rows["no host reads in a step"]
    assert all(" FAIL " not in line for line in rows.values())


def test_selftest_catches_a_host_read_in_a_step(two_gpus, capsys, monkeypatch):
    """A layer that reads a value on the host in every step (``float()``: a stall per
    step on a GPU) fails the host-read check, which names where."""
    from xpnet import selftest
    from xpnet.cli import main

    class Reads(xn.Tanh):
        def forward(self, x, *, train=True):
            if float(xn.backend.backend_of(x).xp.sum(x)) != float("nan"):
                return super().forward(x, train=train)

    monkeypatch.setattr(selftest, "_mlp", lambda: xn.Sequential(xn.Linear(8, 3), Reads()))
    assert main(["selftest", "--backend", "cupy", "--layers", "Linear"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("no host reads"))
    assert " FAIL " in row and "eager MLP" in row and "synchronization" in row, row
