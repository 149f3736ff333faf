"""Every fast path in _compat agrees with the standard-only reference path."""

from __future__ import annotations

import numpy as np
import pytest

from xpnet import _compat
from xpnet.backend import to_numpy


def _namespaces():
    out = [pytest.param(np, id="numpy")]
    try:
        import array_api_compat.torch as xt

        out.append(pytest.param(xt, id="torch"))
    except ImportError:
        out.append(pytest.param(None, id="torch", marks=pytest.mark.skip(
            reason="torch is not installed")))
    return out


def _arr(xp, host):
    if xp is np:
        return host.copy()
    import torch

    return torch.tensor(host)


@pytest.mark.parametrize("xp", _namespaces())
def test_fast_ops_match_standard(xp):
    fast, ref = _compat.ops(xp), _compat.StandardOps()
    assert type(fast) is not _compat.StandardOps  # a fast path exists for this library
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(
        np.float32)
    b, dy = rng.standard_normal(3).astype(np.float32), rng.standard_normal((5, 4)).astype(
        np.float32)
    y = 1 / (1 + np.exp(-x))
    cases = [
        ("linear", (x, W, b)), ("linear", (x, W, None)), ("relu", (x,)),
        ("relu_grad", (dy, np.maximum(x, 0))), ("keep", (dy, x > 0)), ("sigmoid", (x * 50,)),
        ("sigmoid_grad", (dy, y.astype(np.float32))),
    ]
    for name, args in cases:
        a = [None if v is None else _arr(xp, v) for v in args]
        r = [None if v is None else _arr(xp, v) for v in args]
        got = to_numpy(getattr(fast, name)(xp, *a))
        want = to_numpy(getattr(ref, name)(xp, *r))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
        assert got.dtype == np.float32, name
    onehot = np.eye(4, dtype=np.float32)[[0, 3, 1, 1, 2]]
    for got, want in zip(fast.softmax_xent(xp, _arr(xp, x * 30), _arr(xp, onehot)),
                         ref.softmax_xent(xp, _arr(xp, x * 30), _arr(xp, onehot)), strict=True):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-5, atol=1e-6)
    v, g = _arr(xp, x), _arr(xp, dy)
    kept = fast.sub_scaled_(xp, v, 0.1, g)
    np.testing.assert_allclose(to_numpy(kept), x - 0.1 * dy, rtol=1e-6)
    assert kept is v  # updated in place


def test_other_libraries_take_the_standard_path():
    import array_api_strict

    assert type(_compat.ops(array_api_strict)) is _compat.StandardOps
