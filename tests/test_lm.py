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
                            for k, v in layer.state_dict(tied=True).items()})
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


# -- 2. Weight tying ----------------------------------------------------------------------
V, D = 7, 4


def _tied(dtype="float32"):
    emb = xn.Embedding(V, D, dtype=dtype)
    return xn.Sequential(emb, xn.LayerNorm(D, bias=False, dtype=dtype), xn.Linear.tied_to(emb))


def _torch_tied():
    import torch

    emb = torch.nn.Embedding(V, D)
    head = torch.nn.Linear(D, V, bias=False)
    head.weight = emb.weight
    return torch.nn.Sequential(emb, torch.nn.LayerNorm(D, bias=False), head).double()


def test_tied_head_is_one_parameter_with_the_summed_gradient(be, rng):
    """Listed once (under the embedding's name), its gradient the sum of the lookup's
    and the head's, as a torch model with head.weight = emb.weight."""
    dtype, _ = _wide(be)
    model = _tied(dtype)
    assert model[2].weight is model[0].weight
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "1.weight"]
    assert list(model.state_dict()) == ["0.weight", "1.weight"]
    assert list(model.state_dict(tied=True)) == ["0.weight", "1.weight", "2.weight"]
    assert model.ties() == {"2.weight": "0.weight"}
    assert len(model.parameters()) == 2 and len(model.arrays()) == 2
    ids = rng.integers(0, V, (3, 5))
    _torch_compare(be, model, _torch_tied(), ids, int_input=True)
    xn.gradcheck(model, be.asarray(ids, dtype="int64"))


def test_tied_weights_round_trip_with_torch(be, rng):
    torch = pytest.importorskip("torch")
    theirs = _torch_tied()
    with torch.no_grad():
        theirs[0].weight.copy_(torch.tensor(rng.standard_normal((V, D))))
    assert set(theirs.state_dict()) == {"0.weight", "1.weight", "2.weight"}
    ours = _tied(_wide(be)[0])
    ours.load_state_dict(theirs.state_dict())  # strict: the alias is the same array
    np.testing.assert_allclose(xn.to_numpy(ours[2].weight.value),
                               theirs[0].weight.detach().numpy(), rtol=1e-6)
    ours.load_state_dict({"0.weight": np.ones((V, D)), "1.weight": np.ones(D)})
    fresh = _torch_tied()
    fresh.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                           for k, v in ours.state_dict(tied=True).items()})
    result = fresh.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                                    for k, v in ours.state_dict().items()}, strict=False)
    assert result.missing_keys == ["2.weight"]  # filled by the tie
    assert float(fresh[2].weight.detach().sum()) == V * D
    with pytest.raises(ValueError, match="shape"):
        ours.load_state_dict({"0.weight": np.ones((V, D)), "2.weight": np.ones((V, 1)),
                              "1.weight": np.ones(D)})


@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
def test_checkpoints_rebuild_ties(be, rng, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model = _tied()
    opt = xn.AdamW(model.parameters(), lr=0.01)
    ids = be.asarray(rng.integers(0, V, (4, 3)), dtype="int64")
    xn.fit(model, ids, ids, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=1,
           batch_size=2, progress=False)
    path = tmp_path / f"tied{suffix}"
    xn.save(path, model, optimizer=opt)
    ck = xn.load_checkpoint(path, backend=be.name, device=be.device_name)
    back = ck.model
    assert back[2].weight is back[0].weight and back.ties() == model.ties()
    assert [p.name for p in ck.optimizer.params] == [p.name for p in opt.params]
    np.testing.assert_array_equal(xn.to_numpy(back(ids)), xn.to_numpy(model(ids)))
    # the description says so, and a file that ties arrays of other shapes is refused
    from xpnet.checkpoint.schema import check_description
    from xpnet.layers import layer_config

    spec = layer_config(model)
    assert spec["ties"] == {"2.weight": "0.weight"}
    spec["ties"] = {"2.weight": "1.weight"}
    with pytest.raises(ValueError, match="ties"):
        xn.layers.declared_state_of(spec)
    assert check_description is not None


def test_ties_in_a_graph_and_nested_models(be, rng, tmp_path):
    """A tie across Graph nodes, and one inside a Sequential inside a Sequential: each
    description records its own, the file rebuilds both."""
    inp = xn.Input(shape=(3,))
    emb = xn.Embedding(V, D)
    h = emb(inp)
    out = xn.Add()(xn.Linear.tied_to(emb)(h), xn.Linear(D, V)(h))
    graph = xn.Graph(inputs=inp, outputs=out)
    assert graph.ties() == {"1.weight": "0.weight"}
    inner = _tied()
    nested = xn.Sequential(inner, xn.Linear(V, 2))
    from xpnet.layers import layer_config

    assert "ties" not in layer_config(nested)  # the inner Sequential's own
    assert layer_config(nested)["config"]["layers"][0]["ties"] == {"2.weight": "0.weight"}
    ids = be.asarray(rng.integers(0, V, (2, 3)), dtype="int64")
    for model in (graph, nested):
        xn.save(tmp_path / "g.xpnet", model)
        back = xn.load(tmp_path / "g.xpnet", backend=be.name, device=be.device_name)
        assert back.ties() == model.ties()
        np.testing.assert_allclose(xn.to_numpy(back(ids)), xn.to_numpy(model(ids)),
                                   rtol=1e-6)


def test_tied_to_refuses_what_has_no_table():
    with pytest.raises(TypeError, match="Embedding"):
        xn.Linear.tied_to(xn.LayerNorm(3))
    model = _tied()
    with pytest.raises(ValueError, match="shapes"):
        model.tie("1.weight", "0.weight")
