"""GRU and LSTM: check_layer on every backend case, torch.nn.GRU/LSTM with copied
weights, a NumPy-loop reference, checkpoints, argument and input checks, and the
MNIST-1D GRU model learning a small sequence task."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import xpnet as xn
from xpnet.testing import check_layer

CELLS = {"GRU": xn.GRU, "LSTM": xn.LSTM}
#: (bidirectional, return_sequences): every combination for the references below
MODES = [(False, True), (True, True), (False, False), (True, False)]
#: check_layer (finite differences, slow on JAX and array-api-strict) runs the two that
#: between them cover both directions and both outputs; the bidirectional one without
#: biases, so that both parameter layouts are checked
CHECK_MODES = [(True, True), (False, False)]
#: on jax-cpu, whose eager mode compiles every operation for each new shape (about 60 ms
#: each), check_layer runs one mode per cell; test_matches_torch still compares all four
#: with torch there (outputs and every gradient, float64)
JAX_CHECKS = {("GRU", (True, True)), ("LSTM", (False, False))}
#: (N, L, F, H) of the tests on every case: small, and one N, L, H for all of them, so
#: JAX compiles each step's operations once (eager JAX compiles per shape)
N, L, F, H = 2, 2, 3, 2


def _mode_id(mode):
    bi, seq = mode
    return f"{'bi' if bi else 'uni'}-{'seq' if seq else 'last'}"


# -- check_layer on every case ---------------------------------------------------------
@pytest.mark.parametrize("mode", CHECK_MODES, ids=_mode_id)
@pytest.mark.parametrize("cell", list(CELLS))
def test_check_layer(be, rng, cell, mode):
    bi, seq = mode
    if be.name == "jax" and (cell, mode) not in JAX_CHECKS:
        pytest.skip("jax-cpu: eager JAX compiles each operation per shape, so check_layer "
                    "runs one mode per cell there; test_matches_torch covers this one")
    layer = CELLS[cell](F, H, bias=not bi, bidirectional=bi, return_sequences=seq)
    x = be.asarray(rng.standard_normal((N, L, F)), dtype="float32")
    check_layer(layer, x)
    y = layer(x)
    assert tuple(y.shape) == ((N, L, H * (1 + bi)) if seq else (N, H * (1 + bi)))


# -- torch.nn.GRU / LSTM with copied weights -------------------------------------------
def _torch_module(torch, cell, bi, bias=True, sizes=(F, H)):
    """``torch.nn.GRU/LSTM(F, H, batch_first=True)`` in float64."""
    return getattr(torch.nn, cell)(*sizes, batch_first=True, bidirectional=bi,
                                   bias=bias).double()


def _torch_run(torch, module, x_host, dy_host, seq):
    """torch's output (ours: h_n joined for return_sequences=False), input gradient and
    parameter gradients, as NumPy."""
    x = torch.tensor(x_host, requires_grad=True)
    out, h_n = module(x)
    if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
        h_n = h_n[0]
    y = out if seq else torch.cat(list(h_n), dim=1)
    y.backward(torch.tensor(dy_host))
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    return y.detach().numpy(), x.grad.numpy(), grads


def _compare_with_torch(be, rng, cell, mode, sizes):
    """Our layer with torch's weights against torch: output, input gradient and every
    parameter gradient, within 1e-9 in float64 (1e-4 in float32 where the case has no
    float64)."""
    torch = pytest.importorskip("torch")
    bi, seq = mode
    n, length, f, h = sizes
    dtype, tol = ("float64", 1e-9) if be.supports("float64") else ("float32", 1e-4)
    module = _torch_module(torch, cell, bi, sizes=(f, h))
    layer = CELLS[cell](f, h, bidirectional=bi, return_sequences=seq, dtype=dtype)
    assert list(layer.state_dict()) == [name for name, _ in module.named_parameters()]
    layer.load_state_dict(module.state_dict())
    x_host = rng.standard_normal((n, length, f))
    width = 2 * h if bi else h
    dy_host = rng.standard_normal((n, length, width) if seq else (n, width))
    want_y, want_dx, want_grads = _torch_run(torch, module, x_host, dy_host, seq)
    y = layer.forward(be.asarray(x_host, dtype=dtype))
    dx = layer.backward(be.asarray(dy_host, dtype=dtype))
    np.testing.assert_allclose(xn.to_numpy(y), want_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(xn.to_numpy(dx), want_dx, rtol=tol, atol=tol)
    got = dict(layer.named_parameters())
    assert list(got) == list(want_grads)
    for name, g in want_grads.items():
        np.testing.assert_allclose(xn.to_numpy(got[name].grad), g, rtol=tol, atol=tol,
                                   err_msg=name)


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_torch(be, rng, cell, mode):
    _compare_with_torch(be, rng, cell, mode, (N, L, F, H))


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_torch_longer(rng, cell, mode):
    """Longer sequences and wider states, on NumPy (the default backend)."""
    _compare_with_torch(xn.current(), rng, cell, mode, (3, 7, 4, 5))


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_both_ways_with_torch(rng, cell):
    """xpnet -> torch and torch -> xpnet, without biases too: the same function."""
    torch = pytest.importorskip("torch")
    x_host = rng.standard_normal((2, 4, 4))
    for bias in (True, False):
        layer = CELLS[cell](4, 3, bidirectional=True, bias=bias, dtype="float64",
                            backend="numpy")
        module = _torch_module(torch, cell, True, bias=bias, sizes=(4, 3))
        module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        want = module(torch.tensor(x_host))[0].detach().numpy()
        np.testing.assert_allclose(layer(x_host), want, rtol=1e-12, atol=1e-12)
        other = CELLS[cell](4, 3, bidirectional=True, bias=bias, dtype="float64",
                            backend="numpy")
        assert not np.allclose(other(x_host), want)  # fresh weights differ ...
        other.load_state_dict(module.state_dict())  # ... until torch's are loaded
        np.testing.assert_allclose(other(x_host), want, rtol=1e-12, atol=1e-12)


# -- a reference written with loops ------------------------------------------------------
def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _loop_reference(cell, sd, x, bi, hid):
    """Per example, per step, per gate: PyTorch's equations with NumPy vectors."""
    n, length, _ = x.shape
    outs = np.zeros((n, length, (1 + bi) * hid))
    finals = np.zeros((n, (1 + bi) * hid))
    for d, suffix in enumerate(("", "_reverse")[:1 + bi]):
        w_ih, w_hh = sd[f"weight_ih_l0{suffix}"], sd[f"weight_hh_l0{suffix}"]
        b_ih, b_hh = sd[f"bias_ih_l0{suffix}"], sd[f"bias_hh_l0{suffix}"]

        def block(a, k):
            return a[k * hid:(k + 1) * hid]

        for e in range(n):
            h, c = np.zeros(hid), np.zeros(hid)
            for t in (range(length - 1, -1, -1) if d else range(length)):
                gx = w_ih @ x[e, t] + b_ih
                gh = w_hh @ h + b_hh
                if cell == "GRU":
                    r = _sig(block(gx, 0) + block(gh, 0))
                    z = _sig(block(gx, 1) + block(gh, 1))
                    cand = np.tanh(block(gx, 2) + r * block(gh, 2))
                    h = (1 - z) * cand + z * h
                else:
                    a = gx + gh
                    i, f = _sig(block(a, 0)), _sig(block(a, 1))
                    g, o = np.tanh(block(a, 2)), _sig(block(a, 3))
                    c = f * c + i * g
                    h = o * np.tanh(c)
                outs[e, t, d * hid:(d + 1) * hid] = h
            finals[e, d * hid:(d + 1) * hid] = h
    return outs, finals


