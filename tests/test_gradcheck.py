"""xn.gradcheck: what it compares, and the random stream it leaves behind."""

from __future__ import annotations

import numpy as np

import xpnet as xn


def test_gradcheck_leaves_a_given_stream_one_pass_on(be):
    stream = xn.RandomStream(5)
    stream.next_key()
    model = xn.Sequential(xn.Linear(3, 4), xn.Dropout(0.5), xn.Tanh())
    x = be.asarray(np.random.default_rng(0).standard_normal((2, 3)), dtype="float32")
    assert xn.gradcheck(model, x, stream=stream)
    assert (stream.key, stream.position) == ((5,), 2)  # one draw made by one forward pass

