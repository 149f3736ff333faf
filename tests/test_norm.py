"""Normalisation layers on every backend case: BatchNorm1D/2D and LayerNorm against
NumPy references (running statistics too) and torch in float64, check_layer or
gradcheck, LayerNorm through checkpoints, and clear errors on misuse."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on
from helpers import torch_autograd_check, torch_compare, torch_round_trips, wide

import xpnet as xn
from xpnet.backend import to_numpy
from xpnet.testing import check_layer


# -- BatchNorm ------------------------------------------------------------------------
def test_batchnorm(be, rng):
    layer = xn.BatchNorm1D(3)
    x_host = rng.standard_normal((6, 3, 4)) * 2 + 1
    x = be.asarray(x_host, dtype="float32")
    y = xn.to_numpy(layer.forward(x))
    mean = x_host.mean(axis=(0, 2), keepdims=True)
    var = x_host.var(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(y, (x_host - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xn.to_numpy(layer.running_mean.value),
                               0.1 * mean.reshape(-1), rtol=1e-5, atol=1e-6)
    unbiased = x_host.var(axis=(0, 2), ddof=1)
    np.testing.assert_allclose(xn.to_numpy(layer.running_var.value), 0.9 + 0.1 * unbiased,
                               rtol=1e-5)
    ev = xn.to_numpy(layer(x))  # inference: running statistics
    rm, rv = 0.1 * mean, 0.9 + 0.1 * unbiased.reshape(1, 3, 1)
    np.testing.assert_allclose(ev, (x_host - rm) / np.sqrt(rv + 1e-5), rtol=1e-4, atol=1e-5)
    assert xn.gradcheck(layer, x)
    layer2 = xn.BatchNorm2D(2)
    layer2.weight.value = be.asarray(rng.standard_normal(2), dtype="float32")
    x2 = be.asarray(rng.standard_normal((3, 2, 3, 3)), dtype="float32")
    assert_on(be, layer2.forward(x2))
    assert xn.gradcheck(layer2, x2)
    assert [n for n, _ in layer2.named_parameters()] == ["weight", "bias"]


def test_batchnorm_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    F = torch.nn.functional
    with xn.use("numpy"):
        layer = xn.BatchNorm2D(3)
        layer.weight.value = np.array([0.5, 1.5, -1.0], dtype=np.float32)
    x = np.random.default_rng(5).standard_normal((4, 3, 5, 5))
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
    torch_autograd_check(layer, x, lambda xt, w, b: F.batch_norm(
        xt, bn.running_mean, bn.running_var, w, b, training=True), [layer.weight, layer.bias])
    np.testing.assert_allclose(layer.running_mean.value, bn.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.running_var.value, bn.running_var.numpy(), rtol=1e-10)


# -- BatchNorm on one value per channel ---------------------------------------------------
def test_batchnorm_refuses_training_on_one_value_per_channel(be):
    bn = xn.BatchNorm1D(3)
    with pytest.raises(ValueError, match=r"BatchNorm1D.*more than one value per channel.*"
                                         r"\(1, 3\)"):
        bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=True)
    np.testing.assert_array_equal(xn.to_numpy(bn.running_var.value), np.ones(3))
    bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=False)  # inference is fine


def test_batchnorm_names_itself_for_data_from_elsewhere():
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    with xn.use("array_api_strict", device="device1"):
        bn = xn.BatchNorm1D(2)
    with pytest.raises(TypeError, match=r"BatchNorm1D.*input is a numpy array.*parameters are "
                                        r"array_api_strict"):
        bn(np.ones((3, 2), dtype=np.float32))
    with xn.use("array_api_strict", device="device2") as other:
        x = other.asarray(np.ones((3, 2)), dtype="float32")
    with pytest.raises(ValueError, match=r"BatchNorm1D.*on device .*device2.*device1"):
        bn(x)


# -- LayerNorm ------------------------------------------------------------------------
def _layernorm_ref(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_layernorm(be, rng):
    layer = xn.LayerNorm(4)
    assert layer.get_config() == {"normalized_shape": 4, "eps": 1e-5, "dtype": "float32"}
    np.testing.assert_array_equal(to_numpy(layer.weight.value), np.ones(4))
    np.testing.assert_array_equal(to_numpy(layer.bias.value), np.zeros(4))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    layer.weight.value = be.asarray(w, dtype="float32")
    layer.bias.value = be.asarray(b, dtype="float32")
    for shape in [(2, 3, 4), (5, 4)]:
        x_host = rng.standard_normal(shape) * 3 + 1
        x = be.asarray(x_host, dtype="float32")
        if len(shape) == 3:
            check_layer(layer, x)
        y = layer(x)
        assert_on(be, y)
        np.testing.assert_allclose(to_numpy(y), _layernorm_ref(x_host, w, b), rtol=1e-4,
                                   atol=1e-4)


def test_layernorm_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = wide(be)
    layer = xn.LayerNorm((4,), eps=1e-3, dtype=dtype)  # PyTorch's 1-tuple is accepted
    assert layer.normalized_shape == 4
    layer.weight.value = be.asarray(rng.standard_normal(4), dtype=dtype)
    layer.bias.value = be.asarray(rng.standard_normal(4), dtype=dtype)
    torch_compare(be, layer, torch.nn.LayerNorm(4, eps=1e-3).double(),
                   rng.standard_normal((2, 3, 4)) * 2 + 0.5, params=("weight", "bias"))


def test_layernorm_round_trips(be, tmp_path):
    torch = pytest.importorskip("torch")
    torch_round_trips(be, xn.LayerNorm(4, eps=1e-6), tmp_path, torch.nn.LayerNorm(4).double())


def test_layernorm_refuses_bad_input(be):
    layer = xn.LayerNorm(4)
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\.\.\., 4\), got \(2, 3\)"):
        layer.forward(be.asarray(np.zeros((2, 3)), dtype="float32"))
    if be.supports("float64"):
        with pytest.raises(TypeError, match=r"LayerNorm.*float32.*got float64"):
            layer.forward(be.asarray(np.zeros((2, 4)), dtype="float64"))
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape .*\(2, 4\)"):
        xn.LayerNorm((2, 4))
    with pytest.raises(ValueError, match=r"LayerNorm: eps"):
        xn.LayerNorm(4, eps=0.0)
