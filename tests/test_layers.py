"""Linear and Sequential on every backend case: check_layer (gradcheck, device and
dtype, meta, device1), NumPy references (Linear on any leading shape), torch.nn.Linear
in float64; float64 layers; inputs and arguments of the wrong kind named at once."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on
from helpers import torch_compare, wide

import xpnet as xn
from xpnet.backend import to_numpy
from xpnet.testing import check_layer


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _linear_ref(layer, x):
    W = xn.to_numpy(layer.weight.value).astype(np.float64)
    b = xn.to_numpy(layer.bias.value).astype(np.float64)
    return np.einsum("ni,oi->no", x, W) + b


def _input(rng, shape, avoid_zero=False):
    x = rng.standard_normal(shape)
    if avoid_zero:  # finite differences across ReLU's kink are meaningless
        x = np.where(np.abs(x) < 0.1, 0.5, x)
    return x


def test_linear(be, rng):
    layer = xn.Linear(4, 3)
    x_host = _input(rng, (6, 4))
    x = be.asarray(x_host, dtype="float32")
    assert tuple(layer.weight.value.shape) == (3, 4)
    assert tuple(layer.bias.value.shape) == (3,)
    # nonzero bias so the reference checks it is added
    layer.bias.value = be.asarray(rng.standard_normal(3), dtype="float32")
    y = layer.forward(x)
    np.testing.assert_allclose(xn.to_numpy(y), _linear_ref(layer, x_host.astype(np.float32)),
                               rtol=1e-5, atol=1e-5)
    check_layer(layer, x)


def test_linear_backward_matches_formulas(be, rng):
    """dW = delta.T @ X, db = sum(delta), dX = delta @ W, written out with loops."""
    layer = xn.Linear(3, 2)
    x_host = rng.standard_normal((4, 3)).astype(np.float32)
    d_host = rng.standard_normal((4, 2)).astype(np.float32)
    layer.forward(be.asarray(x_host))
    dx = layer.backward(be.asarray(d_host))
    W = xn.to_numpy(layer.weight.value)
    gW = np.zeros((2, 3))
    gb = np.zeros(2)
    gx = np.zeros((4, 3))
    for n in range(4):
        for o in range(2):
            gb[o] += d_host[n, o]
            for i in range(3):
                gW[o, i] += d_host[n, o] * x_host[n, i]
                gx[n, i] += d_host[n, o] * W[o, i]
    np.testing.assert_allclose(xn.to_numpy(layer.weight.grad), gW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.to_numpy(layer.bias.grad), gb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.to_numpy(dx), gx, rtol=1e-5, atol=1e-6)
    assert_on(be, dx)


def test_backward_adds_into_grad(be, rng):
    layer = xn.Linear(3, 2)
    x = be.asarray(rng.standard_normal((4, 3)), dtype="float32")
    d = be.asarray(rng.standard_normal((4, 2)), dtype="float32")
    layer.forward(x)
    layer.backward(d)
    once = xn.to_numpy(layer.weight.grad).copy()
    layer.forward(x)
    layer.backward(d)
    np.testing.assert_allclose(xn.to_numpy(layer.weight.grad), 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_sequential_mlp(be, rng):
    model = xn.Sequential(xn.Linear(4, 6), xn.Tanh(), xn.Linear(6, 5), xn.ReLU(),
                          xn.Linear(5, 3), xn.Sigmoid())
    x_host = _input(rng, (7, 4))
    x = be.asarray(x_host, dtype="float32")
    check_layer(model, x)
    y = model(x)
    Ws = [xn.to_numpy(p.value).astype(np.float64) for p in model.parameters()]
    h = np.tanh(x_host.astype(np.float32) @ Ws[0].T + Ws[1])
    h = np.maximum(h @ Ws[2].T + Ws[3], 0)
    ref = _sigmoid(h @ Ws[4].T + Ws[5])
    np.testing.assert_allclose(xn.to_numpy(y), ref, rtol=1e-5, atol=1e-6)
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def test_float64_layers(be, rng):
    if not be.supports("float64"):
        with pytest.raises(TypeError, match="float64"):
            xn.Linear(3, 2, dtype="float64")
        with pytest.raises(TypeError, match="float64"):
            xn.Linear(3, 2).astype("float64")
        return
    layer = xn.Linear(3, 2, dtype="float64")
    x = be.asarray(rng.standard_normal((2, 3)), dtype="float64")
    assert_on(be, layer.forward(x), "float64")
    model = xn.Sequential(xn.Linear(3, 2), xn.Sigmoid()).astype("float64")
    assert_on(be, model(x), "float64")


def test_sequential_refuses_one_layer_twice():
    """One object at two places would share one cache; a Graph is the way to share."""
    f = xn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"item 2 is the same layer object as item 0.*Graph"):
        xn.Sequential(f, xn.Tanh(), f)


# -- input and arguments of the wrong kind -------------------------------------------
def test_a_layer_given_another_dtype_names_it(be):
    layer = xn.Linear(4, 2)
    with pytest.raises(TypeError, match=r"Linear\(in_features=4.*expected input of dtype "
                                        r"float32 \(the parameters'\), got int64"):
        layer(be.asarray(np.ones((2, 4), dtype=np.int64)))
    bn = xn.BatchNorm1D(4)
    with pytest.raises(TypeError, match=r"BatchNorm1D.*dtype float32.*got int64"):
        bn(be.asarray(np.ones((2, 4), dtype=np.int64)))


# -- arguments checked at once, naming the argument -------------------------------------
@pytest.mark.parametrize("call, error, pattern", [
    (lambda: xn.Conv1D(1, -1, 2), ValueError, "Conv1D: out_channels must be >= 1, got -1"),
    (lambda: xn.Conv1D(1, 2, 2.5), TypeError, "Conv1D: kernel_size must be an integer"),
    (lambda: xn.Dropout("0.5"), TypeError, "Dropout: p must be a number, got '0.5'"),
    (lambda: xn.Linear(2.5, 3), TypeError, "Linear: in_features must be an integer, got 2.5"),
    (lambda: xn.Linear(2, 3, dtype="int32"), ValueError, "Linear: dtype must be one of"),
    (lambda: xn.BatchNorm1D(True), TypeError, "num_features must be an integer"),
    (lambda: xn.Reshape((2, 0)), ValueError, "Reshape: shape must be >= 1"),
])
def test_layer_arguments_raise_at_once_naming_the_argument(call, error, pattern):
    with xn.use("numpy"), pytest.raises(error, match=pattern):
        call()


# -- Linear on any leading shape ----------------------------------------------------
def test_linear_on_any_leading_shape(be, rng):
    layer = xn.Linear(4, 3)
    layer.bias.value = be.asarray(rng.standard_normal(3), dtype="float32")
    for shape in [(2, 3, 4), (4,), (2, 1, 2, 4)]:
        x_host = rng.standard_normal(shape).astype(np.float32)
        x = be.asarray(x_host)
        if len(shape) == 3:
            check_layer(layer, x)
        y = layer.forward(x)
        assert_on(be, y)
        W, b = to_numpy(layer.weight.value), to_numpy(layer.bias.value)
        np.testing.assert_allclose(to_numpy(y), np.einsum("...i,oi->...o", x_host, W) + b,
                                   rtol=1e-5, atol=1e-5)
        layer.zero_grad()
        dy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        dx = layer.backward(be.asarray(dy))
        assert tuple(dx.shape) == shape
        np.testing.assert_allclose(to_numpy(dx), np.einsum("...o,oi->...i", dy, W),
                                   rtol=1e-5, atol=1e-5)
        lead = list(np.ndindex(shape[:-1]))  # every position's outer product, summed
        np.testing.assert_allclose(to_numpy(layer.weight.grad),
                                   sum(np.outer(dy[i], x_host[i]) for i in lead),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_numpy(layer.bias.grad), sum(dy[i] for i in lead),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Linear.*\(batch, 4\), got \(2, 3, 5\).*\(\.\.\., 4\)"):
        layer.forward(be.asarray(np.zeros((2, 3, 5)), dtype="float32"))


def test_linear_leading_shape_then_2d_uses_each_own_cache(be, rng):
    """A 3-D pass then a 2-D pass: backward follows the last forward, not a stale shape."""
    layer = xn.Linear(3, 2)
    layer.forward(be.asarray(rng.standard_normal((2, 2, 3)), dtype="float32"))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    layer.forward(be.asarray(x))
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    layer.zero_grad()
    dx = layer.backward(be.asarray(dy))
    assert tuple(dx.shape) == (5, 3)
    np.testing.assert_allclose(to_numpy(layer.weight.grad), dy.T @ x, rtol=1e-5, atol=1e-5)


def test_linear_3d_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = wide(be)
    layer = xn.Linear(4, 3, dtype=dtype)
    torch_compare(be, layer, torch.nn.Linear(4, 3).double(), rng.standard_normal((2, 3, 4)),
                   params=("weight", "bias"))
