"""Every adapter's fast ops agree with the standard-only reference (StandardOps)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_grads_equal, library

from xpnet import backends
from xpnet.backend import to_numpy
from xpnet.backends import StandardOps

LIBRARIES = ["numpy", "torch", "jax"]


@pytest.mark.parametrize("name", LIBRARIES)
def test_fast_ops_match_standard(name):
    be = library(name)
    xp = be.xp
    fast, ref = backends.ops(xp), StandardOps()
    assert type(fast) is not StandardOps  # a fast path exists for this library
    rng = np.random.default_rng(0)

    def arr(host):
        return be.asarray(host)

    x, W = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(
        np.float32)
    b, dy = rng.standard_normal(3).astype(np.float32), rng.standard_normal((5, 4)).astype(
        np.float32)
    y = 1 / (1 + np.exp(-x))
    cases = [
        ("linear", (x, W, b)), ("linear", (x, W, None)), ("relu", (x,)),
        ("relu_grad", (dy, np.maximum(x, 0))), ("keep", (dy, x > 0)), ("sigmoid", (x * 50,)),
        ("sigmoid_grad", (dy, y.astype(np.float32))), ("sum_axes", (x, 0)),
        ("sub_scaled_", (x, 0.1, dy)), ("scale_add_", (x, 0.9, dy)),
        ("scale_add_", (x, 0.9, dy, 0.25)),
    ]
    for op, args in cases:
        a = [arr(v) if isinstance(v, np.ndarray) else v for v in args]
        r = [arr(v) if isinstance(v, np.ndarray) else v for v in args]
        got = to_numpy(getattr(fast, op)(xp, *a))
        want = to_numpy(getattr(ref, op)(xp, *r))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=op)
        assert got.dtype == np.float32, op
    np.testing.assert_allclose(to_numpy(ref.sum_axes(xp, arr(x), 0)), x.sum(axis=0), rtol=1e-6)
    onehot = np.eye(4, dtype=np.float32)[[0, 3, 1, 1, 2]]
    for got, want in zip(fast.softmax_xent(xp, arr(x * 30), arr(onehot)),
                         ref.softmax_xent(xp, arr(x * 30), arr(onehot)), strict=True):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LIBRARIES)
def test_updates_in_place_where_the_library_allows(name):
    be = library(name)
    xp, ops = be.xp, backends.ops(be.xp)
    v, g = be.asarray(np.ones(3, dtype=np.float32)), be.asarray(np.full(3, 2.0, np.float32))
    kept = ops.sub_scaled_(xp, v, 0.5, g)
    np.testing.assert_array_equal(to_numpy(kept), np.zeros(3))
    if name == "jax":  # immutable: a new array, the old one untouched
        np.testing.assert_array_equal(to_numpy(v), np.ones(3))
    else:
        assert kept is v
    target = be.asarray(np.zeros((2, 4), dtype=np.float32))
    key = (slice(None), slice(1, 3))
    target = ops.add_at(xp, target, key, be.asarray(np.ones((2, 2), np.float32)))
    target = ops.add_at(xp, target, key, be.asarray(np.ones((2, 2), np.float32)))
    target = ops.set_at(xp, target, (slice(None), slice(3, 4)),
                        be.asarray(np.full((2, 1), 7.0, np.float32)))
    np.testing.assert_array_equal(to_numpy(target), [[0, 2, 2, 7], [0, 2, 2, 7]])


@pytest.mark.parametrize("stride,padding,dims", [(1, 0, 1), (2, 1, 1), (1, 1, 2), (2, 0, 2)])
def test_torch_convolution_matches_im2col(stride, padding, dims):
    be = library("torch")
    xp, fast, ref = be.xp, backends.ops(be.xp), StandardOps()
    rng = np.random.default_rng(1)
    spatial = (9,) * dims
    x = be.asarray(rng.standard_normal((2, 3, *spatial)), dtype="float64")
    W = be.asarray(rng.standard_normal((4, 3, *(3,) * dims)), dtype="float64")
    b = be.asarray(rng.standard_normal(4), dtype="float64")
    st, pd = (stride,) * dims, (padding,) * dims
    y_fast, ctx_fast = fast.conv_forward(xp, x, W, b, st, pd)
    y_ref, ctx_ref = ref.conv_forward(xp, x, W, b, st, pd)
    np.testing.assert_allclose(to_numpy(y_fast), to_numpy(y_ref), rtol=1e-12, atol=1e-12)
    dy = be.asarray(rng.standard_normal(tuple(y_ref.shape)), dtype="float64")
    for need_input in (True, False):
        got = fast.conv_backward(xp, ctx_fast, dy, need_input)
        want = ref.conv_backward(xp, ctx_ref, dy, need_input)
        assert_grads_equal(got, want)


def test_other_libraries_take_the_standard_path():
    be = library("array_api_strict")
    assert type(backends.ops(be.xp)) is StandardOps


@pytest.mark.parametrize("name", LIBRARIES)
def test_gelu_fast_path_matches_standard(name):
    """Exact GELU and its gradient: each library's ops against StandardOps in float64
    (math.erf underneath). NumPy's float32 path uses its own rational erf (|error| <=
    1.5e-7), so it is held to float32 rounding of values up to 8, not to equality."""
    import math

    be = library(name)
    xp = be.xp
    fast = backends.ops(xp)
    host = np.concatenate([np.linspace(-8, 8, 4001), [0.0, -0.0, 1e-8, -1e-8]])
    dy = np.random.default_rng(0).standard_normal(host.shape)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in host])
    ref_y = host * phi
    ref_g = dy * (phi + host * np.exp(-0.5 * host * host) / math.sqrt(2 * math.pi))
    for dtype, tol in (("float32", 1e-6), ("float64", 1e-12)):
        y, ctx = fast.gelu(xp, be.asarray(host, dtype=dtype))
        g = fast.gelu_grad(xp, be.asarray(dy, dtype=dtype), ctx)
        assert y.dtype == be.dtype(dtype) and g.dtype == be.dtype(dtype)
        np.testing.assert_allclose(to_numpy(y), ref_y, rtol=tol, atol=tol)
        np.testing.assert_allclose(to_numpy(g), ref_g, rtol=tol, atol=tol * 4)
