"""Graph weight sharing: one layer object called at several nodes.

Its parameters are listed once; each node keeps its own cache; the gradients of every
use add up (the sum over paths, for a shared weight).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import assert_on
from helpers import wide

import xpnet as xn
from xpnet.testing import check_layer


# -- models and their NumPy references (float64, written out by hand) -------------------
def _siamese(dtype="float32"):
    """y = tanh(f(a)) + f(b): one Linear at two places, on two inputs."""
    a, b = xn.Input(shape=(4,), name="a"), xn.Input(shape=(4,), name="b")
    f = xn.Linear(4, 3, dtype=dtype, name="f")
    return xn.Graph(inputs=[a, b], outputs=xn.Add()(xn.Tanh()(f(a)), f(b))), f


def _siamese_ref(W, b, xa, xb, dy):
    """Output, (dW, db) and the input gradients of _siamese."""
    ta = np.tanh(xa @ W.T + b)
    dza = dy * (1 - ta**2)
    grads = (dza.T @ xa + dy.T @ xb, dza.sum(0) + dy.sum(0))
    return ta + xb @ W.T + b, grads, [dza @ W, dy @ W]


def _chain(dtype="float32"):
    """y = f(tanh(f(x))): one square Linear twice in sequence."""
    x = xn.Input(shape=(4,))
    f = xn.Linear(4, 4, dtype=dtype)
    return xn.Graph(inputs=x, outputs=f(xn.Tanh()(f(x)))), f


def _chain_ref(W, b, x, dy):
    t = np.tanh(x @ W.T + b)
    dz1 = (dy @ W) * (1 - t**2)
    return t @ W.T + b, (dy.T @ t + dz1.T @ x, dy.sum(0) + dz1.sum(0)), dz1 @ W


def _host(a):
    return xn.to_numpy(a).astype(np.float64)


def _inputs(be, rng, dtype, *shapes):
    return [be.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


# -- gradients --------------------------------------------------------------------------
def test_siamese_passes_check_layer(be, rng):
    model, _ = _siamese()
    check_layer(model, _inputs(be, rng, "float32", (3, 4), (3, 4)))


def test_chain_passes_check_layer(be, rng):
    model, _ = _chain()
    check_layer(model, _inputs(be, rng, "float32", (3, 4))[0])


def test_gradient_is_the_sum_over_uses(be, rng):
    """The shared weight's gradient equals the sum of those of two separate layers holding
    copies of it, and the NumPy formula; the input gradients agree too."""
    dtype, tol = wide(be)
    model, f = _siamese(dtype)
    a, b = xn.Input(shape=(4,)), xn.Input(shape=(4,))
    f1, f2 = xn.Linear(4, 3, dtype=dtype), xn.Linear(4, 3, dtype=dtype)
    for g in (f1, f2):
        g.load_state_dict(f.state_dict())
    twin = xn.Graph(inputs=[a, b], outputs=xn.Add()(xn.Tanh()(f1(a)), f2(b)))
    xs = _inputs(be, rng, dtype, (5, 4), (5, 4))
    dy = be.asarray(rng.standard_normal((5, 3)), dtype=dtype)

    y, dxs = model.forward(xs), model.backward(dy)
    y2, dxs2 = twin.forward(xs), twin.backward(dy)
    assert_on(be, y, dtype)
    for got, want in [(y, y2), *zip(dxs, dxs2, strict=True),
                      (f.weight.grad, f1.weight.grad + f2.weight.grad),
                      (f.bias.grad, f1.bias.grad + f2.bias.grad)]:
        np.testing.assert_allclose(_host(got), _host(want), rtol=tol, atol=tol)

    ref_y, ref_grads, ref_dxs = _siamese_ref(_host(f.weight.value), _host(f.bias.value),
                                             *map(_host, xs), _host(dy))
    np.testing.assert_allclose(_host(y), ref_y, rtol=tol, atol=tol)
    for got, want in [*zip([f.weight.grad, f.bias.grad], ref_grads, strict=True),
                      *zip(dxs, ref_dxs, strict=True)]:
        np.testing.assert_allclose(_host(got), want, rtol=tol, atol=tol)


def test_chain_matches_numpy(be, rng):
    dtype, tol = wide(be)
    model, f = _chain(dtype)
    x, dy = _inputs(be, rng, dtype, (5, 4), (5, 4))
    y, dx = model.forward(x), model.backward(dy)
    ref_y, (dW, db), ref_dx = _chain_ref(_host(f.weight.value), _host(f.bias.value),
                                         _host(x), _host(dy))
    for got, want in [(y, ref_y), (dx, ref_dx), (f.weight.grad, dW), (f.bias.grad, db)]:
        np.testing.assert_allclose(_host(got), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("which", ["siamese", "chain"])
def test_matches_a_torch_module_called_twice(be, rng, which):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    dtype, tol = wide(be)
    n_in = 2 if which == "siamese" else 1
    model, _ = (_siamese if which == "siamese" else _chain)(dtype)
    out = 3 if which == "siamese" else 4

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("0", torch.nn.Linear(4, out, dtype=torch.float64))

        def forward(self, *xs):
            f = getattr(self, "0")
            return torch.tanh(f(xs[0])) + f(xs[1]) if n_in == 2 else f(torch.tanh(f(xs[0])))

    theirs = Twice()
    assert model.load_state_dict(theirs.state_dict()) == ([], [])
    hosts = [rng.standard_normal((5, 4)) for _ in range(n_in)]
    dy = rng.standard_normal((5, out))
    ts = [torch.tensor(h, requires_grad=True) for h in hosts]
    ty = theirs(*ts)
    ty.backward(torch.from_numpy(dy))

    xs = [be.asarray(h, dtype=dtype) for h in hosts]
    y = model.forward(xs if n_in == 2 else xs[0])
    dxs = model.backward(be.asarray(dy, dtype=dtype))
    dxs = dxs if n_in == 2 else [dxs]
    np.testing.assert_allclose(_host(y), ty.detach().numpy(), rtol=tol, atol=tol)
    for d, t in zip(dxs, ts, strict=True):
        np.testing.assert_allclose(_host(d), t.grad.numpy(), rtol=tol, atol=tol)
    grads = dict(model.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(_host(grads[name].grad), p.grad.numpy(), rtol=tol, atol=tol)

    back = Twice()  # and ours into a fresh torch module
    back.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                          for k, v in model.state_dict().items()})
    np.testing.assert_allclose(back(*[torch.from_numpy(h) for h in hosts]).detach().numpy(),
                               ty.detach().numpy(), rtol=tol, atol=tol)


# -- structure, training, checkpoints ---------------------------------------------------
def test_shared_weight_is_listed_once(be):
    model, f = _siamese()
    assert [p for p in model.parameters()] == [f.weight, f.bias]
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    assert len(model.children()) == 3  # f, Tanh, Add: f once
    nodes = model.get_config()["nodes"]  # a, f, tanh, b, f_2, add
    assert nodes[1]["name"] == "f" and "layer" in nodes[1]
    assert nodes[4] == {"name": "f_2", "inputs": [3], "same_layer_as": 1}


def test_summary_counts_a_shared_layer_once(be):
    model, _ = _siamese()
    text = model.summary(print_fn=None)
    assert "\nTotal params: 15\nTrainable params: 15\n" in text  # 4 * 3 + 3, not twice that
    row = next(line for line in text.splitlines() if line.startswith("f_2:"))
    assert "shares f's layer" in row and row.rstrip().endswith(" 0")


def test_sgd_step_moves_both_uses_by_the_summed_gradient(be, rng):
    dtype, tol = wide(be)
    model, f = _chain(dtype)
    f1, f2 = xn.Linear(4, 4, dtype=dtype), xn.Linear(4, 4, dtype=dtype)
    for g in (f1, f2):
        g.load_state_dict(f.state_dict())
    x = xn.Input(shape=(4,))
    twin = xn.Graph(inputs=x, outputs=f2(xn.Tanh()(f1(x))))
    xb, target = _inputs(be, rng, dtype, (6, 4), (6, 4))
    loss = xn.QuadraticCost()
    for m in (model, twin):
        loss.forward(m.forward(xb), target)
        m.backward(loss.backward())
    before = _host(f.weight.value)
    xn.SGD(model, lr=0.5).step()
    want = before - 0.5 * (_host(f1.weight.grad) + _host(f2.weight.grad))
    np.testing.assert_allclose(_host(f.weight.value), want, rtol=tol, atol=tol)


@pytest.mark.fit_level
def test_fit_trains_the_shared_weight(be, rng):
    model, f = _chain()
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = np.tanh(x[:, ::-1]).astype(np.float32)
    first = xn.fit(model, x, y, loss=xn.QuadraticCost(), optimizer=xn.SGD(model, lr=0.3),
                   epochs=4, batch_size=8, progress=False, metrics=())["loss"]
    assert first[-1] < first[0]
    # both uses read the one trained weight: the model is f(tanh(f(x))) with it
    ref, _, _ = _chain_ref(_host(f.weight.value), _host(f.bias.value), x, np.zeros((16, 4)))
    np.testing.assert_allclose(_host(model(be.asarray(x))), ref, rtol=1e-4, atol=1e-5)


def test_save_and_load_keep_the_sharing(be, rng, tmp_path):
    model, f = _siamese()
    opt = xn.SGD(model, lr=0.1, momentum=0.9)
    xs = _inputs(be, rng, "float32", (4, 4), (4, 4))
    model.backward(model.forward(xs))
    opt.step()
    xn.save(tmp_path / "m.xpnet", model, optimizer=opt)
    ck = xn.checkpoint.load_checkpoint(tmp_path / "m.xpnet", backend=be)
    again = ck.model
    assert list(again.state_dict()) == ["0.weight", "0.bias"]
    assert len(ck.optimizer.params) == 2
    np.testing.assert_allclose(_host(again(xs)), _host(model(xs)), rtol=1e-6, atol=1e-6)
    assert again.get_config() == model.get_config()
    # one Parameter behind both uses: new values reach both, gradients of both add up
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    again.load_state_dict({"0.weight": W, "0.bias": b})
    dy = rng.standard_normal((4, 3))
    y = again.forward(xs)
    again.backward(be.asarray(dy, dtype="float32"))
    ref_y, (dW, db), _ = _siamese_ref(W, b, *map(_host, xs), dy)
    weight, bias = again.parameters()
    for got, want in [(y, ref_y), (weight.grad, dW), (bias.grad, db)]:
        np.testing.assert_allclose(_host(got), want, rtol=1e-4, atol=1e-5)


def test_moving_converting_zeroing_and_resetting_reach_every_use(be, rng):
    model, f = _chain()
    x = rng.standard_normal((3, 4))
    dy = rng.standard_normal((3, 4))

    def agrees(on, dtype, tol):
        model.zero_grad()
        assert f.weight.grad is None and f.bias.grad is None
        y = model.forward(on.asarray(x, dtype=dtype))
        model.backward(on.asarray(dy, dtype=dtype))
        assert_on(on, f.weight.grad, dtype)
        ref_y, (dW, _), _ = _chain_ref(_host(f.weight.value), _host(f.bias.value), x, dy)
        np.testing.assert_allclose(_host(y), ref_y, rtol=tol, atol=tol)
        np.testing.assert_allclose(_host(f.weight.grad), dW, rtol=tol, atol=tol)

    agrees(be, "float32", 1e-4)
    before = _host(f.weight.value)
    f.reset()  # new weights, for both uses
    assert not np.allclose(_host(f.weight.value), before)
    agrees(be, "float32", 1e-4)
    if be.supports("float64"):
        model.astype("float64")
        assert f.dtype == "float64"
        agrees(be, "float64", 1e-9)
    on_numpy = xn.use("numpy")
    with be:
        model.to(on_numpy)
        agrees(on_numpy, model.parameters()[0].value.dtype.name, 1e-4)


# -- layers with sub-layers, nested graphs, state and randomness ------------------------
def test_sequential_used_twice(be, rng):
    s = xn.Sequential(xn.Linear(3, 3), xn.Tanh(), xn.Linear(3, 3))
    x = xn.Input(shape=(3,))
    model = xn.Graph(inputs=x, outputs=s(s(x)))
    assert len(model.parameters()) == 4
    xb = _inputs(be, rng, "float32", (4, 3))[0]
    check_layer(model, xb)
    twin_s = copy.deepcopy(s)  # separate layers holding copies of the weights
    t = xn.Input(shape=(3,))
    twin = xn.Graph(inputs=t, outputs=twin_s(s(t)))
    dy = be.asarray(rng.standard_normal((4, 3)), dtype="float32")
    model.forward(xb)
    model.backward(dy)
    shared = [_host(p.grad) for p in model.parameters()]
    model.zero_grad()
    twin.forward(xb)
    twin.backward(dy)
    for g, p, q in zip(shared, s.parameters(), twin_s.parameters(), strict=True):
        np.testing.assert_allclose(g, _host(p.grad) + _host(q.grad), rtol=1e-4, atol=1e-5)


def test_nested_graph_with_sharing_used_twice(tmp_path):
    with xn.use("numpy"):
        inner, f = _chain("float64")
        a, b = xn.Input(shape=(4,)), xn.Input(shape=(4,))
        model = xn.Graph(inputs=[a, b], outputs=xn.Concat(axis=1)(inner(a), inner(b)))
        assert model.parameters() == [f.weight, f.bias]
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((3, 4)) for _ in range(2)]
        assert xn.gradcheck(model, xs)
        dy = rng.standard_normal((3, 8))
        model.forward(xs)
        model.backward(dy)
        W, bias = f.weight.value, f.bias.value
        refs = [_chain_ref(W, bias, x, d) for x, d in zip(xs, (dy[:, :4], dy[:, 4:]),
                                                          strict=True)]
        np.testing.assert_allclose(f.weight.grad, refs[0][1][0] + refs[1][1][0], rtol=1e-9)
        xn.save(tmp_path / "n.xpnet", model)
        again = xn.load(tmp_path / "n.xpnet")
        assert len(again.parameters()) == 2
        np.testing.assert_allclose(again(xs), model(xs), rtol=1e-12)


def test_shared_dropout_draws_a_mask_per_use(be, rng):
    """Each use draws its own mask (as calling one torch.nn.Dropout twice); backward
    multiplies each share of dy by its own mask; inference is the identity."""
    d = xn.Dropout(0.5)
    x = xn.Input(shape=(32,))
    model = xn.Graph(inputs=x, outputs=xn.Concat(axis=1)(d(x), d(x)))
    ones = be.asarray(np.ones((4, 32)), dtype="float32")
    y = _host(model.forward(ones))
    m1, m2 = y[:, :32], y[:, 32:]  # the masks, scaled by 1 / (1 - p)
    assert set(np.unique(y)) <= {0.0, 2.0} and not np.array_equal(m1, m2)
    dy = rng.standard_normal((4, 64)).astype(np.float32)  # the device's float32 values
    dx = model.backward(be.asarray(dy, dtype="float32"))
    np.testing.assert_allclose(_host(dx), dy[:, :32] * m1 + dy[:, 32:] * m2, rtol=1e-6)
    np.testing.assert_array_equal(_host(model(ones)), np.ones((4, 64)))


def test_shared_batchnorm_uses_each_batch_and_updates_statistics_per_use(be, rng):
    """In training each use normalises its own batch; the running statistics move once per
    use, in topological order (as calling one torch.nn.BatchNorm1d twice)."""
    bn = xn.BatchNorm1D(3, momentum=0.1)
    a, b = xn.Input(shape=(3,)), xn.Input(shape=(3,))
    model = xn.Graph(inputs=[a, b], outputs=xn.Concat(axis=1)(bn(a), bn(b)))
    ha, hb = rng.standard_normal((6, 3)) * 2 + 1, rng.standard_normal((6, 3)) - 3
    xs = [be.asarray(h, dtype="float32") for h in (ha, hb)]
    y = _host(model.forward(xs))
    for got, h in ((y[:, :3], ha), (y[:, 3:], hb)):
        np.testing.assert_allclose(got, (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5),
                                   rtol=1e-4, atol=1e-4)
    mean, var = np.zeros(3), np.ones(3)
    for h in (ha, hb):
        mean = 0.9 * mean + 0.1 * h.mean(0)
        var = 0.9 * var + 0.1 * h.var(0, ddof=1)
    np.testing.assert_allclose(_host(bn.running_mean.value), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_host(bn.running_var.value), var, rtol=1e-5, atol=1e-6)
    check_layer(model, [x[:3, ...] for x in xs])


# -- what is refused ---------------------------------------------------------------------
def test_a_layer_shared_inside_another_child_is_refused():
    with xn.use("numpy"):
        f = xn.Linear(2, 2)
        x = xn.Input(shape=(2,))
        h = xn.Sequential(f, xn.Tanh())(x)
        with pytest.raises(ValueError, match=r"'1.weight' is the same object as '0.0.weight'"):
            xn.Graph(inputs=x, outputs=f(h))


class _Hidden(xn.Layer):
    """Holds its sub-layer where a call copy cannot reach it (a dict's values view)."""

    def __init__(self):
        super().__init__()
        self.box = {"inner": xn.Linear(2, 2)}.values()

    def children(self):
        return list(self.box)

    def forward(self, x, *, train=True):
        return next(iter(self.box)).forward(x, train=train)


def test_a_layer_whose_sub_layers_cannot_be_copied_is_refused_when_shared():
    with xn.use("numpy"):
        x = xn.Input(shape=(2,))
        hidden = _Hidden()
        xn.Graph(inputs=x, outputs=hidden(x))  # once is fine
        with pytest.raises(TypeError, match=r"_Hidden\(\): cannot run at another graph node"):
            xn.Graph(inputs=x, outputs=hidden(hidden(x)))


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(("change", "error"), [  # nodes: a, f, tanh, b, f_2, add
    ({"same_layer_as": 5}, r"nodes\[4\] same_layer_as is 5, expected the index of an "
                           r"earlier node with a 'layer' \(0 to 3\)"),
    ({"same_layer_as": 3}, r"nodes\[4\] same_layer_as is 3, expected"),     # an input
    ({"same_layer_as": "1"}, r"nodes\[4\] same_layer_as is '1'"),
    ({"layer": {"type": "Tanh", "config": {}}}, r"nodes\[4\] is .* expected an object "
                                                r"with one of 'layer', 'input_shape'"),
])
def test_checkpoint_checks_same_layer_as(tmp_path, change, error):
    with xn.use("numpy"):
        model, _ = _siamese()
        xn.save(tmp_path / "m.xpnet", model)
    arrays = _arrays(tmp_path / "m.xpnet")
    meta = json.loads(arrays["__meta__"].tobytes())
    spec = meta["model"]["config"]["nodes"][4]
    assert "same_layer_as" in spec
    spec.update(change)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(tmp_path / "bad.xpnet", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(xn.CheckpointError, match=error):
        xn.load(tmp_path / "bad.xpnet")
