"""Graph models: reverse topological backward, fan-out sums over paths, build-time errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn


def _residual():
    # Smooth activations only: on a device without float64, gradcheck's float32 step
    # (1e-2) would straddle a ReLU's kink for some unit (ReLU is checked in test_layers,
    # on inputs kept away from zero).
    inp = xn.Input(shape=(6,))
    h = xn.Tanh()(xn.Linear(6, 8)(inp))
    h = xn.Add()(h, xn.Tanh()(xn.Linear(8, 8)(h)))          # h feeds two consumers
    both = xn.Concat(axis=1)(h, xn.Sigmoid()(xn.Linear(8, 3)(h)))  # and a third
    return xn.Graph(inputs=inp, outputs=xn.Linear(11, 4)(both))


def test_graph_with_fan_out(be, rng):
    model = _residual()
    x = be.asarray(rng.standard_normal((5, 6)), dtype="float32")
    y = model(x)
    assert_on(be, y)
    assert tuple(y.shape) == (5, 4)
    assert xn.gradcheck(model, x)
    # the same function written out in NumPy
    W = [xn.to_numpy(p.value).astype(np.float64) for p in model.parameters()]
    xh = xn.to_numpy(x).astype(np.float64)
    h = np.tanh(xh @ W[0].T + W[1])
    h = h + np.tanh(h @ W[2].T + W[3])
    s = 1 / (1 + np.exp(-(h @ W[4].T + W[5])))
    ref = np.concatenate([h, s], axis=1) @ W[6].T + W[7]
    np.testing.assert_allclose(xn.to_numpy(y), ref, rtol=1e-5, atol=1e-5)


def test_two_inputs_and_conv_channels(be, rng):
    a, b = xn.Input(shape=(2, 9)), xn.Input(shape=(3, 9))
    joined = xn.Concat(axis=1)(xn.Conv1D(2, 4, 3, padding=1)(a), b)   # 4 + 3 channels
    out = xn.Linear(63, 2)(xn.Flatten()(xn.Tanh()(joined)))
    model = xn.Graph(inputs=[a, b], outputs=out)
    xa = be.asarray(rng.standard_normal((3, 2, 9)), dtype="float32")
    xb = be.asarray(rng.standard_normal((3, 3, 9)), dtype="float32")
    assert tuple(model([xa, xb]).shape) == (3, 2)
    assert xn.gradcheck(_Pair(model, xb), xa)


class _Pair(xn.Layer):
    """Feeds a fixed second input, so gradcheck can vary the first."""

    def __init__(self, graph, other):
        super().__init__()
        self.graph, self.other = graph, other

    def children(self):
        return [self.graph]

    def forward(self, x, *, train=True):
        return self.graph.forward([x, self.other], train=train)

    def backward(self, dy):
        return self.graph.backward(dy)[0]


def test_fan_out_gradient_is_the_sum_over_paths():
    """y = a + 2 a with a = W x: dC/dW must be (1 + 2) times the single-path gradient."""
    with xn.use("numpy"):
        inp = xn.Input(shape=(3,))
        lin = xn.Linear(3, 2, bias=False)
        a = lin(inp)
        double = xn.Linear(2, 2, bias=False)
        double.weight.value = 2 * np.eye(2, dtype=np.float32)
        model = xn.Graph(inputs=inp, outputs=xn.Add()(a, double(a)))
        x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
        model.forward(x)
        dy = np.array([[1.0, -1.0]], dtype=np.float32)
        dx = model.backward(dy)
    np.testing.assert_allclose(lin.weight.grad, 3 * dy.T @ x)
    np.testing.assert_allclose(dx, 3 * dy @ lin.weight.value)


def test_graph_nests_saves_and_loads(be, tmp_path, rng):
    model = xn.Sequential(_residual(), xn.Sigmoid(), xn.Linear(4, 2))
    x = be.asarray(rng.standard_normal((3, 6)), dtype="float32")
    assert xn.gradcheck(model, x)
    xn.save(tmp_path / "g.xpnet", model)
    again = xn.load(tmp_path / "g.xpnet", backend="numpy")
    np.testing.assert_allclose(again(xn.to_numpy(x)), xn.to_numpy(model(x)), rtol=1e-5,
                               atol=1e-6)


def test_shape_mismatch_is_reported_when_building():
    a = xn.Input(shape=(4,), name="features")
    h = xn.Linear(4, 5, name="wide")(a)
    with pytest.raises(ValueError, match=r"Linear\(in_features=3.*features \(N, 4\).*"
                                         r"expected input of shape \(batch, 3\), got \(2, 4\)"):
        xn.Linear(3, 2)(a)
    with pytest.raises(ValueError, match=r"Add.*features \(N, 4\), wide \(N, 5\).*equal shapes"):
        xn.Add()(a, h)


def test_unconnected_and_unlisted_inputs():
    a, b = xn.Input(shape=(2,), name="a"), xn.Input(shape=(2,), name="b")
    out = xn.Linear(2, 1)(a)
    with pytest.raises(ValueError, match="input.* b are not connected to the outputs"):
        xn.Graph(inputs=[a, b], outputs=out)
    with pytest.raises(ValueError, match="depend on input.* a that are not listed"):
        xn.Graph(inputs=b, outputs=out)


def test_cycle_is_reported_naming_nodes():
    a = xn.Input(shape=(2,), name="x")
    h1 = xn.Linear(2, 2, name="first")(a)
    h2 = xn.Linear(2, 2, name="second")(h1)
    h1.node.inputs.append(h2.node)  # wire the graph into a loop by hand
    with pytest.raises(ValueError, match="cycle through nodes .*first.*second.*first|"
                                         "cycle through nodes .*second.*first.*second"):
        xn.Graph(inputs=a, outputs=h2)


def test_layer_used_twice_is_one_child_at_two_nodes():
    """Calling a layer again shares it (tests/test_graph_sharing.py checks the rest)."""
    a = xn.Input(shape=(2,))
    lin = xn.Linear(2, 2, name="lin")
    first, second = lin(a), lin(a)
    assert (first.node.name, second.node.name) == ("lin", "lin_2")
    model = xn.Graph(inputs=a, outputs=xn.Add()(first, second))
    assert model.children()[0] is lin and len(model.children()) == 2
