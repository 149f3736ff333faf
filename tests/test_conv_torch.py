"""Conv, pooling and batch norm against torch.nn.functional (outputs and gradients, float64)."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn

torch = pytest.importorskip("torch", reason="torch is not installed")
F = torch.nn.functional


def _torch_check(layer, x_host, torch_fn, params):
    """Outputs and all gradients of an xpnet layer against torch autograd, float64."""
    with xn.use("numpy"):
        layer.astype("float64")
        y = layer.forward(x_host)
        dy = np.random.default_rng(0).standard_normal(y.shape)
        dx = layer.backward(dy)
    xt = torch.tensor(x_host, requires_grad=True)
    pt = [torch.tensor(p.value, requires_grad=True) for p in params]
    yt = torch_fn(xt, *pt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for p, t in zip(params, pt, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k, s, p", [(3, 1, 0), (5, 2, 1), (3, 2, 1), (4, 3, 2), (1, 1, 0)])
def test_conv1d_matches_torch(k, s, p):
    with xn.use("numpy"):
        layer = xn.Conv1D(3, 5, k, stride=s, padding=p)
    x = np.random.default_rng(1).standard_normal((4, 3, 13))
    _torch_check(layer, x, lambda xt, w, b: F.conv1d(xt, w, b, stride=s, padding=p),
                 [layer.weight, layer.bias])


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0)])
def test_conv2d_matches_torch(k, s, p):
    with xn.use("numpy"):
        layer = xn.Conv2D(2, 4, k, stride=s, padding=p)
    x = np.random.default_rng(2).standard_normal((3, 2, 7, 6))
    _torch_check(layer, x, lambda xt, w, b: F.conv2d(xt, w, b, stride=s, padding=p),
                 [layer.weight, layer.bias])


@pytest.mark.parametrize("kind, k, s", [("max", 2, 2), ("max", 3, 1), ("avg", 3, 2),
                                        ("avg", 2, 1)])
def test_pool_matches_torch(kind, k, s):
    x = np.random.default_rng(3).standard_normal((2, 3, 10))
    x2 = np.random.default_rng(4).standard_normal((2, 3, 6, 7))
    one = xn.MaxPool1D(k, s) if kind == "max" else xn.AvgPool1D(k, s)
    two = xn.MaxPool2D(k, s) if kind == "max" else xn.AvgPool2D(k, s)
    f1 = F.max_pool1d if kind == "max" else F.avg_pool1d
    f2 = F.max_pool2d if kind == "max" else F.avg_pool2d
    _torch_check(one, x, lambda xt: f1(xt, k, s), [])
    _torch_check(two, x2, lambda xt: f2(xt, k, s), [])


def test_batchnorm_matches_torch():
    with xn.use("numpy"):
        layer = xn.BatchNorm2D(3)
        layer.weight.value = np.array([0.5, 1.5, -1.0], dtype=np.float32)
    x = np.random.default_rng(5).standard_normal((4, 3, 5, 5))
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
    _torch_check(layer, x, lambda xt, w, b: F.batch_norm(
        xt, bn.running_mean, bn.running_var, w, b, training=True), [layer.weight, layer.bias])
    np.testing.assert_allclose(layer.running_mean.value, bn.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.running_var.value, bn.running_var.numpy(), rtol=1e-10)