@pytest.mark.parametrize("cell", list(CELLS))
def test_loop_reference(be, rng, cell):
    layer = CELLS[cell](F, H, bidirectional=True)
    last = CELLS[cell](F, H, bidirectional=True, return_sequences=False)
    last.load_state_dict(layer.state_dict())
    # nonzero biases of a useful size, so that adding them is checked
    sd = {k: (v + rng.uniform(-0.5, 0.5, v.shape) if "bias" in k else v).astype(np.float32)
          for k, v in layer.state_dict().items()}
    layer.load_state_dict(sd)
    last.load_state_dict(sd)
    x_host = rng.standard_normal((N, L, F)).astype(np.float32)
    want_seq, want_last = _loop_reference(cell, {k: v.astype(np.float64) for k, v in sd.items()},
                                          x_host.astype(np.float64), True, H)
    x = be.asarray(x_host)
    np.testing.assert_allclose(xn.to_numpy(layer(x)), want_seq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.to_numpy(last(x)), want_last, rtol=1e-5, atol=1e-6)


# -- the contract: train flag, accumulation, backward_params ------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_contract(rng, cell):
    layer = CELLS[cell](3, 2, bidirectional=True, dtype="float64", backend="numpy")
    x = rng.standard_normal((4, 6, 3))
    dy = rng.standard_normal((4, 6, 4))
    y_infer = layer.forward(x, train=False)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(dy)  # inference keeps nothing
    y = layer.forward(x)
    np.testing.assert_array_equal(y, y_infer)
    dx = layer.backward(dy)
    once = {n: p.grad.copy() for n, p in layer.named_parameters()}
    assert layer.backward(dy) is not None  # a second backward adds the same again
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, err_msg=name)
    layer.zero_grad()
    assert layer.backward_params(dy) is None
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, once[name], rtol=1e-12, err_msg=name)
    assert dx.shape == x.shape


def test_one_step_sequences(rng):
    """L = 1: the recurrent weights get zero gradient (h_prev is the zero state)."""
    for cls in CELLS.values():
        layer = cls(2, 3, bidirectional=True, dtype="float64", backend="numpy")
        check_layer(layer, rng.standard_normal((2, 1, 2)))
        layer.forward(rng.standard_normal((2, 1, 2)))
        layer.backward(rng.standard_normal((2, 1, 6)))
        assert not np.any(layer.weight_hh_l0.grad)
        assert np.any(layer.weight_ih_l0.grad)


