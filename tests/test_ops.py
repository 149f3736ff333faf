"""Every adapter's fast ops agree with the standard-only reference (StandardOps), and the
primitives under the sequence layers (``erf``, ``rows_add``) with NumPy and math.erf;
NumPy's fast convolution and pooling paths and JAX's convolution, on every layout."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
from conftest import assert_on
from helpers import assert_grads_equal, library

import xpnet as xn
from xpnet import _compat, _windows, backends
from xpnet.backend import to_numpy
from xpnet.backends import StandardOps
from xpnet.backends.numpy import NumpyOps, _ConvTape, _PoolTape

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


# -- NumPy's fast convolution and max-pooling paths (and JAX's convolution) --------------
# NumpyOps.conv_forward/conv_backward lay im2col out channel-major with one as_strided
# gather (a flat grid with stride 1, the output positions otherwise) and
# pool_forward/pool_backward keep each window's winning offset: each is checked against
# StandardOps on the same arrays, on every layout it can choose; the layers that use
# them are checked against torch.nn and through check_layer in test_conv.py.
# JaxOps.conv_forward/conv_backward (XLA's convolution) are checked the same way.
# (input shape, weight shape, stride, padding, dilation)
CONVS = [
    ((3, 2, 9, 8), (4, 2, 3, 3), (1, 1), (1, 1), None),
    ((3, 2, 9, 8), (4, 2, 3, 2), (2, 1), (1, 0), None),
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (2, 1), (2, 1)),
    ((2, 6, 7, 7), (5, 6, 2, 2), (1, 1), (0, 0), None),
    ((2, 2, 6, 6), (3, 2, 6, 6), (1, 1), (0, 0), None),     # one window per example
    ((3, 2, 11), (5, 2, 3), (2,), (1,), None),
    ((3, 5, 11), (4, 5, 3), (1,), (1,), (3,)),
    ((2, 2, 4, 5, 6), (3, 2, 2, 3, 2), (1, 1, 1), (1, 0, 1), None),
    ((2, 2, 4, 5, 6), (3, 2, 2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2)),
]


def _ops(grid: str, dw: str) -> NumpyOps:
    """NumpyOps forced onto one grid ("flat" where stride allows, or "exact") and one
    weight-gradient form ("per_tap" from the padded input, or "cols")."""
    ops = NumpyOps()
    ops.conv_flat_waste = 1.0 if grid == "flat" else -1.0
    ops.conv_tap_dw_channels = 1 << 20 if dw == "per_tap" else 0
    return ops


@pytest.mark.parametrize("grid, dw", [("flat", "per_tap"), ("flat", "cols"),
                                      ("exact", "cols")])
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_numpy_conv_matches_standard(case, grid, dw):
    shape, wshape, stride, padding, dilation = CONVS[case]
    rng = np.random.default_rng(case)
    x, W = rng.standard_normal(shape), rng.standard_normal(wshape)
    fast, ref = _ops(grid, dw), StandardOps()
    for b in (rng.standard_normal(wshape[0]), None):
        y, ctx = fast.conv_forward(np, x, W, b, stride, padding, dilation)
        y_ref, ctx_ref = ref.conv_forward(np, x, W, b, stride, padding, dilation)
        assert isinstance(ctx, _ConvTape)  # the fast path, not a fallback
        flat = grid == "flat" and all(s == 1 for s in stride)
        assert ctx.lattice.flat == flat
        assert ctx.per_tap == (flat and dw == "per_tap")
        assert y.shape == y_ref.shape and y.flags.c_contiguous
        assert not np.shares_memory(y, ctx.cols)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        for need_input in (True, False):
            got = fast.conv_backward(np, ctx, dy, need_input)
            want = ref.conv_backward(np, ctx_ref, dy, need_input)
            assert_grads_equal(got, want)


def test_numpy_conv_float32_and_grouped():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 4, 10, 10)).astype(np.float32)
    W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    fast, ref = NumpyOps(), StandardOps()
    y, ctx = fast.conv_forward(np, x, W, b, (1, 1), (1, 1))
    y_ref, ctx_ref = ref.conv_forward(np, x, W, b, (1, 1), (1, 1))
    assert y.dtype == np.float32 and isinstance(ctx, _ConvTape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for g, w in zip(fast.conv_backward(np, ctx, dy, True),
                    ref.conv_backward(np, ctx_ref, dy, True), strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # groups > 1: the standard path, whole
    Wg = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    y, ctx = fast.conv_forward(np, x, Wg, b, (1, 1), (1, 1), None, 2)
    y_ref, _ = ref.conv_forward(np, x, Wg, b, (1, 1), (1, 1), None, 2)
    assert not isinstance(ctx, _ConvTape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    assert fast.conv_backward(np, ctx, y, True)[0].shape == x.shape


@pytest.mark.parametrize("case", range(len(CONVS) + 1))
def test_jax_conv_matches_standard(case):
    """JaxOps' convolution (XLA's own, backward by its transposes) against the
    standard im2col path, float64, with and without bias and the input gradient; the
    last case is grouped and strided."""
    pytest.importorskip("jax", reason="jax is not installed")
    from xpnet.backends.jax import JaxOps, _JaxConvTape

    xn.use("jax")  # float64 enabled
    import jax.numpy as jnp

    if case < len(CONVS):
        shape, wshape, stride, padding, dilation = CONVS[case]
        groups = 1
    else:
        shape, wshape, stride, padding, dilation, groups = (
            (2, 4, 7, 6), (6, 2, 3, 3), (1, 2), (1, 1), None, 2)
    rng = np.random.default_rng(case)
    x, W = rng.standard_normal(shape), rng.standard_normal(wshape)
    fast, ref = JaxOps(), StandardOps()
    for b in (rng.standard_normal(wshape[0]), None):
        args = (stride, padding, dilation, groups)
        y, ctx = fast.conv_forward(jnp, jnp.asarray(x), jnp.asarray(W),
                                   None if b is None else jnp.asarray(b), *args)
        y_ref, ctx_ref = ref.conv_forward(np, x, W, b, *args)
        assert isinstance(ctx, _JaxConvTape) and y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y_ref.shape)
        for need_input in (True, False):
            got = fast.conv_backward(jnp, ctx, jnp.asarray(dy), need_input)
            want = ref.conv_backward(np, ctx_ref, dy, need_input)
            assert_grads_equal(got, want)


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_lattice_places_every_tap(case):
    """Every kept window's tap sits where the padded batch, laid out row-major, holds
    it: ``m P + sum((o_i s_i + t_i d_i) * step_i)``; dropped windows are exactly the
    grid's positions that ``crop`` leaves out."""
    shape, wshape, stride, padding, dilation = CONVS[case]
    for flat in (True, False):
        lat = _windows.Lattice(shape[0], shape[2:], wshape[2:], stride, padding, dilation,
                               flat)
        dil = dilation or (1,) * len(stride)
        steps = [math.prod(lat.padded[i + 1:]) for i in range(len(lat.padded))]
        grid_shape, key = lat.crop()
        starts = np.zeros(lat.grid, dtype=np.int64)
        for axis, (g, s) in enumerate(zip(lat.grid, lat.grid_steps, strict=True)):
            starts += (np.arange(g) * s).reshape((-1,) + (1,) * (len(lat.grid) - axis - 1))
        kept = starts.reshape(grid_shape)[key]
        assert kept.shape == (shape[0], *lat.outs)
        assert lat.waste() == pytest.approx(1 - kept.size / starts.size)
        for pos in itertools.product(*(range(n) for n in kept.shape)):
            m, out = pos[0], pos[1:]
            for tap, offset in zip(lat.taps, lat.tap_offsets, strict=True):
                want = m * lat.padded_size + sum(
                    (o * s + t * d) * st
                    for o, s, t, d, st in zip(out, stride, tap, dil, steps, strict=True))
                assert kept[pos] + offset == want
                assert want < lat.flat_size


