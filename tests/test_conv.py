"""Convolution, pooling and reshaping on every backend case, and the layers on NumPy's
fast convolution paths (BatchNorm: test_norm.py; Dropout: test_dropout.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn
from xpnet.backends.numpy import _ConvTape
from xpnet.testing import check_layer


def _conv_reference(x, w, b, stride, padding):
    """Cross-correlation by explicit loops over output positions (any spatial rank)."""
    d = x.ndim - 2
    stride, padding = (stride,) * d if isinstance(stride, int) else stride, (
        (padding,) * d if isinstance(padding, int) else padding)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    k = w.shape[2:]
    outs = [(xp.shape[2 + i] - k[i]) // stride[i] + 1 for i in range(d)]
    y = np.zeros((x.shape[0], w.shape[0], *outs))
    for pos in itertools.product(*(range(o) for o in outs)):
        window = xp[(slice(None), slice(None)) + tuple(
            slice(p * s, p * s + kk) for p, s, kk in zip(pos, stride, k, strict=True))]
        axes = list(range(1, window.ndim))
        y[(slice(None), slice(None)) + pos] = np.tensordot(window, w, axes=(axes, axes)) + b
    return y


CONVS = [
    ("Conv1D", dict(kernel_size=3), (2, 3, 11)),
    ("Conv1D", dict(kernel_size=5, stride=2, padding=1), (2, 3, 11)),
    ("Conv1D", dict(kernel_size=2, stride=3, padding=2), (2, 3, 11)),
    ("Conv2D", dict(kernel_size=3, padding=1), (2, 3, 5, 6)),
    ("Conv2D", dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)), (2, 3, 5, 6)),
]


@pytest.mark.parametrize("kind, cfg, shape", CONVS,
                         ids=[f"{k}-" + "-".join(f"{a}{b}" for a, b in c.items())
                              for k, c, _ in CONVS])
def test_conv(be, rng, kind, cfg, shape):
    layer = getattr(xn, kind)(3, 4, **cfg)
    layer.bias.value = be.asarray(rng.standard_normal(4), dtype="float32")
    x_host = rng.standard_normal(shape)
    x = be.asarray(x_host, dtype="float32")
    y = layer.forward(x)
    assert_on(be, y)
    ref = _conv_reference(x_host.astype(np.float32), xn.to_numpy(layer.weight.value),
                          xn.to_numpy(layer.bias.value), cfg.get("stride", 1),
                          cfg.get("padding", 0))
    np.testing.assert_allclose(xn.to_numpy(y), ref, rtol=1e-5, atol=1e-5)
    assert xn.gradcheck(layer, x)


def _pool_reference(x, k, s, reduce):
    d = x.ndim - 2
    outs = [(x.shape[2 + i] - k[i]) // s[i] + 1 for i in range(d)]
    y = np.zeros((*x.shape[:2], *outs))
    for pos in itertools.product(*(range(o) for o in outs)):
        window = x[(slice(None), slice(None)) + tuple(
            slice(p * st, p * st + kk) for p, st, kk in zip(pos, s, k, strict=True))]
        y[(slice(None), slice(None)) + pos] = reduce(window.reshape(*x.shape[:2], -1), axis=-1)
    return y


@pytest.mark.parametrize("kind, kernel, stride", [
    ("MaxPool1D", 2, None), ("MaxPool1D", 3, 2), ("AvgPool1D", 3, 1), ("AvgPool1D", 2, None),
    ("MaxPool2D", 2, None), ("MaxPool2D", (3, 2), (1, 2)), ("AvgPool2D", 2, 1)])
def test_pooling(be, rng, kind, kernel, stride):
    layer = getattr(xn, kind)(kernel, stride)
    d = 1 if kind.endswith("1D") else 2
    shape = (2, 3, 7) if d == 1 else (2, 2, 5, 6)
    # distinct values 0.1 apart: a finite-difference step never changes a window's max
    x_host = rng.permutation(np.prod(shape)).reshape(shape) * 0.1 - 3.0
    x = be.asarray(x_host, dtype="float32")
    y = layer.forward(x)
    assert_on(be, y)
    k = (kernel,) * d if isinstance(kernel, int) else kernel
    s = k if stride is None else ((stride,) * d if isinstance(stride, int) else stride)
    ref = _pool_reference(x_host.astype(np.float32), k, s,
                          np.max if kind.startswith("Max") else np.mean)
    np.testing.assert_allclose(xn.to_numpy(y), ref, rtol=1e-6, atol=1e-6)
    assert xn.gradcheck(layer, x)


def test_flatten_and_reshape(be, rng):
    x = be.asarray(rng.standard_normal((3, 2, 4)), dtype="float32")
    model = xn.Sequential(xn.Flatten(), xn.Linear(8, 6), xn.Reshape((2, 3)))
    y = model.forward(x)
    assert tuple(y.shape) == (3, 2, 3)
    assert_on(be, y)
    assert xn.gradcheck(model, x)


def test_conv_bad_input_is_named():
    xn.use("numpy")  # NumPy inputs below (auto picks CuPy on a GPU)
    layer = xn.Conv1D(2, 4, kernel_size=7, padding=1)
    with pytest.raises(ValueError, match=r"kernel \(7,\) is larger than the input's spatial "
                                         r"size \(6,\) \(after padding \(1,\)\)"):
        layer(np.zeros((1, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Conv1D.*C = 2 channels, got shape \(1, 3, 9\)"):
        layer(np.zeros((1, 3, 9), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Conv2D.*\(N, C, H, W\)"):
        xn.Conv2D(1, 1, 3)(np.zeros((1, 9, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="MaxPool2D: kernel_size needs 2 value"):
        xn.MaxPool2D((2, 2, 2))


# -- the layers on NumPy's fast paths (the paths themselves: test_ops.py) -------------
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
    test_conv above and test_conv_groups.py."""
    if be.name != "numpy":
        pytest.skip("these shapes choose NumPy-only paths; the other backends run test_conv")
    layer = getattr(xn, kind)(*args, padding=1)
    check_layer(layer, be.asarray(rng.standard_normal(shape), dtype="float32"))