# -- parameters, initialisation, arguments, input checks ----------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
def test_parameters_and_init(cell):
    gates = {"GRU": 3, "LSTM": 4}[cell]
    for bi in (False, True):
        for bias in (True, False):
            layer = CELLS[cell](5, 16, bidirectional=bi, bias=bias)
            shapes = {n: p.shape for n, p in layer.named_parameters()}
            assert shapes == CELLS[cell].param_shapes(layer.get_config())
            names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"]
                                                          if bias else [])
            assert list(shapes) == names + ([n + "_reverse" for n in names] if bi else [])
            assert shapes["weight_ih_l0"] == (gates * 16, 5)
            assert shapes["weight_hh_l0"] == (gates * 16, 16)
    k = 1 / math.sqrt(16)
    xn.seed(3)
    a = CELLS[cell](5, 16, bidirectional=True)
    xn.seed(3)
    b = CELLS[cell](5, 16, bidirectional=True)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        v = xn.to_numpy(p.value)
        np.testing.assert_array_equal(v, xn.to_numpy(q.value))  # one seed, one draw
        assert np.abs(v).max() <= k and np.abs(v).max() > 0.8 * k, name
        assert abs(v.std() - k / math.sqrt(3)) < 0.35 * k / math.sqrt(3), name
    assert not np.array_equal(xn.to_numpy(a.weight_hh_l0.value),
                              xn.to_numpy(a.weight_hh_l0_reverse.value))


@pytest.mark.parametrize("cell", list(CELLS))
def test_bad_arguments(cell):
    cls = CELLS[cell]
    with pytest.raises(ValueError, match=f"{cell}: hidden_size must be >= 1, got 0"):
        cls(3, 0)
    with pytest.raises(TypeError, match=f"{cell}: input_size must be an integer"):
        cls(2.5, 3)
    with pytest.raises(TypeError, match=f"{cell}: bidirectional must be True or False"):
        cls(3, 3, bidirectional="yes")
    with pytest.raises(ValueError, match=f"{cell}: dtype must be one of"):
        cls(3, 3, dtype="float16")


@pytest.mark.parametrize("cell", list(CELLS))
def test_bad_input(be, cell):
    layer = CELLS[cell](4, 3)
    for shape in [(2, 5, 3), (2, 4), (2, 0, 4), (1, 2, 5, 4)]:
        x = be.asarray(np.zeros(shape), dtype="float32")
        with pytest.raises(ValueError, match=rf"{cell}\(input_size=4.*\(N, L, 4\).*got "
                                             rf"{re.escape(str(shape))}"):
            layer.forward(x)
    if be.supports("float64"):
        with pytest.raises(TypeError, match=rf"{cell}\(.*float32.*got float64"):
            layer.forward(be.asarray(np.zeros((2, 5, 4)), dtype="float64"))


# -- checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
def test_save_load(tmp_path, rng, cell):
    with xn.use("numpy"):  # NumPy inputs below, whatever an earlier test left selected
        model = xn.Sequential(CELLS[cell](4, 3, bidirectional=True, return_sequences=False),
                              xn.Linear(6, 2))
    model.load_state_dict({k: v + rng.uniform(-0.1, 0.1, v.shape)  # not the init draw
                           for k, v in model.state_dict().items()})
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    xn.save(tmp_path / "m.xpnet", model)
    back = xn.load(tmp_path / "m.xpnet", backend="numpy")
    assert back[0].get_config() == model[0].get_config()
    for (n, a), (m, b) in zip(model.state_dict().items(), back.state_dict().items(),
                              strict=True):
        assert n == m
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back(x), model(x))


# -- the MNIST-1D model ------------------------------------------------------------------
def test_mnist1d_gru_builds():
    model = xn.models.mnist1d_gru()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes["1.weight_ih_l0"] == (18, 1) and shapes["1.weight_hh_l0_reverse"] == (18, 6)
    assert shapes["3.weight"] == (10, 480)
    x = model.backend.asarray(np.zeros((2, 40)), dtype="float32")  # auto: CuPy on a GPU
    assert tuple(model(x).shape) == (2, 10)


def test_mnist1d_gru_learns(rng):
    """Which half of the sequence holds a bump: only the order of the values tells."""
    n = 256
    x = 0.1 * rng.standard_normal((n, 40)).astype(np.float32)
    y = rng.integers(0, 2, n)
    where = rng.integers(0, 20, n) + 20 * y
    x[np.arange(n), where] += 2.0
    xn.seed(0)
    model = xn.models.mnist1d_gru()
    before = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy())
    history = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(),
                     optimizer=xn.Adam(model.parameters(), lr=0.02), epochs=6,
                     batch_size=32, progress=False, seed=0)
    after = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert after["loss"] < 0.3 * before["loss"]
    assert after["accuracy"] > 0.9
