"""Conv and pooling against torch.nn.functional (outputs and gradients, float64).
BatchNorm's: test_norm.py."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import torch_autograd_check

import xpnet as xn

torch = pytest.importorskip("torch", reason="torch is not installed")
F = torch.nn.functional


@pytest.mark.parametrize("k, s, p", [(3, 1, 0), (5, 2, 1), (3, 2, 1), (4, 3, 2), (1, 1, 0)])
def test_conv1d_matches_torch(k, s, p):
    with xn.use("numpy"):
        layer = xn.Conv1D(3, 5, k, stride=s, padding=p)
    x = np.random.default_rng(1).standard_normal((4, 3, 13))
    torch_autograd_check(layer, x, lambda xt, w, b: F.conv1d(xt, w, b, stride=s, padding=p),
                 [layer.weight, layer.bias])


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0)])
def test_conv2d_matches_torch(k, s, p):
    with xn.use("numpy"):
        layer = xn.Conv2D(2, 4, k, stride=s, padding=p)
    x = np.random.default_rng(2).standard_normal((3, 2, 7, 6))
    torch_autograd_check(layer, x, lambda xt, w, b: F.conv2d(xt, w, b, stride=s, padding=p),
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
    torch_autograd_check(one, x, lambda xt: f1(xt, k, s), [])
    torch_autograd_check(two, x2, lambda xt: f2(xt, k, s), [])