POOLS = [  # (shape, kernel, stride)
    ((2, 3, 8, 8), (2, 2), (2, 2)),
    ((2, 3, 7, 9), (2, 2), (2, 2)),       # odd sizes: windows leave a border
    ((2, 3, 7, 9), (3, 2), (1, 2)),       # overlapping rows
    ((2, 3, 9, 9), (3, 3), (2, 2)),
    ((2, 3, 11), (3,), (2,)),
    ((2, 3, 11), (1,), (2,)),             # a one-element window
    ((2, 2, 4, 5, 6), (2, 2, 2), (2, 1, 2)),
]


@pytest.mark.parametrize("shape, kernel, stride", POOLS)
def test_numpy_pool_matches_standard(shape, kernel, stride):
    rng = np.random.default_rng(len(shape) * 10 + kernel[0])
    fast, ref = NumpyOps(), StandardOps()
    for ties in (False, True):
        x = rng.standard_normal(shape).astype(np.float32)
        if ties:
            x = np.round(x)  # many windows share their maximum between several offsets
        for mode in ("max", "avg"):
            y, ctx = fast.pool_forward(np, x, kernel, stride, mode, True)
            y_ref, ctx_ref = ref.pool_forward(np, x, kernel, stride, mode, True)
            assert isinstance(ctx, _PoolTape) == (mode == "max")
            np.testing.assert_array_equal(y, y_ref)
            assert not np.shares_memory(y, x)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = fast.pool_backward(np, ctx, dy)
            assert dx.shape == x.shape and dx.dtype == np.float32
            np.testing.assert_allclose(dx, ref.pool_backward(np, ctx_ref, dy),
                                       rtol=1e-6, atol=1e-6)
            y_inf, none = fast.pool_forward(np, x, kernel, stride, mode, False)
            assert none is None
            np.testing.assert_array_equal(y_inf, y_ref)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1), (3, 2)])
