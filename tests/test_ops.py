"""Every adapter's fast ops agree with the standard-only reference (StandardOps), and the
primitives under the sequence layers (``erf``, ``rows_add``) with NumPy and math.erf."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import assert_on
from helpers import assert_grads_equal, library

from xpnet import _compat, backends
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


# -- erf ------------------------------------------------------------------------------
def test_standard_erf_matches_math_erf():
    """The standard-only erf against math.erf on a dense grid, the tails and the edges."""
    x = np.concatenate([np.linspace(-30, 30, 60001), np.linspace(2.4, 2.6, 2001),
                        np.geomspace(1e-300, 6, 2000), -np.geomspace(1e-300, 6, 2000)])
    want = np.array([math.erf(v) for v in x])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = _compat.erf(np, x)
    assert got.dtype == np.float64
    assert np.max(np.abs(got - want)) < 3e-15
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)) < 3e-15
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e300, -1e300])
    out = _compat.erf(np, edges)
    np.testing.assert_array_equal(out[:4], [0.0, -0.0, 1.0, -1.0])
    assert list(np.signbit(out[:2])) == [False, True]
    assert np.isnan(out[4])
    np.testing.assert_array_equal(out[5:], [math.erf(5e-324), 1.0, -1.0])
    x32 = x.astype(np.float32)
    got32 = _compat.erf(np, x32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, [math.erf(v) for v in x32.astype(np.float64)],
                               rtol=0, atol=6e-7)


def test_standard_erf_on_a_device():
    d1 = library("array_api_strict", "device1")
    x = np.linspace(-6, 6, 241)
    got = _compat.erf(d1.xp, d1.asarray(x, dtype="float64"))
    assert_on(d1, got, "float64")
    np.testing.assert_allclose(to_numpy(got), [math.erf(v) for v in x], rtol=0, atol=3e-15)


@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "cupy"])
def test_erf_of_each_library_matches_the_standard_one(name):
    be = library(name)
    xp, fast = be.xp, backends.ops(be.xp)
    x_host = np.concatenate([np.linspace(-7, 7, 2801), [0.0, -0.0, np.inf, -np.inf]])
    for dtype, tol in [("float64", 1e-14), ("float32", 1e-6)]:
        if not be.supports(dtype):
            continue
        x = be.asarray(x_host, dtype=dtype)
        got = fast.erf(xp, x)
        assert_on(be, got, dtype)
        # the standard one, on the same values (on the host: it is the same code)
        want = _compat.erf(np, to_numpy(x))
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=tol)
        np.testing.assert_array_equal(np.signbit(to_numpy(got)), np.signbit(want))
    assert type(fast).erf is not StandardOps.erf  # the library's own


def test_numpy_erf_without_scipy_uses_the_standard_one(monkeypatch):
    from xpnet.backends import numpy as np_backend

    monkeypatch.setattr(np_backend, "_special", [None])
    x = np.linspace(-4, 4, 101)
    got = backends.ops(np).erf(np, x)
    np.testing.assert_array_equal(got, _compat.erf(np, x))


# -- rows_add -------------------------------------------------------------------------
def _rows_add_cases(rng):
    """(n_rows, index, values, reference) with repeated indices, an empty index, rows
    nothing names."""
    out = []
    for n_rows, m in [(6, 20), (50, 9), (4, 0)]:
        index = rng.integers(0, n_rows, m)
        if m > 3:
            index[:3] = index[-1]  # at least one id three more times
        values = rng.standard_normal((m, 3))
        ref = np.zeros((n_rows, 3))
        for i, r in enumerate(index):
            ref[r] += values[i]
        out.append((n_rows, index, values, ref))
    return out


@pytest.mark.parametrize("name, how", [
    *[(lib, "library") for lib in ("numpy", "torch", "jax", "cupy")],  # the fast paths
    *[(lib, how) for lib in ("numpy", "array_api_strict", "torch")  # the standard ones
      for how in ("onehot", "sorted")]])
def test_rows_add_sums_repeated_indices(name, how, rng):
    be = library(name, "device1" if name == "array_api_strict" else None)
    xp = be.xp
    fns = {"library": [backends.ops(xp).rows_add], "onehot": [StandardOps().rows_add_onehot],
           "sorted": [StandardOps().rows_add_sorted]}[how]
    if how == "library":
        assert type(backends.ops(xp)).rows_add is not StandardOps.rows_add
        scatter = copy.copy(backends.ops(xp))  # NumPy's own scatter even for small tables
        scatter.rows_add_onehot_limit = 0
        fns.append(scatter.rows_add)
    dtype = "float64" if be.supports("float64") else "float32"
    for fn in fns:
        for index_dtype in ("int64", "int32"):
            for n_rows, index, values, ref in _rows_add_cases(rng):
                got = fn(xp, n_rows, be.asarray(index, dtype=index_dtype),
                         be.asarray(values, dtype=dtype))
                assert_on(be, got, dtype)
                np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-6, atol=1e-6)


def test_rows_add_picks_its_branch_by_size(monkeypatch):
    ops = StandardOps()
    calls = []
    monkeypatch.setattr(ops, "rows_add_onehot", lambda *a: calls.append("onehot"))
    monkeypatch.setattr(ops, "rows_add_sorted", lambda *a: calls.append("sorted"))
    index = np.zeros(10, dtype=np.int64)
    ops.rows_add(np, 100, index, np.ones((10, 2)))
    ops.rows_add_onehot_limit = 999
    ops.rows_add(np, 100, index, np.ones((10, 2)))
    assert calls == ["onehot", "sorted"]
