"""Mixed precision: fit(..., precision="bf16-mixed" | "fp16-mixed") and MixedPrecision.

Every backend case runs what applies to it: the mixed fits where its library has the
dtype (torch, JAX: both; NumPy, CuPy: float16), the clear error where it has not
(array-api-strict: neither; NumPy: bfloat16). That table is LOW_PRECISION below: one
test asserts it on every case, and the others consult it, so a backend that loses a
dtype fails instead of skipping.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from helpers import blobs

import xpnet as xn
from xpnet.layers.base import Layer
from xpnet.train.precision import MixedPrecision, resolve

DTYPES = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}

#: The low-precision dtypes each backend offers for mixed precision
#: (``Adapter.low_precision_dtype``): torch and JAX both; NumPy and CuPy float16 only
#: (NumPy's bfloat16 would be ml_dtypes', which NumPy's array API namespace refuses);
#: array-api-strict neither (the array API standard defines neither).
LOW_PRECISION = {
    "numpy": {"float16"},
    "array_api_strict": set(),
    "torch": {"bfloat16", "float16"},
    "jax": {"bfloat16", "float16"},
    "cupy": {"float16"},
}


def _host(a):
    """A host copy (``to_numpy`` of a torch CPU tensor shares its memory)."""
    return np.array(xn.to_numpy(a), copy=True)


def _low_or_skip(be, precision: str):
    """``be``'s low-precision dtype for ``precision``; a skip where LOW_PRECISION says the
    library has none (test_low_precision_support_matrix holds the library to that), an
    error where the table says it has one."""
    name = DTYPES[precision]
    if name not in LOW_PRECISION[be.name]:
        pytest.skip(f"{precision} on {be.name}: the library has no {name} (LOW_PRECISION)")
    return be.adapter.low_precision_dtype(be.xp, name)


def _blobs(n=128):
    """Three Gaussian blobs in 8-D (offset from 0, so BatchNorm's statistics matter)."""
    return blobs(n, width=8, scale=3.0, offset=1.5, spread=0.5)


def _model():
    """BatchNorm in the fits; LayerNorm and GELU where gradients are compared."""
    return xn.Sequential(xn.Linear(8, 16), xn.ReLU(), xn.BatchNorm1D(16), xn.Linear(16, 3))


def _ln_model():
    return xn.Sequential(xn.Linear(8, 16), xn.GELU(), xn.LayerNorm(16), xn.Linear(16, 3))


_float32_runs: dict = {}


def _fit(be, precision, x, y):
    """A short seeded fit of the small model; the float32 one is run once per case."""
    key = (be.name, be.device_name, precision)
    if precision == "32" and key in _float32_runs:
        return _float32_runs[key]
    xn.seed(0)
    model = _model()
    opt = xn.Adam(model, lr=1e-2)
    # fp16: a scale 2**16 overflows in the first steps, which are then skipped; 2**8
    # lets both runs take the same steps
    prec = MixedPrecision(precision, init_scale=2.0**8) if precision != "32" else "32"
    h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=3,
               batch_size=32, progress=False, seed=0, precision=prec)
    if precision == "32":
        _float32_runs[key] = (model, opt, h)
    return model, opt, h


# -- which backend offers which dtype ------------------------------------------------------
def test_low_precision_support_matrix(be):
    """bfloat16 and float16 are each offered exactly where LOW_PRECISION says: a floating
    16-bit dtype of the library where it lists the dtype, a TypeError naming the dtype
    where it does not."""
    for name in ("bfloat16", "float16"):
        if name in LOW_PRECISION[be.name]:
            low = be.adapter.low_precision_dtype(be.xp, name)
            assert be.xp.isdtype(low, "real floating"), name
            assert be.xp.finfo(low).bits == 16, name
        else:
            with pytest.raises(TypeError, match=f"{be.name}.*{name}"):
                be.adapter.low_precision_dtype(be.xp, name)


