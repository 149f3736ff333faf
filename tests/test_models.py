"""Whole models: cross-backend agreement, PyTorch autograd, the meta device, the
seeds' worked chain-rule example, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn


def _mlp():
    return xn.Sequential(xn.Linear(6, 8), xn.ReLU(), xn.Linear(8, 8), xn.Tanh(),
                         xn.Linear(8, 3))


def _train_ten_steps(be, x_host, y_host):
    xn.seed(42)
    model = _mlp()
    params = [xn.to_numpy(p.value).copy() for p in model.parameters()]
    opt = xn.SGD(model.parameters(), lr=0.1, momentum=0.5)
    loss = xn.SoftmaxCrossEntropy()
    x, y = be.asarray(x_host, dtype="float32"), be.asarray(y_host)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        c = loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        losses.append(float(xn.to_numpy(c)))
    return params, np.array(losses)


def test_same_seed_same_training_on_every_backend(be):
    rng = np.random.default_rng(7)
    x_host, y_host = rng.standard_normal((16, 6)), rng.integers(0, 3, size=16)
    with xn.use("numpy") as ref_be:
        ref_params, ref_losses = _train_ten_steps(ref_be, x_host, y_host)
    params, losses = _train_ten_steps(be, x_host, y_host)
    for a, b in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(a, b)  # initialisation is drawn on the host
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert losses[-1] < losses[0]


def test_matches_torch_autograd_float64():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(3)
    x_host, y_host = rng.standard_normal((5, 6)), rng.integers(0, 3, size=5)
    with xn.use("numpy"):
        model = _mlp().astype("float64")
    Ws = [torch.tensor(xn.to_numpy(p.value), requires_grad=True) for p in model.parameters()]
    x_t = torch.tensor(x_host, requires_grad=True)
    h = torch.relu(x_t @ Ws[0].T + Ws[1])
    h = torch.tanh(h @ Ws[2].T + Ws[3])
    z = h @ Ws[4].T + Ws[5]
    ref = torch.nn.functional.cross_entropy(z, torch.tensor(y_host))
    ref.backward()

    loss = xn.SoftmaxCrossEntropy()
    x = x_host.copy()
    c = loss.forward(model.forward(x), y_host)
    dx = model.backward(loss.backward())
    np.testing.assert_allclose(xn.to_numpy(c), ref.item(), rtol=1e-6)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-6, atol=1e-12)
    for p, w in zip(model.parameters(), Ws, strict=True):
        np.testing.assert_allclose(p.grad, w.grad.numpy(), rtol=1e-6, atol=1e-12)


def test_meta_device_has_no_host_sync():
    """On torch's meta device any float()/item()/np.asarray in device code raises."""
    pytest.importorskip("torch", reason="torch is not installed")
    import torch

    with xn.use("torch", device="meta") as be:
        model = xn.Sequential(xn.Linear(6, 8), xn.Sigmoid(), xn.Linear(8, 8), xn.ReLU(),
                              xn.Linear(8, 4), xn.Softmax(), xn.Linear(4, 3), xn.Tanh())
        x = torch.empty((5, 6), device="meta")
        for loss, target in [(xn.SoftmaxCrossEntropy(), torch.empty(5, dtype=torch.int64,
                                                                     device="meta")),
                             (xn.QuadraticCost(), torch.empty((5, 3), device="meta")),
                             (xn.BinaryCrossEntropy(), torch.empty((5, 3), device="meta"))]:
            for opt in (xn.SGD(model, lr=0.1, momentum=0.9), xn.Adam(model)):
                opt.zero_grad()
                c = loss.forward(model.forward(x), target)
                dx = model.backward(loss.backward())
                opt.step()
                assert c.device.type == "meta" and c.shape == ()
                assert dx.device.type == "meta" and tuple(dx.shape) == (5, 6)
        assert all(p.value.device.type == "meta" for p in model.parameters())
        assert be.device_name == "meta"
        cnn = xn.Sequential(xn.Conv2D(2, 4, 3, padding=1), xn.ReLU(), xn.MaxPool2D(2),
                            xn.BatchNorm2D(4), xn.Dropout(0.2), xn.Conv2D(4, 3, 2),
                            xn.AvgPool2D(2), xn.Flatten(), xn.Linear(3, 2))
        images = torch.empty((5, 2, 6, 6), device="meta")
        out = cnn.forward(images)
        dx = cnn.backward(torch.empty_like(out))
        assert out.device.type == "meta" and tuple(out.shape) == (5, 2)
        assert dx.device.type == "meta" and tuple(dx.shape) == (5, 2, 6, 6)


