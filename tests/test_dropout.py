"""Dropout on every backend case: the kept fraction and scale, backward, inference,
seeded masks, gradcheck through a model; CuPy's draw on the device (with a stand-in)."""

from __future__ import annotations

import numpy as np
from conftest import assert_on

import xpnet as xn


def test_dropout(be, rng):
    x = be.asarray(np.ones((200, 50)), dtype="float32")
    layer = xn.Dropout(0.3)
    y = layer.forward(x)
    assert_on(be, y)
    out = xn.to_numpy(y)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    dx = xn.to_numpy(layer.backward(be.asarray(np.full((200, 50), 2.0), dtype="float32")))
    np.testing.assert_allclose(dx, 2 * out, rtol=1e-6)
    np.testing.assert_array_equal(xn.to_numpy(layer(x)), np.ones((200, 50)))  # inference
    xn.seed(4)
    a = xn.to_numpy(layer.forward(x))
    b = xn.to_numpy(layer.forward(x))
    xn.seed(4)
    np.testing.assert_array_equal(xn.to_numpy(layer.forward(x)), a)  # same seed, same mask
    assert not np.array_equal(a, b)  # the next draw differs
    small = be.asarray(rng.standard_normal((4, 5)), dtype="float32")
    assert xn.gradcheck(xn.Sequential(xn.Linear(5, 6), xn.Dropout(0.5), xn.Tanh()), small)


def test_cupy_dropout_draws_on_the_device(monkeypatch):
    """The CuPy branch seeds CuPy's own generator inside the array's device."""
    import sys
    import types

    from xpnet.backends import ADAPTERS
    from xpnet.backends.base import mix

    calls = []

    class FakeDevice:
        def __enter__(self):
            calls.append("enter")

        def __exit__(self, *a):
            calls.append("exit")

    class FakeGenerator:
        def __init__(self, seed):
            calls.append(("seed", seed))

        def random(self, shape, dtype):
            calls.append(("random", shape, dtype))
            return np.zeros(shape, dtype=dtype)

    cupy = types.ModuleType("cupy")
    cupy.random = types.SimpleNamespace(default_rng=FakeGenerator)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    like = types.SimpleNamespace(device=FakeDevice(), dtype=np.float32)
    out = ADAPTERS["cupy"].uniform(like, (2, 3), (7, 5))
    assert out.shape == (2, 3)
    assert calls == ["enter", ("seed", mix((7, 5))), ("random", (2, 3), np.float32), "exit"]
    assert mix((7, 5)) != mix((7, 6)) and 0 <= mix((7, 5)) < 2**63
