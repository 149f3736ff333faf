"""Gradient clipping (xn.clip_grad_norm / clip_grad_value) on every backend case, against
torch.nn.utils, without host reads (torch's meta device, jax.jit), and inside fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn
from xpnet.backend import make

SHAPES = [(3, 4), (4,), (2, 2)]


def _dtype(be):
    return ("float64", 1e-12) if be.supports("float64") else ("float32", 1e-5)


def _params(be, grads, dtype):
    params = [xn.Parameter(f"p{i}", be.asarray(np.zeros(g.shape), dtype=dtype))
              for i, g in enumerate(grads)]
    for p, g in zip(params, grads):
        p.grad = be.asarray(g, dtype=dtype)
    return params


def _grads(rng, scale=1.0):
    return [scale * rng.standard_normal(s) for s in SHAPES]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(be, rng, norm_type, max_norm):
    torch = pytest.importorskip("torch")
    dtype, tol = _dtype(be)
    grads = _grads(rng)
    params = _params(be, grads, dtype)
    idle = xn.Parameter("idle", be.asarray(np.ones(3), dtype=dtype))  # no grad: skipped
    total = xn.clip_grad_norm([*params, idle], max_norm, norm_type=norm_type)
    assert_on(be, total, dtype)
    assert tuple(total.shape) == ()
    assert idle.grad is None
    ref = [torch.tensor(g, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(ref, grads):
        t.grad = torch.tensor(g, dtype=torch.float64)
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type=norm_type)
    np.testing.assert_allclose(float(xn.to_numpy(total)), float(want), rtol=tol)
    for p, t in zip(params, ref):
        assert_on(be, p.grad, dtype)
        np.testing.assert_allclose(xn.to_numpy(p.grad), t.grad.numpy(), rtol=tol, atol=tol)
    clipped = max_norm < float(want)
    assert clipped == (not np.allclose(xn.to_numpy(params[0].grad), grads[0]))


def test_clip_grad_value_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, tol = _dtype(be)
    model = xn.Sequential(xn.Linear(4, 3, dtype=dtype))
    for p in model.parameters():
        p.grad = be.asarray(2.0 * rng.standard_normal(p.shape), dtype=dtype)
    before = [xn.to_numpy(p.grad) for p in model.parameters()]
    xn.clip_grad_value(model, 0.7)  # a Layer works as optimizers take it
    for p, b in zip(model.parameters(), before):
        t = torch.tensor(b)
        t.requires_grad_(True)
        t.grad = torch.tensor(b)
        torch.nn.utils.clip_grad_value_([t], 0.7)
        assert_on(be, p.grad, dtype)
        np.testing.assert_allclose(xn.to_numpy(p.grad), t.grad.numpy(), rtol=tol, atol=tol)
    assert max(np.abs(xn.to_numpy(p.grad)).max() for p in model.parameters()) <= 0.7 + tol


def test_clipping_reads_nothing_on_the_host(rng):
    """On torch's meta device any host read raises; the results stay meta arrays."""
    pytest.importorskip("torch")
    meta = make("torch", "meta")
    params = [xn.Parameter(f"p{i}", meta.asarray(np.zeros(s), dtype="float32"))
              for i, s in enumerate(SHAPES)]
    for p in params:
        p.grad = meta.asarray(np.zeros(p.shape), dtype="float32")
    for norm_type in (2.0, math.inf, 1.5):
        total = xn.clip_grad_norm(params, 1.0, norm_type)
        assert xn.backend.backend_of(total) == meta and tuple(total.shape) == ()
    xn.clip_grad_value(params, 0.1)
    assert all(xn.backend.backend_of(p.grad) == meta for p in params)


def test_clip_grad_norm_traces_under_jax_jit(rng):
    pytest.importorskip("jax")
    import jax

    be = make("jax", "cpu")
    grads = [be.asarray(g, dtype="float32") for g in _grads(rng)]

    def clip(gs):
        params = [xn.Parameter("p", g) for g in gs]
        for p, g in zip(params, gs):
            p.grad = g
        total = xn.clip_grad_norm(params, 0.5)
        return total, [p.grad for p in params]

    total, clipped = jax.jit(clip)(grads)
    eager_total, eager = clip(grads)
    np.testing.assert_allclose(np.asarray(total), np.asarray(eager_total), rtol=1e-6)
    flat = np.concatenate([np.asarray(g).ravel() for g in clipped])
    assert np.linalg.norm(flat) == pytest.approx(0.5, rel=1e-4)