def test_max_pool_ties_go_to_the_first_maximum_as_torch(k, s):
    """Windows whose maximum appears several times (top-right and bottom-left, say):
    the gradient goes to the first one in row-major order, on both paths, as torch."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(11)
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(np.float64)
    dy_shape = (2, 3, (7 - k) // s + 1, (8 - k) // s + 1)
    dy = rng.standard_normal(dy_shape)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, k, s).backward(torch.tensor(dy))
    for ops in (NumpyOps(), StandardOps()):
        _, ctx = ops.pool_forward(np, x, (k, k), (s, s), "max", True)
        np.testing.assert_allclose(ops.pool_backward(np, ctx, dy), xt.grad.numpy(),
                                   rtol=1e-12, atol=1e-12)  # overlaps sum in any order


# -- layer norm, Adam, counter draws: each library's fast path against the standard ------
@pytest.mark.parametrize("name", LIBRARIES)
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_layer_norm_fast_path_matches_standard(name, affine):
    """``layer_norm`` and ``layer_norm_grad``: y, dx, dweight, dbias as StandardOps gives
    them, on (N, L, D) inputs with an offset and scale that make the statistics matter."""
    be = library(name)
    xp = be.xp
    fast, ref = backends.ops(xp), StandardOps()
    assert type(fast).layer_norm is not StandardOps.layer_norm or name == "jax"
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 16)) * 4 + 2
    dy = rng.standard_normal((3, 5, 16))
    w, b = rng.standard_normal(16), rng.standard_normal(16)
    for dtype, tol in (("float32", 2e-5), ("float64", 1e-12)):
        def arr(host, dtype=dtype):
            return be.asarray(host, dtype=dtype)

        weight = arr(w) if affine != "none" else None
        bias = arr(b) if affine == "weight+bias" else None
        results = []
        for o in (fast, ref):
            y, ctx = o.layer_norm(xp, arr(x), weight, bias, 1e-5)
            results.append((y, *o.layer_norm_grad(xp, arr(dy), ctx, weight, bias)))
        for what, got, want in zip(("y", "dx", "dweight", "dbias"), *results, strict=True):
            if want is None:
                assert got is None, what
                continue
            assert got.dtype == be.dtype(dtype), what
            np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=tol, atol=tol,
                                       err_msg=f"{what} {dtype}")


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("as_array", [False, True])
def test_adam_update_fast_path_matches_standard(name, decoupled, weight_decay, as_array):
    """Three steps from no moments, coefficients as floats or (compiled steps) 0-d
    arrays: the same value and moments as StandardOps, updated in place."""
    be = library(name)
    xp = be.xp
    fast, ref = backends.ops(xp), StandardOps()
    assert type(fast).adam_update_ is not StandardOps.adam_update_
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((4, 6)).astype(np.float32)
    states = {"fast": [be.asarray(w0), None, None], "ref": [be.asarray(w0), None, None]}
    for t in range(1, 4):
        g = rng.standard_normal((4, 6)).astype(np.float32)
        coefficients = (0.001 * weight_decay, 0.001 / (1 - 0.9 ** t), 1 / math.sqrt(1 - 0.999 ** t))
        if as_array:
            coefficients = tuple(be.asarray(np.float32(c)) for c in coefficients)
        for key, o in (("fast", fast), ("ref", ref)):
            value = states[key][0]
            out = o.adam_update_(xp, value, be.asarray(g), *states[key][1:], *coefficients,
                                 betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                                 decoupled=decoupled)
            if key == "fast":
                assert out[0] is value  # in place
            states[key] = list(out)
    for what, got, want in zip(("value", "m", "v"), states["fast"], states["ref"], strict=True):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-6, atol=1e-9,
                                   err_msg=what)


def test_torch_eager_draws_are_the_standard_counter_draws():
    """torch's eager dropout draws (int32, in place) are bit for bit the standard counter
    generator's, which compiled steps trace: same key, position and shape, same numbers."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from xpnet.backends.standard import counter_uniform, fold_key
    from xpnet.backends.torch import counter_uniform_int32

    be = library("torch")
    for prefix, position, shape in (((0, 0), 0, (7,)), ((3, 5), 12, (4, 33)),
                                    ((2**40 + 3, 9), 2**33 + 5, (12, 4, 64, 64)),
                                    ((1, 2**63 - 1), 2**32 - 1, (3, 1, 1000))):
        key = fold_key(prefix)
        want = counter_uniform(be.xp, shape, torch.float32, "cpu", key, position)
        got = counter_uniform_int32(torch, shape, torch.float32, "cpu", key, position)
        assert got.dtype == torch.float32 and tuple(got.shape) == shape
        assert torch.equal(got, want), (prefix, position)
        like = torch.zeros((), dtype=torch.float64)
        drawn = backends.ADAPTERS["torch"].uniform(like, shape, (*prefix, position))
        assert drawn.dtype == torch.float64
        assert torch.equal(drawn, want.double())