def test_chain_of_single_neurons_matches_hand_written_chain_rule(be):
    """The seeds' example: a_l = sigma(w_l a_{l-1} + b_l), C = (a_L - y)^2."""
    ws, bs, a0, y = [0.7, -1.3, 0.4], [0.1, 0.2, -0.3], 0.9, 0.25
    model = xn.Sequential(*[layer for _ in range(3) for layer in (xn.Linear(1, 1), xn.Sigmoid())])
    for i in range(3):
        model[2 * i].weight.value = be.asarray(np.array([[ws[i]]]), dtype="float32")
        model[2 * i].bias.value = be.asarray(np.array([bs[i]]), dtype="float32")
    x = be.asarray(np.array([[a0]]), dtype="float32")
    aL = model.forward(x)
    # C = (a_L - y)^2, so dC/da_L = 2 (a_L - y); QuadraticCost would halve it
    model.backward(2.0 * (aL - be.asarray(np.array([[y]]), dtype="float32")))

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    a, z = [a0], []
    for w, b in zip(ws, bs, strict=True):
        z.append(w * a[-1] + b)
        a.append(sig(z[-1]))
    dsig = [sig(zi) * (1 - sig(zi)) for zi in z]
    dC_da = 2 * (a[3] - y)
    # dC/dw3 = a2 * s'(z3) * 2(a3 - y), and back through each layer by the chain rule
    d3 = dsig[2] * dC_da
    d2 = dsig[1] * ws[2] * d3
    d1 = dsig[0] * ws[1] * d2
    expect_w = [a[0] * d1, a[1] * d2, a[2] * d3]
    expect_b = [d1, d2, d3]
    for i in range(3):
        np.testing.assert_allclose(xn.to_numpy(model[2 * i].weight.grad)[0, 0], expect_w[i],
                                   rtol=1e-5)
        np.testing.assert_allclose(xn.to_numpy(model[2 * i].bias.grad)[0], expect_b[i],
                                   rtol=1e-5)


def test_wrong_feature_count_names_layer_and_shapes(be):
    model = xn.Sequential(xn.Linear(4, 3), xn.ReLU(), xn.Linear(5, 2))
    x = be.asarray(np.zeros((2, 4)), dtype="float32")
    with pytest.raises(ValueError, match=r"Sequential\[2\] Linear\(in_features=5.*"
                                         r"expected input of shape \(batch, 5\), got \(2, 3\)"):
        model(x)


def test_arrays_from_two_devices_raise():
    with xn.use("array_api_strict", device="device1"):
        layer = xn.Linear(3, 2)
    with xn.use("array_api_strict", device="device2") as other:
        x = other.asarray(np.zeros((1, 3)), dtype="float32")
    with pytest.raises(ValueError, match="input is on device .*device2.* parameters are on "
                                         ".*device1"):
        layer(x)


def test_arrays_from_two_libraries_raise():
    with xn.use("array_api_strict"):
        layer = xn.Linear(3, 2)
    with pytest.raises(TypeError, match="input is a numpy array .* parameters are "
                                        "array_api_strict arrays"):
        layer(np.zeros((1, 3), dtype=np.float32))


def test_model_to_moves_every_parameter(be):
    with xn.use("numpy"):
        xn.seed(1)
        model = _mlp()
    x_host = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    ref = model(x_host)
    model.to(be)
    out = model(be.asarray(x_host))
    np.testing.assert_allclose(xn.to_numpy(out), ref, rtol=1e-5, atol=1e-6)
