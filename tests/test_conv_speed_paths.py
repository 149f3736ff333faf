"""NumPy's fast convolution and max-pooling paths against the standard-only reference.

``NumpyOps.conv_forward``/``conv_backward`` lay im2col out channel-major with one
``as_strided`` gather (a flat grid with stride 1, the output positions otherwise) and
``pool_forward``/``pool_backward`` keep each window's winning offset: each is checked
against ``StandardOps`` on the same arrays, on every layout it can choose, and the
layers that use them against ``torch.nn`` and through ``check_layer`` on every case.
``JaxOps.conv_forward``/``conv_backward`` (XLA's convolution) are checked the same way.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import xpnet as xn
from xpnet import _windows
from xpnet.backends import StandardOps
from xpnet.backends.numpy import NumpyOps, _ConvTape, _PoolTape
from xpnet.testing import check_layer

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


def _assert_grads_equal(got, want):
    """``(dx, dW, db)`` of a fast path against the standard one's (None where it is)."""
    for g, w, what in zip(got, want, ("dx", "dW", "db"), strict=True):
        if w is None:
            assert g is None, what
        else:
            g = np.asarray(g)
            assert g.shape == w.shape, what
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11, err_msg=what)


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
            _assert_grads_equal(got, want)


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
            _assert_grads_equal(got, want)


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


def test_conv_net_matches_torch_float64():
    """Bench (d)'s network, small: both convolutions on NumPy's flat path (and the
    first one's per-tap weight gradient), both poolings on the winner path, against
    torch.nn with the same weights: output, input and every parameter gradient."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    nn = torch.nn
    with xn.use("numpy"):
        xn.seed(3)
        model = xn.Sequential(xn.Conv2D(1, 4, 3, padding=1, dtype="float64"), xn.ReLU(),
                              xn.MaxPool2D(2),
                              xn.Conv2D(4, 6, 3, padding=1, dtype="float64"), xn.ReLU(),
                              xn.MaxPool2D(2), xn.Flatten())
    ref = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten()).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, 12, 12))
    y = model.forward(x)
    conv = model[0]
    assert isinstance(conv._ctx, _ConvTape) and conv._ctx.lattice.flat and conv._ctx.per_tap
    assert isinstance(model[3]._ctx, _ConvTape)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("kind, args, shape", [
    ("Conv2D", (2, 3, 3), (1, 2, 8, 8)),        # NumPy: flat grid, per-tap dW
    ("Conv2D", (5, 2, 3), (1, 5, 8, 8)),        # NumPy: flat grid, dW from cols
    ("Conv1D", (3, 2, 3), (2, 3, 12)),          # NumPy: a 1-D flat grid
])
def test_fast_path_layers_check_layer(be, rng, kind, args, shape):
    """check_layer on NumPy's fast-path shapes (it also runs copies on torch's meta
    device and array-api-strict's device1); the other cases run these layers in
    test_conv.py and test_conv_groups.py."""
    if be.name != "numpy":
        pytest.skip("these shapes choose NumPy-only paths; other backends: test_conv.py")
    layer = getattr(xn, kind)(*args, padding=1)
    check_layer(layer, be.asarray(rng.standard_normal(shape), dtype="float32"))

