"""Language models as people train them (GPT-style): LayerNorm without bias or affine,
weight tying, initialisers by name and callable, attention and residual dropout,
blockwise (flash-style) attention, token windows, cached generation and the GPT
example. Torch oracles in float64 where the case has it; gradchecks on every case."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import xpnet as xn
from xpnet.testing import assert_on, check_layer


def _wide(be):
    """float64 where the case has it (PyTorch comparisons to 1e-9), else float32."""
    return ("float64", 1e-9) if be.supports("float64") else ("float32", 1e-4)


def _torch_compare(be, layer, module, x_host, *, int_input=False):
    """Forward and backward of ``layer`` on ``be`` against torch ``module`` (float64 on
    the CPU, its weights copied from ``layer``): output, input gradient and the gradient
    of every parameter the two share by name."""
    torch = pytest.importorskip("torch")
    dtype, tol = _wide(be)
    module.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                            for k, v in layer.state_dict().items()})
    x = be.asarray(x_host, dtype="int64" if int_input else dtype)
    layer.zero_grad()
    y = layer.forward(x)
    dy_host = np.random.default_rng(7).standard_normal(tuple(y.shape))
    dx = layer.backward(be.asarray(dy_host, dtype=dtype))
    xt = torch.tensor(x_host) if int_input else torch.tensor(x_host, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy_host))
    np.testing.assert_allclose(xn.to_numpy(y), yt.detach().numpy(), rtol=tol, atol=tol)
    if not int_input:
        np.testing.assert_allclose(xn.to_numpy(dx), xt.grad.numpy(), rtol=tol, atol=tol)
    ours = dict(layer.named_parameters())
    theirs = dict(module.named_parameters())  # torch lists a tied parameter once too
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for name, p in theirs.items():
        np.testing.assert_allclose(xn.to_numpy(ours[name].grad), p.grad.numpy(),
                                   rtol=tol, atol=tol, err_msg=name)


# -- 1. LayerNorm without bias or affine; Linear without bias -----------------------------
@pytest.mark.parametrize("kw", [dict(bias=False), dict(elementwise_affine=False),
                                dict(elementwise_affine=False, bias=False)],
                         ids=["no-bias", "no-affine", "neither"])
def test_layernorm_variants_match_torch(be, rng, kw, tmp_path):
    torch = pytest.importorskip("torch")
    dtype, _ = _wide(be)
    layer = xn.LayerNorm(5, eps=1e-4, dtype=dtype, **kw)
    module = torch.nn.LayerNorm(5, eps=1e-4, **kw).double()
    names = [n for n, _ in module.named_parameters()]
    assert list(layer.state_dict()) == names == list(module.state_dict())
    assert [n for n, _ in layer.named_parameters()] == names
    assert xn.LayerNorm.param_shapes(layer.get_config()) == {n: (5,) for n in names}
    if layer.weight is not None:  # weights no constructor draws, from torch
        with torch.no_grad():
            module.weight.copy_(torch.tensor(rng.standard_normal(5)))
        layer.load_state_dict(module.state_dict())
    x_host = rng.standard_normal((2, 3, 5))
    _torch_compare(be, layer, module, x_host)
    check_layer(layer, be.asarray(x_host, dtype=dtype))
    xn.save(tmp_path / "n.xpnet", layer)
    back = xn.load(tmp_path / "n.xpnet", backend=be.name, device=be.device_name)
    assert back.get_config() == layer.get_config()
    for (n1, a), (n2, b) in zip(layer.state_dict().items(), back.state_dict().items(),
                                strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)


def test_layernorm_without_parameters_takes_any_float_input(be):
    layer = xn.LayerNorm(4, elementwise_affine=False)
    assert layer.parameters() == [] and layer.weight is None and layer.bias is None
    y = layer(be.asarray(np.arange(8.0).reshape(2, 4), dtype="float32"))
    assert_on(be, y, "float32")
    np.testing.assert_allclose(xn.to_numpy(y).mean(axis=-1), 0.0, atol=1e-6)


def test_linear_without_bias_round_trips_with_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = _wide(be)
    layer = xn.Linear(4, 3, bias=False, dtype=dtype)
    module = torch.nn.Linear(4, 3, bias=False).double()
    assert list(layer.state_dict()) == list(module.state_dict()) == ["weight"]
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rng.standard_normal((3, 4))))
    layer.load_state_dict(module.state_dict())
    _torch_compare(be, layer, module, rng.standard_normal((2, 5, 4)))
    fresh = torch.nn.Linear(4, 3, bias=False).double()
    fresh.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(fresh.weight.detach().numpy(),
                                  module.weight.detach().numpy().astype(dtype))
