"""Optimizers on every backend case, against updates written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn


def _param(be, host):
    p = xn.Parameter("w", be.asarray(host, dtype="float32"))
    return p


def _run(be, opt_factory, w0, grads):
    p = _param(be, w0)
    opt = opt_factory([p])
    for g in grads:
        p.grad = be.asarray(g, dtype="float32")
        opt.step()
        opt.zero_grad()
    assert_on(be, p.value)
    return xn.to_numpy(p.value)


def test_sgd_plain(be, rng):
    w0, grads = rng.standard_normal(5), rng.standard_normal((3, 5))
    got = _run(be, lambda ps: xn.SGD(ps, lr=0.1), w0, grads)
    np.testing.assert_allclose(got, w0 - 0.1 * grads.sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay(be, rng, nesterov):
    w0, grads = rng.standard_normal(4), rng.standard_normal((4, 4))
    m, lr, wd = 0.9, 0.05, 0.01
    got = _run(be, lambda ps: xn.SGD(ps, lr=lr, momentum=m, nesterov=nesterov,
                                     weight_decay=wd), w0, grads)
    w, v = w0.copy(), None
    for g in grads:
        g = g + wd * w
        v = g.copy() if v is None else m * v + g
        w = w - lr * ((g + m * v) if nesterov else v)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam(be, rng, kind):
    w0, grads = rng.standard_normal(4), rng.standard_normal((5, 4))
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    cls = getattr(xn, kind)
    got = _run(be, lambda ps: cls(ps, lr=lr, weight_decay=wd), w0, grads)
    w, m, v = w0.copy(), np.zeros(4), np.zeros(4)
    for t, g in enumerate(grads, start=1):
        if kind == "AdamW":
            w = w - lr * wd * w
        else:
            g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_schedules():
    s = xn.StepLR(0.1, step_size=2, gamma=0.5)
    assert [s(i) for i in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    c = xn.CosineLR(1.0, total_steps=4, min_lr=0.0)
    np.testing.assert_allclose([c(i) for i in range(6)],
                               [1.0, 0.8535534, 0.5, 0.1464466, 0.0, 0.0], atol=1e-6)


def test_optimizer_uses_schedule(be):
    p = _param(be, np.zeros(1))
    opt = xn.SGD([p], lr=xn.StepLR(1.0, step_size=1, gamma=0.5))
    for _ in range(3):
        p.grad = be.asarray(np.ones(1), dtype="float32")
        opt.step()
    np.testing.assert_allclose(xn.to_numpy(p.value), [-(1 + 0.5 + 0.25)])


def test_optimizer_leaves_caller_array_alone(be):
    host = np.ones(3, dtype=np.float32)
    p = xn.Parameter("w", be.asarray(host))
    p.grad = be.asarray(np.ones(3), dtype="float32")
    xn.SGD([p], lr=1.0).step()
    np.testing.assert_array_equal(host, np.ones(3))
    np.testing.assert_array_equal(xn.to_numpy(p.value), np.zeros(3))


def test_optimizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no parameters"):
        xn.SGD([], lr=0.1)
    p = xn.Parameter("w", np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"lr must be a finite number in \(0"):
        xn.SGD([p], lr=0.0)
    with pytest.raises(ValueError, match="nesterov"):
        xn.SGD([p], lr=0.1, nesterov=True)


def test_a_schedule_giving_a_negative_rate_is_refused():
    """A callable lr that went negative trained uphill (a float one is refused)."""
    p = xn.Parameter("w", np.zeros(2, dtype=np.float32))
    p.grad = np.ones(2, dtype=np.float32)
    opt = xn.SGD([p], lr=lambda step: 0.1 - 0.1 * step)
    opt.step()
    opt.step()  # the rate is 0 at step 1: allowed
    p.grad = np.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"SGD: the learning rate .* gave -0.1 at step 2; "
                                         r"a schedule must give finite rates >= 0"):
        opt.step()
    np.testing.assert_allclose(p.value, [-0.1, -0.1])  # the refused step changed nothing


# -- hyperparameters are checked where given ------------------------------------------
@pytest.mark.parametrize("make, pattern", [
    (lambda p: xn.SGD(p, lr=float("nan")), "SGD: lr must be a finite number"),
    (lambda p: xn.SGD(p, lr=0.1, momentum=1.5), "SGD: momentum must be"),
    (lambda p: xn.Adam(p, betas=(1.0, 0.9)), r"Adam: betas\[0\] must be"),
    (lambda p: xn.Adam(p, eps=0.0), "Adam: eps must be"),
    (lambda p: xn.CosineLR(-1.0, 10), "CosineLR: lr must be"),
    (lambda p: xn.CosineLR(0.1, 0), "CosineLR: total_steps must be >= 1"),
    (lambda p: xn.StepLR(0.1, step_size=0), "StepLR: step_size must be >= 1"),
    (lambda p: xn.StepLR(0.1, step_size=2.5), "StepLR: step_size must be an integer"),
])
def test_hyperparameters_are_checked_where_given(make, pattern):
    p = [xn.Parameter("w", np.zeros(2, dtype=np.float32))]
    with pytest.raises((ValueError, TypeError), match=pattern):
        make(p)
