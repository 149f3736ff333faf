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
    """The CuPy branch draws inside the array's device with the counter-based generator
    (no generator state set up per draw): the numbers its captured steps draw, and the
    same bits on every library that uses it."""
    import types

    import array_api_compat.numpy as npx

    from xpnet.backends import ADAPTERS
    from xpnet.backends.base import Placement
    from xpnet.backends.standard import counter_uniform, fold_key

    calls = []

    class FakeDevice:
        def __enter__(self):
            calls.append("enter")

        def __exit__(self, *a):
            calls.append("exit")

    cupy = ADAPTERS["cupy"]
    monkeypatch.setattr(cupy, "placement_of", lambda x: Placement(npx, "cpu", "cpu"))
    like = types.SimpleNamespace(device=FakeDevice(), dtype=np.float32)
    out = cupy.uniform(like, (2, 3), (7, 5, 4))
    assert calls == ["enter", "exit"]
    want = counter_uniform(npx, (2, 3), np.float32, "cpu", fold_key((7, 5)), 4)
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() < 1
    assert not np.array_equal(out, cupy.uniform(like, (2, 3), (7, 5, 5)))
