"""Small data, fits and comparisons that several test files share.

Tests import them by name (``from helpers import blobs``): pytest puts ``tests/`` on
``sys.path`` (``pythonpath`` in pyproject.toml), as for ``from conftest import assert_on``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import xpnet as xn
from xpnet import backend, backends
from xpnet.backend import to_numpy
from xpnet.backends.base import CapturingCompiler
from xpnet.testing import assert_on


# -- data and fits ------------------------------------------------------------------------
def blobs(n=48, seed=0, *, rng=None, classes=3, width=4, scale=2.0, offset=0.0, spread=0.3):
    """Gaussian blobs any working trainer separates: class ``c`` is centred at
    ``scale * e_c + offset`` in ``width`` dimensions, with standard deviation ``spread``.

    Float32 inputs ``(n, width)`` and int64 labels ``(n,)``, drawn from ``rng`` (a NumPy
    generator, which moves on) or else from a fresh one seeded with ``seed``.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    y = rng.integers(0, classes, size=n)
    centers = scale * np.eye(classes, width) + offset
    x = centers[y] + spread * rng.standard_normal((n, width))
    return x.astype(np.float32), y.astype(np.int64)


def poisoned_blobs(n=48, at=20):
    """:func:`blobs` whose row ``at`` is NaN: the batch holding it has a NaN loss."""
    x, y = blobs(n)
    x[at] = np.nan
    return x, y


def quick_fit(model, x, y, **kw):
    """A short quiet seeded fit: softmax cross-entropy, SGD(lr=0.1), one epoch of batches
    of 16; any of these, and any other fit argument, can be given."""
    opts = dict(loss=xn.SoftmaxCrossEntropy(), epochs=1, batch_size=16, progress=False, seed=0)
    opts.update(kw)
    if "optimizer" not in opts:
        opts["optimizer"] = xn.SGD(model, lr=0.1)
    return xn.fit(model, x, y, **opts)


# -- backends -----------------------------------------------------------------------------
def library(name, device=None):
    """An opened backend of ``name`` (on the CPU where it has one, else CuPy's first GPU),
    or a skip saying why there is none here."""
    device = device or ("cuda:0" if name == "cupy" else "cpu")
    try:
        return backend.make(name, device)
    except backends.BackendUnavailableError as e:
        pytest.skip(str(e))


def wide(be):
    """The dtype, and the tolerance against a float64 reference, for comparisons on
    ``be``: float64 where the device has it; float32 and a looser tolerance where not."""
    return ("float64", 1e-9) if be.supports("float64") else ("float32", 1e-4)


# -- comparisons --------------------------------------------------------------------------
def assert_grads_equal(got, want, tol=1e-11):
    """``(dx, dW, db)`` of a fast convolution path against the standard one's (None
    where it is), on any library, to ``tol``."""
    for g, w, what in zip(got, want, ("dx", "dW", "db"), strict=True):
        if w is None:
            assert g is None, what
        else:
            g, w = to_numpy(g), to_numpy(w)
            assert g.shape == w.shape, what
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=what)


def torch_compare(be, layer, module, x_host, *, params=(), int_input=False):
    """Forward and backward of ``layer`` on ``be`` against torch ``module`` (float64 on
    the CPU, its weights copied from ``layer``, tied ones under each name): output, input
    gradient and the gradients of ``params`` (names shared by both), or, with
    ``params="all"``, of every parameter, the two listing the same names (torch lists a
    tied parameter once too)."""
    torch = pytest.importorskip("torch")
    dtype, tol = wide(be)
    module.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                            for k, v in layer.state_dict(tied=True).items()})
    x = be.asarray(x_host, dtype="int64" if int_input else dtype)
    layer.zero_grad()
    y = layer.forward(x)
    dy_host = np.random.default_rng(7).standard_normal(tuple(y.shape))
    dx = layer.backward(be.asarray(dy_host, dtype=dtype))
    xt = torch.tensor(x_host) if int_input else torch.tensor(x_host, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy_host))
    np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), rtol=tol, atol=tol)
    if int_input:
        assert dx is None
    else:
        np.testing.assert_allclose(to_numpy(dx), xt.grad.numpy(), rtol=tol, atol=tol)
    got = dict(layer.named_parameters())
    tgrads = dict(module.named_parameters())
    if params == "all":
        assert set(got) == set(tgrads), (sorted(got), sorted(tgrads))
        params = list(tgrads)
    for name in params:
        np.testing.assert_allclose(to_numpy(got[name].grad), tgrads[name].grad.numpy(),
                                   rtol=tol, atol=tol, err_msg=name)


def torch_round_trips(be, layer, tmp_path, module):
    """load_state_dict from torch; xn.save/xn.load keeps those weights; load_state_dict
    back into torch."""
    torch = pytest.importorskip("torch")
    # torch -> xpnet, with weights no constructor would draw
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.tensor(rng.standard_normal(tuple(p.shape))))
    layer.load_state_dict(module.state_dict())
    for name, value in module.state_dict().items():
        np.testing.assert_allclose(layer.state_dict()[name], value.numpy(), rtol=1e-6)
    # a checkpoint round trip
    xn.save(tmp_path / "m.xpnet", layer)
    back = xn.load(tmp_path / "m.xpnet", backend=be.name, device=be.device_name)
    assert type(back) is type(layer) and back.get_config() == layer.get_config()
    assert_on(be, back.weight.value, layer.dtype)
    for (n1, a), (n2, b) in zip(layer.state_dict().items(), back.state_dict().items(),
                                strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)
    # xpnet -> torch
    fresh = copy.deepcopy(module)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                           for k, v in layer.state_dict().items()})
    for name, value in fresh.state_dict().items():
        np.testing.assert_allclose(value.numpy(), layer.state_dict()[name], rtol=1e-6)


def torch_autograd_check(layer, x_host, torch_fn, params):
    """Outputs and all gradients of an xpnet layer (made float64, run on NumPy) against
    torch autograd of ``torch_fn(x, *params)`` in float64."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with xn.use("numpy"):
        layer.astype("float64")
        y = layer.forward(x_host)
        dy = np.random.default_rng(0).standard_normal(y.shape)
        dx = layer.backward(dy)
    xt = torch.tensor(x_host, requires_grad=True)
    pt = [torch.tensor(p.value, requires_grad=True) for p in params]
    yt = torch_fn(xt, *pt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for p, t in zip(params, pt, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- a CUDA graph stand-in ----------------------------------------------------------------
class FakeGraphs(CapturingCompiler):
    """Stands for ``backends.cupy.CudaGraphs``. Capturing runs the step's Python (as a
    real capture does) but undoes what it computed (a capture records kernels without
    running them); a launch re-runs the captured code, which reads and writes exactly
    the arrays the capture saw."""

    name = "fake CUDA graph"

    def __init__(self, step=None):
        self.step = step  # whose arrays a capture leaves as they were (None: not checked)
        self.captures = self.launches = self.eager_runs = 0

    def eager(self, fn):
        self.eager_runs += 1
        return fn()

    def capture(self, fn):
        self.captures += 1
        saved = [(a, a.copy()) for a in self.step.arrays()] if self.step else []
        try:
            fn()
        finally:
            for a, old in saved:
                a[...] = old
        return fn

    def launch(self, graph):
        self.launches += 1
        graph()
