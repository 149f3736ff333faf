"""Activation layers on every backend case, from one table: check_layer (gradcheck,
device and dtype, meta, device1) and a NumPy reference on a batch (N, F) and on a
sequence (N, L, F); torch.nn in float64 with the same input; overflow and stability;
argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_on
from helpers import torch_compare

import xpnet as xn
from xpnet.backend import to_numpy
from xpnet.testing import check_layer


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gelu(z):
    return z * 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def _gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


# name -> (xpnet layer, NumPy reference over the last axis, the torch.nn module given torch.nn)
ACTIVATIONS = {
    "Sigmoid": (xn.Sigmoid, _sigmoid, lambda nn: nn.Sigmoid()),
    "Tanh": (xn.Tanh, np.tanh, lambda nn: nn.Tanh()),
    "ReLU": (xn.ReLU, lambda z: np.where(z > 0, z, 0.0), lambda nn: nn.ReLU()),
    "Softmax": (xn.Softmax, _softmax, lambda nn: nn.Softmax(dim=-1)),
    "GELU": (lambda: xn.GELU(), _gelu, lambda nn: nn.GELU()),
    "GELU-tanh": (lambda: xn.GELU("tanh"), _gelu_tanh, lambda nn: nn.GELU(approximate="tanh")),
    "SiLU": (lambda: xn.SiLU(), lambda z: z / (1 + np.exp(-z)), lambda nn: nn.SiLU()),
    "LeakyReLU": (lambda: xn.LeakyReLU(), lambda z: np.where(z > 0, z, 0.01 * z),
                  lambda nn: nn.LeakyReLU()),
    "LeakyReLU-0.2": (lambda: xn.LeakyReLU(0.2), lambda z: np.where(z > 0, z, 0.2 * z),
                      lambda nn: nn.LeakyReLU(0.2)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(be, rng, name):
    """check_layer, the output's device and dtype, and the NumPy reference: on a batch
    (N, F), then on a sequence (N, L, F)."""
    make, ref, _ = ACTIVATIONS[name]
    for shape, scale in [((5, 4), 1.0), ((2, 3, 4), 2.0)]:
        x_host = rng.standard_normal(shape) * scale
        # finite differences across ReLU's (and LeakyReLU's) kink are meaningless
        x_host = np.where(np.abs(x_host) < 0.1, 0.5, x_host)
        x = be.asarray(x_host, dtype="float32")
        layer = make()
        check_layer(layer, x)
        y = layer(x)
        assert_on(be, y)
        np.testing.assert_allclose(to_numpy(y),
                                   ref(x_host.astype(np.float32).astype(np.float64)),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch(be, rng, name):
    torch = pytest.importorskip("torch")
    make, _, torch_make = ACTIVATIONS[name]
    x_host = rng.standard_normal((2, 3, 4)) * 3
    x_host[0, 0, :3] = [0.0, -8.0, 7.5]  # the kink (both use slope there) and the tails
    torch_compare(be, make(), torch_make(torch.nn), x_host)


# -- overflow and stability ------------------------------------------------------------
def test_sigmoid_does_not_overflow(be):
    x = be.asarray(np.array([[-1000.0, 0.0, 1000.0]]), dtype="float32")
    with np.errstate(all="raise"):
        y = xn.to_numpy(xn.Sigmoid().forward(x))
    np.testing.assert_array_equal(y, [[0.0, 0.5, 1.0]])


def test_softmax_subtracts_row_max(be):
    x = be.asarray(np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1000.0, -1000.0]]),
                   dtype="float32")
    y = xn.to_numpy(xn.Softmax().forward(x))
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(y[1], [1 / 3] * 3, rtol=1e-6)


def test_activation_arguments():
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'"):
        xn.GELU("erf")
    with pytest.raises(TypeError, match="LeakyReLU: negative_slope must be a number"):
        xn.LeakyReLU("0.1")
    for layer in (xn.GELU("tanh"), xn.LeakyReLU(0.3), xn.SiLU()):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