def test_clip_arguments(be):
    p = xn.Parameter("w", be.asarray(np.ones(3), dtype="float32"))
    zero = xn.clip_grad_norm([p], 1.0)  # no gradient anywhere: 0 on the device
    assert_on(be, zero)
    assert float(xn.to_numpy(zero)) == 0.0
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm"):
        xn.clip_grad_norm([p], -1.0)
    with pytest.raises(ValueError, match="clip_grad_norm: norm_type"):
        xn.clip_grad_norm([p], 1.0, norm_type=0)
    with pytest.raises(TypeError, match="clip_grad_norm: expected a Layer or Parameters"):
        xn.clip_grad_norm([p.value], 1.0)
    with pytest.raises(ValueError, match="clip_grad_value: clip_value"):
        xn.clip_grad_value([p], 0.0)
    with pytest.raises(ValueError, match="got no parameters"):
        xn.clip_grad_norm([], 1.0)


def _data(n=48, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 4)).astype(np.float32), r.integers(0, 3, n)


@pytest.mark.fit_level
@pytest.mark.parametrize("how", ["norm", "value"])
def test_fit_clips_after_backward_before_the_step(be, how):
    """fit(clip_grad_*) takes the steps of a hand-written loop that clips each batch."""
    x, y = _data()
    model = xn.Sequential(xn.Linear(4, 3))
    start = model.state_dict()
    kw = {"clip_grad_norm": 0.05} if how == "norm" else {"clip_grad_value": 0.01}
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.5),
           epochs=1, batch_size=16, shuffle=False, progress=False, **kw)
    twin = xn.Sequential(xn.Linear(4, 3))
    twin.load_state_dict(start)
    loss, opt = xn.SoftmaxCrossEntropy(), xn.SGD(twin, lr=0.5)
    plain = xn.Sequential(xn.Linear(4, 3))
    plain.load_state_dict(start)
    xn.fit(plain, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(plain, lr=0.5),
           epochs=1, batch_size=16, shuffle=False, progress=False)
    for i in range(0, len(y), 16):
        opt.zero_grad()
        loss.forward(twin.forward(be.asarray(x[i:i + 16]), train=True),
                     be.asarray(y[i:i + 16]))
        twin.backward_params(loss.backward())
        if how == "norm":
            xn.clip_grad_norm(twin, 0.05)
        else:
            xn.clip_grad_value(twin, 0.01)
        opt.step()
    got, want, unclipped = model.state_dict(), twin.state_dict(), plain.state_dict()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(got[k], unclipped[k], atol=1e-4) for k in got)


def test_fit_clip_arguments():
    x, y = _data()
    model = xn.Sequential(xn.Linear(4, 3))
    fit = dict(loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1), progress=False)
    with pytest.raises(ValueError, match="fit: clip_grad_norm"):
        xn.fit(model, x, y, clip_grad_norm=-1.0, **fit)
    with pytest.raises(ValueError, match=r"fit: clip_grad_value must be a finite number"):
        xn.fit(model, x, y, clip_grad_value=0.0, **fit)
    # compile=True takes clip_grad_value too (it was refused before the one step body)
    xn.fit(model, x, y, clip_grad_value=1.0, compile=True, **fit)


def test_fit_compile_clips_as_eager_fit_does():
    """compile=True clips inside the whole-step call (run eagerly on NumPy here; jax.jit
    and torch.compile trace the same code, which reads nothing on the host)."""
    x, y = _data()
    out = []
    with xn.use("numpy"):
        for compiled in (False, True):
            xn.seed(1)
            model = xn.Sequential(xn.Linear(4, 3))
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.5),
                   epochs=1, batch_size=16, shuffle=False, progress=False,
                   clip_grad_norm=0.05, compile=compiled)
            out.append(model.state_dict())
    for k in out[0]:
        np.testing.assert_allclose(out[1][k], out[0][k], rtol=1e-6, atol=1e-7)
