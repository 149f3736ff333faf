"""Convolutions with dilation and groups, and global average pooling, on every backend case:
check_layer, torch.nn.functional in float64, NumPy loops, errors, checkpoints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_on
from helpers import assert_grads_equal

import xpnet as xn
from xpnet.backends import ops
from xpnet.backends.standard import StandardOps
from xpnet.layers.base import build_layer
from xpnet.testing import check_layer

# (layer, constructor arguments, input shape): small, as check_layer's finite differences
# take two forward passes per weight and input element; every test uses these shapes, so
# JAX compiles each operation once for all of them
CONVS = [
    ("Conv1D", dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2), (1, 2, 7)),
    ("Conv1D", dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=2,
                    dilation=2, groups=2), (1, 4, 5)),
    ("Conv1D", dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, groups=3),
     (1, 3, 5)),  # depthwise
    ("Conv2D", dict(in_channels=4, out_channels=4, kernel_size=(2, 3), stride=(2, 1),
                    padding=(1, 2), dilation=2, groups=2), (1, 4, 3, 4)),
    ("Conv2D", dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=(1, 2),
                    dilation=(1, 2), groups=2), (1, 2, 4, 4)),  # depthwise, 2 filters each
]
CONV_IDS = [f"{k}-{c['in_channels']}to{c['out_channels']}-" + "-".join(
    f"{a[:3]}{b}" for a, b in c.items() if a not in ("in_channels", "out_channels")
).replace(" ", "") for k, c, _ in CONVS]


def _pairs(value, d):
    return (value,) * d if isinstance(value, int) else tuple(value)


def _loop_conv(x, w, b, stride, padding, dilation, groups):
    """Forward, and the gradients for ``dy``, by loops over positions and groups:
    returns ``(y, grads)`` with ``grads(dy) -> (dx, dW, db)``."""
    d = x.ndim - 2
    stride, padding, dilation = (_pairs(v, d) for v in (stride, padding, dilation))
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    k = w.shape[2:]
    cg, og = w.shape[1], w.shape[0] // groups
    outs = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(d)]

    def window(pos, g):
        return (slice(None), slice(g * cg, (g + 1) * cg)) + tuple(
            slice(p * s, p * s + dl * (kk - 1) + 1, dl)
            for p, s, dl, kk in zip(pos, stride, dilation, k, strict=True))

    y = np.zeros((x.shape[0], w.shape[0], *outs))
    for g, pos in itertools.product(range(groups), itertools.product(*map(range, outs))):
        patch = xp[window(pos, g)]                       # (N, Cg, *k)
        wg = w[g * og:(g + 1) * og]                      # (Og, Cg, *k)
        axes = list(range(1, patch.ndim))
        y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = (
            np.tensordot(patch, wg, axes=(axes, axes)) + b[g * og:(g + 1) * og])

    def grads(dy):
        dxp, dW = np.zeros_like(xp), np.zeros_like(w)
        for g, pos in itertools.product(range(groups), itertools.product(*map(range, outs))):
            dyg = dy[(slice(None), slice(g * og, (g + 1) * og)) + pos]   # (N, Og)
            dW[g * og:(g + 1) * og] += np.tensordot(dyg, xp[window(pos, g)], axes=(0, 0))
            dxp[window(pos, g)] += np.tensordot(dyg, w[g * og:(g + 1) * og], axes=(1, 0))
        inner = (slice(None), slice(None)) + tuple(
            slice(p, n - p) for p, n in zip(padding, xp.shape[2:], strict=True))
        return dxp[inner], dW, dy.sum(axis=(0, *range(2, dy.ndim)))

    return y, grads


@pytest.mark.parametrize("kind, cfg, shape", CONVS, ids=CONV_IDS)
def test_conv_check_layer(be, rng, kind, cfg, shape):
    layer = getattr(xn, kind)(**cfg)
    cin, cout, groups = cfg["in_channels"], cfg["out_channels"], cfg.get("groups", 1)
    assert tuple(layer.weight.value.shape[:2]) == (cout, cin // groups)
    x = be.asarray(rng.standard_normal(shape), dtype="float32")
    check_layer(layer, x)
    assert_on(be, layer(x))


@pytest.mark.parametrize("kind, cfg, shape", CONVS, ids=CONV_IDS)
def test_conv_matches_torch_functional(be, rng, kind, cfg, shape):
    """Output, input gradient, weight and bias gradients against F.conv1d/conv2d."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    wide = be.supports("float64")
    dtype, tol = ("float64", 1e-9) if wide else ("float32", 1e-4)  # float32: no float64 here
    layer = getattr(xn, kind)(**cfg, dtype=dtype)
    layer.bias.value = be.asarray(rng.standard_normal(cfg["out_channels"]), dtype=dtype)
    x_host = rng.standard_normal(shape)
    y = layer.forward(be.asarray(x_host, dtype=dtype))
    dy_host = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(be.asarray(dy_host, dtype=dtype))
    assert_on(be, dx, dtype)

    conv = torch.nn.functional.conv1d if kind == "Conv1D" else torch.nn.functional.conv2d
    xt = torch.tensor(x_host, requires_grad=True)
    wt = torch.tensor(xn.to_numpy(layer.weight.value), dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(xn.to_numpy(layer.bias.value), dtype=torch.float64, requires_grad=True)
    yt = conv(xt, wt, bt, stride=cfg.get("stride", 1), padding=cfg.get("padding", 0),
              dilation=cfg.get("dilation", 1), groups=cfg.get("groups", 1))
    yt.backward(torch.tensor(dy_host))
    for what, ours, theirs in [("output", y, yt), ("input gradient", dx, xt.grad),
                               ("weight gradient", layer.weight.grad, wt.grad),
                               ("bias gradient", layer.bias.grad, bt.grad)]:
        np.testing.assert_allclose(xn.to_numpy(ours), theirs.detach().numpy(), rtol=tol,
                                   atol=tol, err_msg=what)


def test_grouped_dilated_conv_matches_numpy_loops(be, rng):
    _, cfg, shape = CONVS[3]  # Conv2D, groups 2, dilation 2, stride and padding
    layer = xn.Conv2D(**cfg)
    layer.bias.value = be.asarray(rng.standard_normal(cfg["out_channels"]), dtype="float32")
    x_host = rng.standard_normal(shape).astype(np.float32)
    y = layer.forward(be.asarray(x_host))
    dy_host = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    dx = layer.backward(be.asarray(dy_host))
    cfg = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    ref, grads = _loop_conv(x_host.astype(np.float64),
                            xn.to_numpy(layer.weight.value).astype(np.float64),
                            xn.to_numpy(layer.bias.value).astype(np.float64), **cfg)
    dx_ref, dW_ref, db_ref = grads(dy_host.astype(np.float64))
    for what, ours, want in [("output", y, ref), ("input gradient", dx, dx_ref),
                             ("weight gradient", layer.weight.grad, dW_ref),
                             ("bias gradient", layer.bias.grad, db_ref)]:
        np.testing.assert_allclose(xn.to_numpy(ours), want, rtol=1e-4, atol=1e-4,
                                   err_msg=what)


@pytest.mark.parametrize("dims, stride, padding, dilation, groups",
                         [(1, 2, 1, 3, 2), (2, 1, 2, 2, 4), (2, 2, 0, (1, 2), 1)])
def test_torch_ops_match_standard_grouped_dilated(dims, stride, padding, dilation, groups):
    """The torch adapter's aten path against the standard im2col path, same tensors."""
    pytest.importorskip("torch", reason="torch is not installed")
    be = xn.backend.make("torch", "cpu")
    xp, fast, ref = be.xp, ops(be.xp), StandardOps()
    rng = np.random.default_rng(2)
    x = be.asarray(rng.standard_normal((2, 4, *(9,) * dims)), dtype="float64")
    W = be.asarray(rng.standard_normal((8, 4 // groups, *(3,) * dims)), dtype="float64")
    b = be.asarray(rng.standard_normal(8), dtype="float64")
    args = ((stride,) * dims, (padding,) * dims, _pairs(dilation, dims), groups)
    y_fast, ctx_fast = fast.conv_forward(xp, x, W, b, *args)
    y_ref, ctx_ref = ref.conv_forward(xp, x, W, b, *args)
    np.testing.assert_allclose(xn.to_numpy(y_fast), xn.to_numpy(y_ref), rtol=1e-11, atol=1e-11)
    dy = be.asarray(rng.standard_normal(tuple(y_ref.shape)), dtype="float64")
    for need_input in (True, False):
        got = fast.conv_backward(xp, ctx_fast, dy, need_input)
        want = ref.conv_backward(xp, ctx_ref, dy, need_input)
        assert_grads_equal(got, want)


@pytest.mark.parametrize("make, error, message", [
    (lambda: xn.Conv2D(3, 4, 3, groups=2), ValueError,
     "Conv2D: in_channels must be divisible by groups=2, got in_channels=3"),
    (lambda: xn.Conv1D(4, 6, 3, groups=4), ValueError,
     "Conv1D: out_channels must be divisible by groups=4, got out_channels=6"),
    (lambda: xn.Conv1D(4, 4, 3, groups=0), ValueError, "Conv1D: groups must be >= 1, got 0"),
    (lambda: xn.Conv2D(4, 4, 3, groups=2.0), TypeError,
     "Conv2D: groups must be an integer, got 2.0"),
    (lambda: xn.Conv2D(4, 4, 3, dilation=(1, 0)), ValueError,
     "Conv2D: dilation must be >= 1, got 0"),
    (lambda: xn.Conv2D(4, 4, 3, dilation=(2,)), ValueError,
     r"Conv2D: dilation needs 2 value\(s\), got \(2,\)"),
    (lambda: xn.Conv1D(4, 4, 3, dilation=True), TypeError,
     "Conv1D: dilation must be an integer, got True"),
])
def test_invalid_groups_and_dilation(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_dilated_kernel_must_fit(be, rng):
    layer = xn.Conv1D(2, 2, 3, padding=1, dilation=4)  # extent 9 > 5 + 2
    x = be.asarray(rng.standard_normal((1, 2, 5)), dtype="float32")
    with pytest.raises(ValueError, match=r"Conv1D\(.*dilation=4.*\): kernel \(3,\) with "
                       r"dilation \(4,\) \(extent \(9,\)\) is larger than the input's "
                       r"spatial size \(7,\) \(after padding \(1,\)\)"):
        layer.forward(x)
    assert tuple(layer.forward(be.asarray(rng.standard_normal((1, 2, 7)), dtype="float32"))
                 .shape) == (1, 2, 1)


def test_config_and_param_shapes(be):
    layer = xn.Conv2D(6, 4, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1), groups=2,
                      bias=False)
    cfg = layer.get_config()
    assert (cfg["dilation"], cfg["groups"]) == ([2, 1], 2)
    assert xn.Conv2D.param_shapes(cfg) == {"weight": (4, 3, 3, 2)}
    again = build_layer({"type": "Conv2D", "config": cfg})
    assert (again.dilation, again.groups, tuple(again.weight.value.shape)) == (
        (2, 1), 2, (4, 3, 3, 2))
    # a config written before dilation and groups existed
    old = {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 0,
           "bias": True, "init": "pytorch", "dtype": "float32"}
    conv = build_layer({"type": "Conv1D", "config": old})
    assert (conv.dilation, conv.groups) == ((1,), 1)
    assert xn.Conv1D.param_shapes(old) == {"weight": (3, 2, 3), "bias": (3,)}
    with pytest.raises(ValueError, match="Conv1D: in_channels must be divisible by groups=3"):
        xn.Conv1D.param_shapes({**old, "groups": 3})


def _grouped_model():
    return xn.Sequential(xn.Conv2D(4, 4, 2, padding=1, dilation=2, groups=2), xn.ReLU(),
                         xn.Conv2D(4, 8, 3, stride=2, padding=1, groups=4),
                         xn.GlobalAvgPool2D(), xn.Linear(8, 3))


def test_save_load_round_trip(be, rng, tmp_path):
    model = _grouped_model()
    x = be.asarray(rng.standard_normal((1, 4, 4, 4)), dtype="float32")
    xn.save(tmp_path / "m.xpnet", model)
    back = xn.load(tmp_path / "m.xpnet", backend=be.name, device=be.device_name)
    assert [(c.dilation, c.groups) for c in (back[0], back[2])] == [((2, 2), 2), ((1, 1), 4)]
    assert isinstance(back[3], xn.GlobalAvgPool2D)
    np.testing.assert_array_equal(xn.to_numpy(back(x)), xn.to_numpy(model(x)))


def _torch_grouped_model(torch, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 2, padding=1, dilation=2, groups=2), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))


def test_load_state_dict_both_ways_with_torch(be, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    theirs, ours = _torch_grouped_model(torch, 0), _grouped_model()
    x = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    want = theirs(torch.from_numpy(x)).detach().numpy()
    # torch's Flatten takes index 4, so its Linear is "5." where ours is "4."
    sd = {k.replace("5.", "4.", 1): v for k, v in theirs.state_dict().items()}
    assert ours.load_state_dict(sd) == ([], [])
    np.testing.assert_allclose(xn.to_numpy(ours(be.asarray(x))), want, rtol=1e-5, atol=1e-6)

    fresh = _torch_grouped_model(torch, 1)
    assert not np.allclose(fresh(torch.from_numpy(x)).detach().numpy(), want)
    back = {k.replace("4.", "5.", 1): torch.from_numpy(v) for k, v in ours.state_dict().items()}
    result = fresh.load_state_dict(back)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    np.testing.assert_allclose(fresh(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2])
def test_global_avg_pool(be, rng, dims):
    layer = xn.GlobalAvgPool1D() if dims == 1 else xn.GlobalAvgPool2D()
    shape = (2, 3, 4) if dims == 1 else (2, 2, 2, 3)
    x_host = rng.standard_normal(shape)
    x = be.asarray(x_host, dtype="float32")
    check_layer(layer, x)
    y = layer.forward(x)
    assert_on(be, y)
    assert tuple(y.shape) == shape[:2]
    dy_host = rng.standard_normal(shape[:2])
    dx = layer.backward(be.asarray(dy_host, dtype="float32"))
    assert_on(be, dx)
    # reference by loops over every position
    positions = list(itertools.product(*(range(n) for n in shape[2:])))
    y_ref = np.zeros(shape[:2])
    dx_ref = np.zeros(shape)
    for pos in positions:
        y_ref += x_host[(slice(None), slice(None), *pos)]
        dx_ref[(slice(None), slice(None), *pos)] = dy_host / len(positions)
    np.testing.assert_allclose(xn.to_numpy(y), y_ref / len(positions), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.to_numpy(dx), dx_ref, rtol=1e-5, atol=1e-6)


def test_global_avg_pool_checks_its_input(be, rng):
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D\(\): expected input \(N, C, H, W\), "
                       r"got shape \(2, 3, 4\)"):
        xn.GlobalAvgPool2D().forward(be.asarray(rng.standard_normal((2, 3, 4)), dtype="float32"))
    with pytest.raises(TypeError, match=r"GlobalAvgPool1D\(\): expected a real floating input"):
        xn.GlobalAvgPool1D().forward(be.asarray(np.ones((2, 3, 4), dtype=np.int32)))
    with pytest.raises(RuntimeError, match="needs a forward"):
        xn.GlobalAvgPool1D().backward(be.asarray(np.ones((2, 3), np.float32)))
