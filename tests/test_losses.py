"""Losses on every backend case: values and gradients against NumPy by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn


def _log_softmax(z):
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def test_quadratic_cost(be, rng):
    a = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 3))
    loss = xn.QuadraticCost()
    c = loss.forward(be.asarray(a, dtype="float32"), be.asarray(y, dtype="float32"))
    assert_on(be, c)
    assert c.ndim == 0
    expect = sum(np.sum((a[i] - y[i]) ** 2) for i in range(5)) / (2 * 5)
    np.testing.assert_allclose(xn.to_numpy(c), expect, rtol=1e-5)
    np.testing.assert_allclose(xn.to_numpy(loss.backward()), (a - y) / 5, rtol=1e-5, atol=1e-7)


def test_quadratic_cost_integer_labels_are_one_hot(be, rng):
    a = rng.random((4, 3))
    labels = np.array([0, 2, 1, 2])
    loss = xn.QuadraticCost()
    c = loss.forward(be.asarray(a, dtype="float32"), be.asarray(labels))
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(xn.to_numpy(c), np.sum((a - onehot) ** 2) / 8, rtol=1e-5)


@pytest.mark.parametrize("labels_kind", ["integer", "one_hot"])
def test_softmax_cross_entropy(be, rng, labels_kind):
    z = rng.standard_normal((6, 4)) * 3
    labels = np.array([0, 3, 1, 2, 3, 0])
    target = labels if labels_kind == "integer" else np.eye(4)[labels]
    t = be.asarray(target, dtype=None if labels_kind == "integer" else "float32")
    loss = xn.SoftmaxCrossEntropy()
    c = loss.forward(be.asarray(z, dtype="float32"), t)
    assert_on(be, c)
    expect = -np.mean([_log_softmax(z)[i, labels[i]] for i in range(6)])
    np.testing.assert_allclose(xn.to_numpy(c), expect, rtol=1e-5)
    g = loss.backward()
    assert_on(be, g)
    p = np.exp(_log_softmax(z))
    np.testing.assert_allclose(xn.to_numpy(g), (p - np.eye(4)[labels]) / 6, rtol=1e-4, atol=1e-6)


def test_softmax_cross_entropy_is_stable(be):
    z = be.asarray(np.array([[1000.0, 0.0], [0.0, -1000.0]]), dtype="float32")
    c = xn.SoftmaxCrossEntropy().forward(z, be.asarray(np.array([0, 1])))
    np.testing.assert_allclose(xn.to_numpy(c), 500.0, rtol=1e-6)


def test_binary_cross_entropy(be, rng):
    z = rng.standard_normal((7, 1)) * 4
    y = rng.integers(0, 2, size=7).astype(np.float64)
    loss = xn.BinaryCrossEntropy()
    c = loss.forward(be.asarray(z, dtype="float32"), be.asarray(y, dtype="float32"))
    p = 1 / (1 + np.exp(-z[:, 0]))
    expect = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(xn.to_numpy(c), expect, rtol=1e-5)
    np.testing.assert_allclose(xn.to_numpy(loss.backward())[:, 0], (p - y) / 7,
                               rtol=1e-4, atol=1e-7)


def test_binary_cross_entropy_large_logits(be):
    z = be.asarray(np.array([[1000.0], [-1000.0]]), dtype="float32")
    c = xn.BinaryCrossEntropy().forward(z, be.asarray(np.array([0.0, 1.0]), dtype="float32"))
    np.testing.assert_allclose(xn.to_numpy(c), 1000.0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["quadratic", "softmax_ce", "bce"])
def test_gradcheck_through_loss(be, rng, kind):
    layer = xn.Linear(3, 4)
    x = be.asarray(rng.standard_normal((5, 3)), dtype="float32")
    if kind == "quadratic":
        loss, t = xn.QuadraticCost(), be.asarray(rng.standard_normal((5, 4)), dtype="float32")
    elif kind == "softmax_ce":
        loss, t = xn.SoftmaxCrossEntropy(), be.asarray(np.array([0, 1, 2, 3, 1]))
    else:
        loss = xn.BinaryCrossEntropy()
        t = be.asarray(rng.integers(0, 2, size=(5, 4)), dtype="float32")
    assert xn.gradcheck(layer, x, loss=loss, target=t)


def test_labels_out_of_range(be):
    z = be.asarray(np.zeros((2, 3)), dtype="float32")
    bad = be.asarray(np.array([0, 3]))
    if be.name == "numpy":
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*0 to 3"):
            xn.SoftmaxCrossEntropy().forward(z, bad)
    else:
        # checking on a device would stall it; the loss becomes NaN instead
        assert math.isnan(float(xn.to_numpy(xn.SoftmaxCrossEntropy().forward(z, bad))))


def test_target_shape_mismatch(be):
    z = be.asarray(np.zeros((2, 3)), dtype="float32")
    with pytest.raises(ValueError, match=r"target shape \(2, 4\).*\(2, 3\)"):
        xn.QuadraticCost().forward(z, be.asarray(np.zeros((2, 4)), dtype="float32"))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\)"):
        xn.SoftmaxCrossEntropy().forward(z, be.asarray(np.zeros((3,), dtype=np.int64)))


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="needs a forward"):
        xn.SoftmaxCrossEntropy().backward()


# -- BinaryCrossEntropy on probabilities -----------------------------------------------
def test_binary_cross_entropy_from_probabilities(be):
    p_host = np.array([[0.9], [0.2], [0.6], [0.4]])
    t_host = np.array([1.0, 0.0, 0.0, 1.0])
    loss = xn.BinaryCrossEntropy(from_logits=False)
    c = loss.forward(be.asarray(p_host, dtype="float32"), be.asarray(t_host, dtype="float32"))
    want = -np.mean(t_host * np.log(p_host[:, 0]) + (1 - t_host) * np.log(1 - p_host[:, 0]))
    assert float(xn.to_numpy(c)) == pytest.approx(want, rel=1e-5)
    g = xn.to_numpy(loss.backward())[:, 0]
    np.testing.assert_allclose(g, (p_host[:, 0] - t_host) / (p_host[:, 0] * (1 - p_host[:, 0]))
                               / 4, rtol=1e-4)
    acc = xn.metrics.Accuracy()
    acc.prepare(loss, 1)
    hits = acc.correct(be.asarray(p_host, dtype="float32"), be.asarray(t_host.astype(np.int64)))
    assert float(xn.to_numpy(hits)) == 2.0  # 0.9 right, 0.2 right, 0.6 wrong, 0.4 wrong


def test_a_sigmoid_model_with_a_logits_loss_warns_once_and_probabilities_score_right():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    with xn.use("numpy"):
        xn.seed(0)
        model = xn.Sequential(xn.Linear(2, 1), xn.Sigmoid())
        model[0].weight.value = np.array([[20.0, 0.0]], dtype=np.float32)
        model[0].bias.value = np.zeros(1, dtype=np.float32)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy())
            xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy())
        squashed = [w for w in seen if "outputs probabilities" in str(w.message)]
        assert len(squashed) == 1 and "from_logits=False" in str(squashed[0].message)
        right = xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy(from_logits=False))
    assert right["accuracy"] >= 0.99