# -- the precision argument ------------------------------------------------------------
def test_precision_names():
    assert resolve("32") is None and resolve(32) is None and resolve("32-true") is None
    assert resolve("bf16-mixed").dtype_name == "bfloat16"
    for name in ("fp16-mixed", "16-mixed", 16):
        mixed = resolve(name)
        assert mixed.dtype_name == "float16" and mixed.scaling
    assert not resolve("bf16-mixed").scaling
    mine = MixedPrecision("fp16-mixed", growth_interval=7)
    assert resolve(mine) is mine
    for bad in ("bf16", "fp8-mixed", "64", 8, True, None):
        with pytest.raises(ValueError, match="precision must be one of"):
            resolve(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        MixedPrecision("32")
    with pytest.raises(ValueError, match="growth_factor"):
        MixedPrecision("fp16-mixed", growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        MixedPrecision("fp16-mixed", backoff_factor=1.5)
    with pytest.raises(TypeError, match="growth_interval"):
        MixedPrecision("fp16-mixed", growth_interval=2.5)


def test_fit_rejects_a_bad_precision_before_training():
    x, y = _blobs(32)
    with xn.use("numpy"):
        model = _model()
        before = model.state_dict()
        with pytest.raises(ValueError, match="precision must be one of"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
                   progress=False, precision="half")
        with pytest.raises(TypeError, match="numpy: no bfloat16"):  # with compile=True too
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
                   progress=False, precision="bf16-mixed", compile=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_unsupported_dtype_is_a_clear_error(be, precision):
    """Where the library has no such dtype, fit says which and changes nothing; where it
    has one, the adapter returns a floating dtype of the library."""
    name = DTYPES[precision]
    if name in LOW_PRECISION[be.name]:
        low = be.adapter.low_precision_dtype(be.xp, name)
        assert be.xp.isdtype(low, "real floating")
        assert be.xp.finfo(low).bits == 16
        return
    with pytest.raises(TypeError) as raised:
        be.adapter.low_precision_dtype(be.xp, name)
    message = str(raised.value)
    assert be.name in message and name in message
    if be.name == "array_api_strict":
        assert "standard defines neither" in message
    if be.name == "numpy":  # bfloat16 only from ml_dtypes, which NumPy's namespace refuses
        assert name == "bfloat16"
        try:
            import ml_dtypes
        except ImportError:
            assert "ml_dtypes is not installed" in message
        else:
            with pytest.raises(TypeError):
                be.xp.isdtype(np.dtype(ml_dtypes.bfloat16), "real floating")
            assert "does not accept ml_dtypes.bfloat16" in message
    x, y = _blobs(32)
    model = _model()
    before = model.state_dict()
    with pytest.raises(TypeError, match=f"precision='{precision}'.*{name}"):
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
               progress=False, precision=precision)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# -- mixed fits --------------------------------------------------------------------------
@pytest.mark.fit_level
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_mixed_fit_keeps_float32_masters_and_follows_the_float32_run(be, precision, tmp_path):
    _low_or_skip(be, precision)
    if be.name == "jax" and precision == "fp16-mixed":
        pytest.skip("jax: the fp16 fit is the bf16 one plus loss scaling, which "
                    "test_loss_scaling_skips_non_finite_steps_and_grows runs on jax; each "
                    "new op compiles there (~0.2 s), so the fit runs in bf16 only")
    x, y = _blobs()
    model, opt, h = _fit(be, precision, x, y)
    ref_model, _, ref = _fit(be, "32", x, y)
    for name, p in model.named_state():
        assert p.value.dtype == be.xp.float32, name  # masters, and running statistics
        assert p.grad is None or p.grad.dtype == be.xp.float32, name
    for slot in opt.state.values():
        assert all(a is None or a.dtype == be.xp.float32 for a in slot)
    assert h["loss"][-1] < h["loss"][0] / 2  # it trains
    # bfloat16 keeps 8 bits of mantissa: the mixed run tracks the float32 one loosely
    for mixed_loss, loss32 in zip(h["loss"], ref["loss"]):
        assert mixed_loss == pytest.approx(loss32, rel=0.1, abs=0.02)
    assert h["accuracy"][-1] == pytest.approx(ref["accuracy"][-1], abs=0.05)
    assert ref_model is not model
    # the trained model is an ordinary float32 one: its checkpoint round-trips
    xn.save(tmp_path / "m.xpnet", model, optimizer=opt)
    back = xn.load(tmp_path / "m.xpnet", backend=be)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == np.float32, name
        np.testing.assert_array_equal(a, b)


def test_token_ids_stay_integers(be):
    """An Embedding's integer ids are not cast; its table's gradient is float32."""
    precision = "fp16-mixed" if be.name in ("numpy", "cupy") else "bf16-mixed"
    _low_or_skip(be, precision)
    rng = np.random.default_rng(0)
    ids = be.asarray(rng.integers(0, 12, size=(32, 2)))
    y = be.asarray(rng.integers(0, 3, size=32))
    # (32, 2, 4) -> (32, 8): the shapes of _model's, whose compiled ops JAX then reuses
    model = xn.Sequential(xn.Embedding(12, 4), xn.Flatten(), xn.Linear(8, 16), xn.ReLU(),
                          xn.Linear(16, 3))
    before = _host(model[0].weight.value)
    opt = xn.SGD(model, lr=0.5)
    mixed = MixedPrecision(precision)
    opt.zero_grad()
    pred, cost = mixed.forward_backward(model, xn.SoftmaxCrossEntropy(), ids, y)
    assert pred.dtype == be.xp.float32 and model[0].weight.grad.dtype == be.xp.float32
    mixed.step(opt)
    after = _host(model[0].weight.value)
    used = np.unique(xn.to_numpy(ids))
    assert not np.array_equal(after[used], before[used])
    unused = np.setdiff1d(np.arange(12), used)
    np.testing.assert_array_equal(after[unused], before[unused])


# -- the norm layers under low precision ---------------------------------------------------
@pytest.mark.parametrize("kind", ["BatchNorm1D", "LayerNorm"])
def test_norm_statistics_in_float32(be, kind, rng):
    """A float16/bfloat16 input: the output is what float32 arithmetic on the same
    (upcast) input and parameters gives, rounded once; gradients likewise; running
    statistics stay float32 and move as float32 arithmetic moves them."""
    offered = [name for name in ("bfloat16", "float16") if name in LOW_PRECISION[be.name]]
    if not offered:
        pytest.skip(f"{be.name} has no low-precision dtype (LOW_PRECISION)")
    low = be.adapter.low_precision_dtype(be.xp, offered[-1])  # float16 where there is one
    xp = be.xp
    layer = getattr(xn, kind)(16)
    layer.weight.value = be.asarray(rng.uniform(0.5, 1.5, 16), dtype="float32")
    layer.bias.value = be.asarray(rng.uniform(-1, 1, 16), dtype="float32")
    ref = copy.deepcopy(layer)
    for p in layer.parameters():  # what MixedPrecision binds
        p.value = xp.astype(p.value, low)
    for p in ref.parameters():   # the same values, in float32
        p.value = xp.astype(xp.astype(p.value, low), xp.float32)
    # a large mean and a small spread: in 16-bit arithmetic the variance would be lost
    x = xp.astype(be.asarray(8.0 + 0.05 * rng.standard_normal((32, 16)), dtype="float32"), low)
    dy = xp.astype(be.asarray(rng.standard_normal((32, 16)), dtype="float32"), low)
    y = layer.forward(x, train=True)
    y_ref = ref.forward(xp.astype(x, xp.float32), train=True)
    assert y.dtype == low
    tol = dict(rtol=2e-2, atol=2e-2)  # one rounding to 16 bits of values of size ~2
    np.testing.assert_allclose(xn.to_numpy(xp.astype(y, xp.float32)), xn.to_numpy(y_ref), **tol)
    assert float(xn.to_numpy(xp.std(xp.astype(y, xp.float32)))) > 0.5  # not collapsed
    dx = layer.backward(dy)
    dx_ref = ref.backward(xp.astype(dy, xp.float32))
    assert dx.dtype == low
    np.testing.assert_allclose(xn.to_numpy(xp.astype(dx, xp.float32)), xn.to_numpy(dx_ref),
                               rtol=5e-2, atol=5e-2)
    for p, q in zip(layer.parameters(), ref.parameters()):
        assert p.grad.dtype == low, p.name
        np.testing.assert_allclose(xn.to_numpy(xp.astype(p.grad, xp.float32)),
                                   xn.to_numpy(q.grad), **tol)
    for name, p in layer.named_state():
        if not p.trainable:
            assert p.value.dtype == xp.float32, name
            np.testing.assert_allclose(xn.to_numpy(p.value), xn.to_numpy(dict(
                ref.named_state())[name].value), rtol=1e-5, atol=1e-6)


# -- dynamic loss scaling ---------------------------------------------------------------------
class _Poison(Layer):
    """Identity forward; backward multiplies ``dy`` by inf on the calls ``pattern`` marks
    (a stand-in for a float16 overflow)."""

    def __init__(self, pattern):
        super().__init__()
        self.pattern = list(pattern)
        self.calls = 0

    def forward(self, x, *, train=True):
        return x

    def backward(self, dy):
        bad = self.pattern[self.calls]
        self.calls += 1
        return dy * math.inf if bad else dy


def _gradscaler_rule(pattern, scale, interval, growth=2.0, backoff=0.5):
    """The scales torch.amp.GradScaler's update gives after each step, by its rule."""
    out, tracker = [], 0
    for bad in pattern:
        if bad:
            scale, tracker = scale * backoff, 0
        else:
            tracker += 1
            if tracker == interval:
                scale, tracker = scale * growth, 0
        out.append(scale)
    return out


def _torch_gradscaler_scales(pattern, scale, interval):
    """The scales torch.amp.GradScaler itself reports on the same inf/finite pattern."""
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(8, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=interval)
    out = []
    for bad in pattern:
        opt.zero_grad()
        scaler.scale(lin(torch.ones(2, 8)).sum()).backward()
        if bad:
            lin.weight.grad[0, 0] = math.inf
        scaler.step(opt)
        scaler.update()
        out.append(scaler.get_scale())
    return out


PATTERN = [True, False, False, False, True, False, False, False, False, False, True, False]


def test_gradscaler_rule_is_torchs():
    """The reference rule the next test uses is torch's own, step for step."""
    assert _torch_gradscaler_scales(PATTERN, 2.0**10, 3) == _gradscaler_rule(
        PATTERN, 2.0**10, 3)


def test_loss_scaling_skips_non_finite_steps_and_grows(be, rng):
    _low_or_skip(be, "fp16-mixed")
    xp = be.xp
    x = be.asarray(rng.standard_normal((32, 8)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, 32))

    def run(pattern):
        xn.seed(0)
        model = xn.Sequential(xn.Linear(8, 3), _Poison(pattern))
        opt = xn.SGD(model, lr=0.1, momentum=0.9)
        mixed = MixedPrecision("fp16-mixed", init_scale=2.0**10, growth_interval=3)
        loss = xn.SoftmaxCrossEntropy()
        trace = []
        for _ in pattern:
            before = [_host(p.value) for p in model.parameters()]
            slots = [None if a is None else _host(a) for a in opt.state["momentum"]]
            opt.zero_grad()
            mixed.forward_backward(model, loss, x, y)
            mixed.step(opt)
            trace.append((before, slots, [_host(p.value) for p in model.parameters()],
                          [_host(a) for a in opt.state["momentum"]],
                          float(xn.to_numpy(mixed.scale)), bool(xn.to_numpy(mixed.finite))))
        return model, trace

    model, trace = run(PATTERN)
    scales = [t[4] for t in trace]
    assert scales == _gradscaler_rule(PATTERN, 2.0**10, 3)
    assert scales[0] == 2.0**9 and scales[3] == 2.0**10  # halved, then grown after 3
    for bad, (before, slots, after, slots_after, _, finite) in zip(PATTERN, trace):
        assert finite is not bad
        for b, a in zip(before, after):
            if bad:  # skipped: the parameters and the momentum exactly as they were
                np.testing.assert_array_equal(a, b)
            else:
                assert np.all(np.isfinite(a)) and not np.array_equal(a, b)
        for s, sa in zip(slots, slots_after):
            if bad:  # a slot still empty before becomes zeros: an empty one, to SGD
                np.testing.assert_array_equal(sa, np.zeros_like(sa) if s is None else s)
    assert all(p.value.dtype == xp.float32 for p in model.parameters())
    # the good steps alone, in the same order, give the same model
    clean, _ = run([False] * PATTERN.count(False))
    for p, q in zip(model.parameters(), clean.parameters()):
        np.testing.assert_allclose(xn.to_numpy(p.value), xn.to_numpy(q.value), rtol=1e-5,
                                   atol=1e-6)


def test_unscaled_gradients_are_the_float32_ones(be, rng):
    """After forward_backward the gradients are float32, unscaled, and close to the
    float32 gradients; they add to gradients already there, as backward does."""
    low = _low_or_skip(be, "fp16-mixed")
    xp = be.xp
    x = be.asarray(rng.standard_normal((32, 8)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, 32))
    model = _ln_model()
    ref = copy.deepcopy(model)
    loss = xn.SoftmaxCrossEntropy()
    mixed = MixedPrecision("fp16-mixed", init_scale=2.0**12)
    pred, cost = mixed.forward_backward(model, loss, x, y)
    assert pred.dtype == xp.float32 and cost.dtype == xp.float32
    loss.forward(ref.forward(x, train=True), y)
    ref.backward_params(loss.backward())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.value.dtype == xp.float32 and p.grad.dtype == xp.float32, name
        g, g32 = xn.to_numpy(p.grad), xn.to_numpy(q.grad)
        assert np.linalg.norm(g - g32) <= 0.03 * np.linalg.norm(g32) + 1e-4, name
    first = [_host(p.grad) for p in model.parameters()]
    mixed.forward_backward(model, loss, x, y)
    for p, g in zip(model.parameters(), first):
        np.testing.assert_allclose(xn.to_numpy(p.grad), 2 * g, rtol=1e-5, atol=1e-7)
    assert low != xp.float32


# -- no host read ----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_a_mixed_step_reads_nothing_on_the_host(precision):
    """On torch's meta device (shapes, no values) any host read raises: a whole step,
    scaling and skipping included, runs there and leaves float32 meta parameters."""
    pytest.importorskip("torch")
    meta = xn.backend.make("torch", "meta")
    with xn.use("numpy"):
        model = _model()
    model.to(meta)
    x = meta.asarray(np.zeros((16, 8)), dtype="float32")
    y = meta.asarray(np.zeros(16, dtype=np.int64))
    opt = xn.Adam(model, lr=1e-3)
    mixed = MixedPrecision(precision)
    for _ in range(2):
        opt.zero_grad()
        pred, cost = mixed.forward_backward(model, xn.SoftmaxCrossEntropy(), x, y)
        mixed.step(opt)
    assert xn.backend.backend_of(cost) == meta and pred.shape == (16, 3)
    for name, p in model.named_state():
        assert xn.backend.backend_of(p.value) == meta and p.value.dtype == meta.xp.float32, name
    if mixed.scaling:
        assert xn.backend.backend_of(mixed.scale) == meta
        assert xn.backend.backend_of(mixed.finite) == meta


def test_mixed_precision_example(capsys):
    """examples/mixed_precision.py prints one row per precision, float32 first, and the
    fp16 run's accuracy lands near float32's."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (digits)")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "mixed_precision.py"
    spec = importlib.util.spec_from_file_location("mixed_precision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--backend", "numpy", "--precisions", "fp16-mixed", "--tasks",
                        "digits", "--digits-epochs", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("digits")]
    assert [r[1] for r in rows] == ["32", "fp16-mixed"]
    acc32, acc16 = float(rows[0][2]), float(rows[1][2])
    assert acc32 > 0.8 and abs(acc16 - acc32) < 0.05
    assert float(rows[1][3]) == pytest.approx(100 * (acc16 - acc32), abs=0.01)


def test_fp16_overflow_is_skipped_before_clipping_by_value(be, rng):
    """clip_grad_value turned an inf gradient into a finite one before the finite check,
    so the overflowing steps were applied and the scale never backed off. The check now
    comes first (LossScale runs before the clipping transforms): with clipping the
    scales follow GradScaler's rule and the poisoned steps change nothing."""
    _low_or_skip(be, "fp16-mixed")
    from xpnet.train import Step, TrainStep

    x = be.asarray(rng.standard_normal((16, 8)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, 16))
    xn.seed(0)
    model = xn.Sequential(xn.Linear(8, 3), _Poison(PATTERN))
    opt = xn.SGD(model, lr=0.1, momentum=0.9)
    mixed = MixedPrecision("fp16-mixed", init_scale=2.0**10, growth_interval=3)
    step = TrainStep(Step(model, xn.SoftmaxCrossEntropy(), opt, precision=mixed,
                          clip_grad_value=0.01), compiler=False)
    scales = []
    for bad in PATTERN:
        before = [_host(p.value) for p in model.parameters()]
        step(x, y)
        scales.append(float(xn.to_numpy(mixed.scale)))
        for b, p in zip(before, model.parameters()):
            if bad:
                np.testing.assert_array_equal(_host(p.value), b)
            else:  # clipped to 0.01 per element: a small, finite step
                moved = np.abs(_host(p.value) - b)
                assert np.all(np.isfinite(moved)) and 0 < moved.max() <= 0.1 * 0.01 * 10
    assert scales == _gradscaler_rule(PATTERN, 2.0**10, 3)


def test_fp16_loss_scale_goes_on_across_fits_and_checkpoints(be, tmp_path):
    """The loss scale is saved with the optimizer: a run resumed from a checkpoint (and
    a fit called an epoch at a time) takes the uninterrupted run's steps; it restarted
    from the initial scale (parameters 0.03-0.04 apart)."""
    _low_or_skip(be, "fp16-mixed")
    x, y = _blobs(64)

    def make():
        xn.seed(0)
        model = _ln_model()
        return model, xn.Adam(model, lr=1e-2)

    def fit(model, opt, epochs, initial=0):
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=epochs,
               initial_epoch=initial, batch_size=16, progress=False, seed=0,
               precision=MixedPrecision("fp16-mixed", init_scale=2.0**20, growth_interval=2))

    straight, opt = make()
    fit(straight, opt, 3)
    scale = opt.loss_scale_state()["scale"]
    assert scale != 2.0**20  # it moved (backed off from 2**20, then grew)
    by_epoch, opt = make()
    for epoch in range(3):
        fit(by_epoch, opt, epoch + 1, epoch)
    assert opt.loss_scale_state()["scale"] == scale
    resumed, opt = make()
    fit(resumed, opt, 1)
    xn.save(tmp_path / "c.xpnet", resumed, optimizer=opt)
    ckpt = xn.load_checkpoint(tmp_path / "c.xpnet", backend=be)
    assert ckpt.optimizer.loss_scale == opt.loss_scale_state()
    fit(ckpt.model, ckpt.optimizer, 3, 1)
    for model in (by_epoch, ckpt.model):
        for (name, a), (_, b) in zip(model.named_state(), straight.named_state()):
            np.testing.assert_allclose(_host(a.value), _host(b.value), rtol=1e-6, atol=1e-7,
                                       err_msg=name)


def test_fit_refuses_inputs_beyond_float16_under_fp16(be):
    """Inputs beyond float16's range ended in a NaN error that blamed the learning rate:
    fit now names them before training."""
    _low_or_skip(be, "fp16-mixed")
    x, y = _blobs(32)
    x[3, 2] = 1e6
    model = _model()
    with pytest.raises(ValueError, match=r"float16.*precision='fp16-mixed'"):
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
               progress=False, precision="fp16-mixed")
