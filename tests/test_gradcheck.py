"""xn.gradcheck: what it compares, and the random stream it leaves behind."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn


def test_gradcheck_leaves_a_given_stream_one_pass_on(be):
    stream = xn.RandomStream(5)
    stream.next_key()
    model = xn.Sequential(xn.Linear(3, 4), xn.Dropout(0.5), xn.Tanh())
    x = be.asarray(np.random.default_rng(0).standard_normal((2, 3)), dtype="float32")
    assert xn.gradcheck(model, x, stream=stream)
    assert (stream.key, stream.position) == ((5,), 2)  # one draw made by one forward pass


def test_gradcheck_checks_the_table_of_an_integer_input_layer(be):
    """Integer input: no input gradient is compared, the parameters still are."""
    class Broken(xn.Embedding):
        def backward(self, dy):
            super().backward(dy)
            self.weight.grad = self.weight.grad * 2.0  # wrong on purpose

    ids = be.asarray(np.array([[1, 1, 0]]), dtype="int64")
    assert xn.gradcheck(xn.Embedding(3, 2), ids)
    with pytest.raises(xn.GradcheckError, match="weight"):
        xn.gradcheck(Broken(3, 2), ids)