def test_jax_draws_are_counter_hashes_eager_and_jitted():
    """JAX's draws: element i is ``hash(hash(i ^ k) + k) >> 8`` over 2**24, ``k`` from the
    key's words and the position (NumPy uint32 below), the same eagerly and in jit."""
    jax = pytest.importorskip("jax", reason="jax is not installed")
    from xpnet.backends.jax import prefix_key, uniform_at
    from xpnet.backends.standard import hash32

    def h(x):
        return np.asarray(hash32(x.astype(np.int64)) if isinstance(x, np.ndarray)
                          else hash32(int(x)), dtype=np.uint32)

    be = library("jax")
    like = be.asarray(np.zeros((), np.float32))
    for prefix, position, shape in (((0, 0), 0, (5,)), ((3, 2**40 + 1), 77, (4, 3, 9))):
        key = prefix_key(prefix)
        w0, w1 = (int(v) for v in np.asarray(jax.random.key_data(key)))
        k = int(h(w0 ^ int(h(w1 ^ int(h(position))))))
        idx = np.arange(int(np.prod(shape)), dtype=np.uint32)
        bits = h((h(idx ^ np.uint32(k)).astype(np.uint64) + k) % 2**32)
        want = ((bits >> 8).astype(np.float32) * np.float32(2**-24)).reshape(shape)
        eager = np.asarray(uniform_at(like, shape, key, position))
        jitted = np.asarray(jax.jit(lambda p, key=key, shape=shape:
                                    uniform_at(like, shape, key, p))(np.uint32(position)))
        np.testing.assert_array_equal(eager, want)
        np.testing.assert_array_equal(jitted, want)
    many = np.asarray(uniform_at(like, (200_000,), prefix_key((1, 2)), 3))
    assert 0.0 <= many.min() and many.max() < 1.0 and abs(many.mean() - 0.5) < 0.005


@pytest.mark.parametrize("name", LIBRARIES)
def test_layer_norm_with_half_parameters_as_standard(name):
    """Mixed precision: float32 statistics with float16 parameters, as the standard
    path's type promotion computes them (torch's ATen kernel refuses mixed dtypes)."""
    be = library(name)
    xp = be.xp
    fast, ref = backends.ops(xp), StandardOps()
    rng = np.random.default_rng(5)
    x, dy = (be.asarray(rng.standard_normal((4, 8)), dtype="float32") for _ in range(2))
    w, b = (xp.astype(be.asarray(rng.standard_normal(8), dtype="float32"), xp.float16)
            for _ in range(2))
    results = []
    for o in (fast, ref):
        y, ctx = o.layer_norm(xp, x, w, b, 1e-5)
        results.append((y, *o.layer_norm_grad(xp, dy, ctx, w, b)))
    for what, got, want in zip(("y", "dx", "dweight", "dbias"), *results, strict=True):
        assert got.dtype == want.dtype == be.dtype("float32"), what
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=2e-5, atol=2e-5,
                                   err_msg=what)
