"""Embedding on every backend case: check_layer, a NumPy reference (repeated ids sum
their gradients), torch.nn.Embedding in float64 with copied weights, checkpoints, bad
ids, and integer ids through a Sequential and a Graph."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on
from helpers import torch_compare, torch_round_trips, wide

import xpnet as xn
from xpnet import backends
from xpnet.backend import to_numpy
from xpnet.testing import check_layer


def test_embedding(be, rng):
    layer = xn.Embedding(6, 3)
    W = to_numpy(layer.weight.value)
    assert W.shape == (6, 3) and W.dtype == np.float32
    ids_host = rng.integers(0, 6, (2, 4))
    ids_host[0, :3] = 5  # repeated ids: their gradients sum
    ids = be.asarray(ids_host, dtype="int64")
    check_layer(layer, ids)
    y = layer.forward(ids)
    assert_on(be, y)
    np.testing.assert_array_equal(to_numpy(y), W[ids_host])
    dy = rng.standard_normal((2, 4, 3)).astype(np.float32)
    assert layer.backward(be.asarray(dy)) is None
    ref = np.zeros((6, 3))
    for (i, j), r in np.ndenumerate(ids_host):
        ref[r] += dy[i, j]
    np.testing.assert_allclose(to_numpy(layer.weight.grad), ref, rtol=1e-6, atol=1e-6)
    # any id shape, other integer dtypes
    one = layer(be.asarray(np.array([4, 0, 4]), dtype="int32"))
    np.testing.assert_array_equal(to_numpy(one), W[[4, 0, 4]])


def test_embedding_init_draws_standard_normal_once():
    with xn.use("numpy"):
        xn.seed(5)
        a = xn.Embedding(400, 50)
        b = xn.Embedding(400, 50)
    wa, wb = to_numpy(a.weight.value), to_numpy(b.weight.value)
    assert not np.array_equal(wa, wb)
    assert abs(wa.mean()) < 0.02 and abs(wa.std() - 1.0) < 0.02  # N(0, 1), as torch


def test_embedding_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = wide(be)
    layer = xn.Embedding(6, 3, dtype=dtype)
    ids = rng.integers(0, 6, (2, 4))
    ids[1, :] = 2
    torch_compare(be, layer, torch.nn.Embedding(6, 3).double(), ids, params=("weight",),
                   int_input=True)


def test_embedding_round_trips(be, tmp_path):
    torch = pytest.importorskip("torch")
    torch_round_trips(be, xn.Embedding(5, 3), tmp_path, torch.nn.Embedding(5, 3).double())


def test_embedding_refuses_bad_ids(be):
    layer = xn.Embedding(4, 2)
    with pytest.raises(TypeError, match=r"Embedding.*integer ids.*float32"):
        layer.forward(be.asarray(np.zeros((2, 3)), dtype="float32"))
    if backends.ops(be.xp).on_host:
        for bad in ([0, 4, 1], [-1, 2]):
            with pytest.raises(ValueError, match=r"Embedding.*\[0, 3\].*from -?\d to \d"):
                layer.forward(be.asarray(np.array(bad), dtype="int64"))


def test_embedding_in_a_sequence_model(rng):
    """Ids -> Embedding -> LayerNorm -> Linear on (N, L, E) -> GELU, checked whole: integer
    ids through a Sequential, on NumPy (and on torch's meta device and array-api-strict's
    device1 inside check_layer; each layer alone runs on every case above)."""
    with xn.use("numpy") as be:
        model = xn.Sequential(xn.Embedding(4, 3), xn.LayerNorm(3), xn.Linear(3, 2),
                              xn.GELU("tanh"))
        ids = be.asarray(rng.integers(0, 4, (2, 3)), dtype="int64")
        check_layer(model, ids)
        assert tuple(model.forward(ids).shape) == (2, 3, 2)
        assert model.backward(be.asarray(np.ones((2, 3, 2)), dtype="float32")) is None
        assert [n for n, _ in model.named_parameters()] == [
            "0.weight", "1.weight", "1.bias", "2.weight", "2.bias"]


def test_embedding_first_in_a_graph_and_a_summary(be, rng):
    """A Graph probes Embedding with integer ids (not float zeros), and the Graph gives
    what the same layers in a Sequential give."""
    emb, lin = xn.Embedding(7, 3), xn.Linear(3, 2)
    inp = xn.Input(shape=(4,))
    graph = xn.Graph(inputs=inp, outputs=lin(emb(inp)))
    ids = be.asarray(rng.integers(0, 7, size=(2, 4)), dtype="int64")
    y = graph(ids)
    assert tuple(y.shape) == (2, 4, 2)
    np.testing.assert_allclose(xn.to_numpy(y), xn.to_numpy(lin(emb(ids))), rtol=1e-6)
    text = xn.Sequential(emb, xn.Flatten()).summary(input_shape=(4,), print_fn=None)
    assert "(N, 4, 3)" in text and "(N, 12)" in text
