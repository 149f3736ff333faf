"""Sequence-model basics on every backend case: Linear on any leading shape, LayerNorm,
GELU/SiLU/LeakyReLU, Embedding, and the primitives under them (``erf``, ``rows_add``):
check_layer, a NumPy reference, and torch.nn in float64 with copied weights."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn
from xpnet import _compat, backend, backends
from xpnet.backend import to_numpy
from xpnet.backends import StandardOps
from xpnet.testing import check_layer


def _wide(be):
    """The dtype, and the tolerance against torch, for comparisons on ``be``."""
    return ("float64", 1e-9) if be.supports("float64") else ("float32", 1e-4)


def _torch_compare(be, layer, module, x_host, *, params=(), int_input=False):
    """Forward and backward of ``layer`` on ``be`` against torch ``module`` (float64 on
    the CPU, its weights copied from ``layer``): output, input gradient and the
    gradients of ``params`` (names shared by both)."""
    torch = pytest.importorskip("torch")
    dtype, tol = _wide(be)
    module.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                            for k, v in layer.state_dict().items()})
    x = be.asarray(x_host, dtype="int64" if int_input else dtype)
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
    for name in params:
        np.testing.assert_allclose(to_numpy(got[name].grad), tgrads[name].grad.numpy(),
                                   rtol=tol, atol=tol, err_msg=name)


def _round_trips(be, layer, tmp_path, module):
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


# -- Linear on any leading shape ------------------------------------------------------
def test_linear_on_any_leading_shape(be, rng):
    layer = xn.Linear(4, 3)
    layer.bias.value = be.asarray(rng.standard_normal(3), dtype="float32")
    for shape in [(2, 3, 4), (4,), (2, 1, 2, 4)]:
        x_host = rng.standard_normal(shape).astype(np.float32)
        x = be.asarray(x_host)
        if len(shape) == 3:
            check_layer(layer, x)
        y = layer.forward(x)
        assert_on(be, y)
        W, b = to_numpy(layer.weight.value), to_numpy(layer.bias.value)
        np.testing.assert_allclose(to_numpy(y), np.einsum("...i,oi->...o", x_host, W) + b,
                                   rtol=1e-5, atol=1e-5)
        layer.zero_grad()
        dy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        dx = layer.backward(be.asarray(dy))
        assert tuple(dx.shape) == shape
        np.testing.assert_allclose(to_numpy(dx), np.einsum("...o,oi->...i", dy, W),
                                   rtol=1e-5, atol=1e-5)
        lead = list(np.ndindex(shape[:-1]))  # every position's outer product, summed
        np.testing.assert_allclose(to_numpy(layer.weight.grad),
                                   sum(np.outer(dy[i], x_host[i]) for i in lead),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_numpy(layer.bias.grad), sum(dy[i] for i in lead),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Linear.*\(batch, 4\), got \(2, 3, 5\).*\(\.\.\., 4\)"):
        layer.forward(be.asarray(np.zeros((2, 3, 5)), dtype="float32"))


def test_linear_leading_shape_then_2d_uses_each_own_cache(be, rng):
    """A 3-D pass then a 2-D pass: backward follows the last forward, not a stale shape."""
    layer = xn.Linear(3, 2)
    layer.forward(be.asarray(rng.standard_normal((2, 2, 3)), dtype="float32"))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    layer.forward(be.asarray(x))
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    layer.zero_grad()
    dx = layer.backward(be.asarray(dy))
    assert tuple(dx.shape) == (5, 3)
    np.testing.assert_allclose(to_numpy(layer.weight.grad), dy.T @ x, rtol=1e-5, atol=1e-5)


def test_linear_3d_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = _wide(be)
    layer = xn.Linear(4, 3, dtype=dtype)
    _torch_compare(be, layer, torch.nn.Linear(4, 3).double(), rng.standard_normal((2, 3, 4)),
                   params=("weight", "bias"))


# -- LayerNorm ------------------------------------------------------------------------
def _layernorm_ref(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_layernorm(be, rng):
    layer = xn.LayerNorm(4)
    assert layer.get_config() == {"normalized_shape": 4, "eps": 1e-5, "dtype": "float32"}
    np.testing.assert_array_equal(to_numpy(layer.weight.value), np.ones(4))
    np.testing.assert_array_equal(to_numpy(layer.bias.value), np.zeros(4))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    layer.weight.value = be.asarray(w, dtype="float32")
    layer.bias.value = be.asarray(b, dtype="float32")
    for shape in [(2, 3, 4), (5, 4)]:
        x_host = rng.standard_normal(shape) * 3 + 1
        x = be.asarray(x_host, dtype="float32")
        if len(shape) == 3:
            check_layer(layer, x)
        y = layer(x)
        assert_on(be, y)
        np.testing.assert_allclose(to_numpy(y), _layernorm_ref(x_host, w, b), rtol=1e-4,
                                   atol=1e-4)


def test_layernorm_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = _wide(be)
    layer = xn.LayerNorm((4,), eps=1e-3, dtype=dtype)  # PyTorch's 1-tuple is accepted
    assert layer.normalized_shape == 4
    layer.weight.value = be.asarray(rng.standard_normal(4), dtype=dtype)
    layer.bias.value = be.asarray(rng.standard_normal(4), dtype=dtype)
    _torch_compare(be, layer, torch.nn.LayerNorm(4, eps=1e-3).double(),
                   rng.standard_normal((2, 3, 4)) * 2 + 0.5, params=("weight", "bias"))


def test_layernorm_round_trips(be, tmp_path):
    torch = pytest.importorskip("torch")
    _round_trips(be, xn.LayerNorm(4, eps=1e-6), tmp_path, torch.nn.LayerNorm(4).double())


def test_layernorm_refuses_bad_input(be):
    layer = xn.LayerNorm(4)
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\.\.\., 4\), got \(2, 3\)"):
        layer.forward(be.asarray(np.zeros((2, 3)), dtype="float32"))
    if be.supports("float64"):
        with pytest.raises(TypeError, match=r"LayerNorm.*float32.*got float64"):
            layer.forward(be.asarray(np.zeros((2, 4)), dtype="float64"))
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape .*\(2, 4\)"):
        xn.LayerNorm((2, 4))
    with pytest.raises(ValueError, match=r"LayerNorm: eps"):
        xn.LayerNorm(4, eps=0.0)


# -- GELU, SiLU, LeakyReLU ------------------------------------------------------------
def _gelu(z):
    return z * 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def _gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


# name -> (xpnet layer, NumPy reference, the torch.nn module given torch.nn)
ACTIVATIONS = {
    "GELU": (lambda: xn.GELU(), _gelu, lambda nn: nn.GELU()),
    "GELU-tanh": (lambda: xn.GELU("tanh"), _gelu_tanh, lambda nn: nn.GELU(approximate="tanh")),
    "SiLU": (lambda: xn.SiLU(), lambda z: z / (1 + np.exp(-z)), lambda nn: nn.SiLU()),
    "LeakyReLU": (lambda: xn.LeakyReLU(), lambda z: np.where(z > 0, z, 0.01 * z),
                  lambda nn: nn.LeakyReLU()),
    "LeakyReLU-0.2": (lambda: xn.LeakyReLU(0.2), lambda z: np.where(z > 0, z, 0.2 * z),
                      lambda nn: nn.LeakyReLU(0.2)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(be, rng, name):
    make, ref, _ = ACTIVATIONS[name]
    x_host = rng.standard_normal((2, 3, 4)) * 2
    x_host = np.where(np.abs(x_host) < 0.1, 0.5, x_host)  # away from LeakyReLU's kink
    x = be.asarray(x_host, dtype="float32")
    layer = make()
    check_layer(layer, x)
    y = layer(x)
    assert_on(be, y)
    np.testing.assert_allclose(to_numpy(y), ref(x_host.astype(np.float32).astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch(be, rng, name):
    torch = pytest.importorskip("torch")
    make, _, torch_make = ACTIVATIONS[name]
    x_host = rng.standard_normal((2, 3, 4)) * 3
    x_host[0, 0, :3] = [0.0, -8.0, 7.5]  # the kink (both use slope there) and the tails
    _torch_compare(be, make(), torch_make(torch.nn), x_host)


def test_activation_arguments():
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'"):
        xn.GELU("erf")
    with pytest.raises(TypeError, match="LeakyReLU: negative_slope must be a number"):
        xn.LeakyReLU("0.1")
    for layer in (xn.GELU("tanh"), xn.LeakyReLU(0.3), xn.SiLU()):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


# -- erf ------------------------------------------------------------------------------
def test_standard_erf_matches_math_erf():
    """The standard-only erf against math.erf on a dense grid, the tails and the edges."""
    x = np.concatenate([np.linspace(-30, 30, 60001), np.linspace(2.4, 2.6, 2001),
                        np.geomspace(1e-300, 6, 2000), -np.geomspace(1e-300, 6, 2000)])
    want = np.array([math.erf(v) for v in x])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = _compat.erf(np, x)
    assert got.dtype == np.float64
    assert np.max(np.abs(got - want)) < 3e-15
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)) < 3e-15
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e300, -1e300])
    out = _compat.erf(np, edges)
    np.testing.assert_array_equal(out[:4], [0.0, -0.0, 1.0, -1.0])
    assert list(np.signbit(out[:2])) == [False, True]
    assert np.isnan(out[4])
    np.testing.assert_array_equal(out[5:], [math.erf(5e-324), 1.0, -1.0])
    x32 = x.astype(np.float32)
    got32 = _compat.erf(np, x32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, [math.erf(v) for v in x32.astype(np.float64)],
                               rtol=0, atol=6e-7)


def test_standard_erf_on_a_device():
    d1 = _library("array_api_strict", "device1")
    x = np.linspace(-6, 6, 241)
    got = _compat.erf(d1.xp, d1.asarray(x, dtype="float64"))
    assert_on(d1, got, "float64")
    np.testing.assert_allclose(to_numpy(got), [math.erf(v) for v in x], rtol=0, atol=3e-15)


def _library(name, device=None):
    """An opened backend of ``name`` (on the CPU where it has one), or a skip saying why."""
    device = device or ("cuda:0" if name == "cupy" else "cpu")
    try:
        return backend.make(name, device)
    except backends.BackendUnavailableError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "cupy"])
def test_erf_of_each_library_matches_the_standard_one(name):
    be = _library(name)
    xp, fast = be.xp, backends.ops(be.xp)
    x_host = np.concatenate([np.linspace(-7, 7, 2801), [0.0, -0.0, np.inf, -np.inf]])
    for dtype, tol in [("float64", 1e-14), ("float32", 1e-6)]:
        if not be.supports(dtype):
            continue
        x = be.asarray(x_host, dtype=dtype)
        got = fast.erf(xp, x)
        assert_on(be, got, dtype)
        # the standard one, on the same values (on the host: it is the same code)
        want = _compat.erf(np, to_numpy(x))
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=tol)
        np.testing.assert_array_equal(np.signbit(to_numpy(got)), np.signbit(want))
    assert type(fast).erf is not StandardOps.erf  # the library's own


def test_numpy_erf_without_scipy_uses_the_standard_one(monkeypatch):
    from xpnet.backends import numpy as np_backend

    monkeypatch.setattr(np_backend, "_special", [None])
    x = np.linspace(-4, 4, 101)
    got = backends.ops(np).erf(np, x)
    np.testing.assert_array_equal(got, _compat.erf(np, x))


# -- rows_add -------------------------------------------------------------------------
def _rows_add_cases(rng):
    """(n_rows, index, values, reference) with repeated indices, an empty index, rows
    nothing names."""
    out = []
    for n_rows, m in [(6, 20), (50, 9), (4, 0)]:
        index = rng.integers(0, n_rows, m)
        if m > 3:
            index[:3] = index[-1]  # at least one id three more times
        values = rng.standard_normal((m, 3))
        ref = np.zeros((n_rows, 3))
        for i, r in enumerate(index):
            ref[r] += values[i]
        out.append((n_rows, index, values, ref))
    return out


@pytest.mark.parametrize("name, how", [
    *[(lib, "library") for lib in ("numpy", "torch", "jax", "cupy")],  # the fast paths
    *[(lib, how) for lib in ("numpy", "array_api_strict", "torch")  # the standard ones
      for how in ("onehot", "sorted")]])
def test_rows_add_sums_repeated_indices(name, how, rng):
    be = _library(name, "device1" if name == "array_api_strict" else None)
    xp = be.xp
    fns = {"library": [backends.ops(xp).rows_add], "onehot": [StandardOps().rows_add_onehot],
           "sorted": [StandardOps().rows_add_sorted]}[how]
    if how == "library":
        assert type(backends.ops(xp)).rows_add is not StandardOps.rows_add
        scatter = copy.copy(backends.ops(xp))  # NumPy's own scatter even for small tables
        scatter.rows_add_onehot_limit = 0
        fns.append(scatter.rows_add)
    dtype = "float64" if be.supports("float64") else "float32"
    for fn in fns:
        for index_dtype in ("int64", "int32"):
            for n_rows, index, values, ref in _rows_add_cases(rng):
                got = fn(xp, n_rows, be.asarray(index, dtype=index_dtype),
                         be.asarray(values, dtype=dtype))
                assert_on(be, got, dtype)
                np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-6, atol=1e-6)


def test_rows_add_picks_its_branch_by_size(monkeypatch):
    ops = StandardOps()
    calls = []
    monkeypatch.setattr(ops, "rows_add_onehot", lambda *a: calls.append("onehot"))
    monkeypatch.setattr(ops, "rows_add_sorted", lambda *a: calls.append("sorted"))
    index = np.zeros(10, dtype=np.int64)
    ops.rows_add(np, 100, index, np.ones((10, 2)))
    ops.rows_add_onehot_limit = 999
    ops.rows_add(np, 100, index, np.ones((10, 2)))
    assert calls == ["onehot", "sorted"]


# -- Embedding ------------------------------------------------------------------------
def test_embedding(be, rng):
    layer = xn.Embedding(6, 3)
    W = to_numpy(layer.weight.value)
    assert W.shape == (6, 3) and W.dtype == np.float32
    ids_host = rng.integers(0, 6, (2, 4))
    ids_host[0, :3] = 5  # repeated ids: their gradients sum
    ids = be.asarray(ids_host, dtype="int64")
    check_layer(layer, ids)
    y = layer.forward(ids)
    assert_on(be, y)
    np.testing.assert_array_equal(to_numpy(y), W[ids_host])
    dy = rng.standard_normal((2, 4, 3)).astype(np.float32)
    assert layer.backward(be.asarray(dy)) is None
    ref = np.zeros((6, 3))
    for (i, j), r in np.ndenumerate(ids_host):
        ref[r] += dy[i, j]
    np.testing.assert_allclose(to_numpy(layer.weight.grad), ref, rtol=1e-6, atol=1e-6)
    # any id shape, other integer dtypes
    one = layer(be.asarray(np.array([4, 0, 4]), dtype="int32"))
    np.testing.assert_array_equal(to_numpy(one), W[[4, 0, 4]])


def test_embedding_init_draws_standard_normal_once():
    with xn.use("numpy"):
        xn.seed(5)
        a = xn.Embedding(400, 50)
        b = xn.Embedding(400, 50)
    wa, wb = to_numpy(a.weight.value), to_numpy(b.weight.value)
    assert not np.array_equal(wa, wb)
    assert abs(wa.mean()) < 0.02 and abs(wa.std() - 1.0) < 0.02  # N(0, 1), as torch


def test_embedding_matches_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = _wide(be)
    layer = xn.Embedding(6, 3, dtype=dtype)
    ids = rng.integers(0, 6, (2, 4))
    ids[1, :] = 2
    _torch_compare(be, layer, torch.nn.Embedding(6, 3).double(), ids, params=("weight",),
                   int_input=True)


def test_embedding_round_trips(be, tmp_path):
    torch = pytest.importorskip("torch")
    _round_trips(be, xn.Embedding(5, 3), tmp_path, torch.nn.Embedding(5, 3).double())


def test_embedding_refuses_bad_ids(be):
    layer = xn.Embedding(4, 2)
    with pytest.raises(TypeError, match=r"Embedding.*integer ids.*float32"):
        layer.forward(be.asarray(np.zeros((2, 3)), dtype="float32"))
    if backends.ops(be.xp).on_host:
        for bad in ([0, 4, 1], [-1, 2]):
            with pytest.raises(ValueError, match=r"Embedding.*\[0, 3\].*from -?\d to \d"):
                layer.forward(be.asarray(np.array(bad), dtype="int64"))


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


def test_embedding_in_a_sequence_model(rng):
    """Ids -> Embedding -> LayerNorm -> Linear on (N, L, E) -> GELU, checked whole: integer
    ids through a Sequential, on NumPy (and on torch's meta device and array-api-strict's
    device1 inside check_layer; each layer alone runs on every case above)."""
    with xn.use("numpy") as be:
        model = xn.Sequential(xn.Embedding(4, 3), xn.LayerNorm(3), xn.Linear(3, 2),
                              xn.GELU("tanh"))
        ids = be.asarray(rng.integers(0, 4, (2, 3)), dtype="int64")
        check_layer(model, ids)
        assert tuple(model.forward(ids).shape) == (2, 3, 2)
        assert model.backward(be.asarray(np.ones((2, 3, 2)), dtype="float32")) is None
        assert [n for n, _ in model.named_parameters()] == [
            "0.weight", "1.weight", "1.bias", "2.weight", "2.bias"]


def test_embedding_first_in_a_graph_and_a_summary(be, rng):
    """A Graph probes Embedding with integer ids (not float zeros), and the Graph gives
    what the same layers in a Sequential give."""
    emb, lin = xn.Embedding(7, 3), xn.Linear(3, 2)
    inp = xn.Input(shape=(4,))
    graph = xn.Graph(inputs=inp, outputs=lin(emb(inp)))
    ids = be.asarray(rng.integers(0, 7, size=(2, 4)), dtype="int64")
    y = graph(ids)
    assert tuple(y.shape) == (2, 4, 2)
    np.testing.assert_allclose(xn.to_numpy(y), xn.to_numpy(lin(emb(ids))), rtol=1e-6)
    text = xn.Sequential(emb, xn.Flatten()).summary(input_shape=(4,), print_fn=None)
    assert "(N, 4, 3)" in text and "(N, 12)" in text
