"""Misuse that used to lose data, hang or give a silently wrong answer: each test names
the item of the hardening issue it covers."""

from __future__ import annotations

import contextvars
import io
import warnings

import numpy as np
import pytest

import xpnet as xn
from xpnet import backend as backend_module


def _blobs(n=60, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = np.eye(classes, 4)[y] * 2 + 0.3 * rng.standard_normal((n, 4))
    return x.astype(np.float32), y.astype(np.int64)


def _mlp(out=3):
    return xn.Sequential(xn.Linear(4, 8), xn.Tanh(), xn.Linear(8, out))


def _fit(model, x, y, **kw):
    opts = dict(loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1), epochs=1,
                batch_size=16, progress=False, seed=0)
    opts.update(kw)
    return xn.fit(model, x, y, **opts)


# -- labels out of range -------------------------------------------------------------------
def test_out_of_range_labels_in_a_list_are_refused():
    x, y = _blobs()
    with xn.use("numpy"):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*0 to 5"):
            _fit(_mlp(), x, [int(v) for v in y[:-1]] + [5])


def test_out_of_range_labels_on_a_device_turn_the_loss_nan(be):
    """On a device the labels cannot be checked without a host read: the loss must turn
    NaN (which fit reports), never train on as all-zero targets."""
    x, y = _blobs()
    y[3] = 7
    model = _mlp()
    on_host = xn.backends.ops(be.xp).on_host  # NumPy: checked at once
    error, pattern = ((ValueError, "labels must lie") if on_host else
                      (FloatingPointError, "loss became nan in epoch 1"))
    with pytest.raises(error, match=pattern):
        _fit(model, x, be.asarray(y))


def test_evaluate_checks_labels_on_the_host(be):
    x, y = _blobs()
    y[0] = 9
    with pytest.raises(ValueError, match=r"evaluate: labels must lie in \[0, 2\]"):
        xn.evaluate(_mlp(), x, y, loss=xn.SoftmaxCrossEntropy())


# -- BatchNorm on one value per channel ----------------------------------------------------
def test_batchnorm_refuses_training_on_one_value_per_channel(be):
    bn = xn.BatchNorm1D(3)
    with pytest.raises(ValueError, match=r"BatchNorm1D.*more than one value per channel.*"
                                         r"\(1, 3\)"):
        bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=True)
    np.testing.assert_array_equal(xn.to_numpy(bn.running_var.value), np.ones(3))
    bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=False)  # inference is fine


# -- hyperparameters -----------------------------------------------------------------------
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


# -- a loss that is not finite -------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fit_stops_at_a_non_finite_loss_and_keeps_the_last_finite_weights():
    x, y = _blobs(64)
    with xn.use("numpy"):
        model = _mlp()
        _fit(model, x, y, epochs=1)
        before = [p.value.copy() for p in model.parameters()]
        bad = x.copy()
        bad[40] = np.inf  # in the third batch of 16: caught there (a report every step)
        with pytest.raises(FloatingPointError, match=r"loss became nan in epoch 2, by step 3"):
            _fit(model, bad, y, epochs=3, initial_epoch=1, shuffle=False)
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.value, b)


# -- inputs of another dtype ---------------------------------------------------------------
def test_integer_and_bool_inputs_are_cast_to_the_model_dtype(be):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(40, 4))
    y = (x[:, 0] > 1).astype(np.int64)
    model = xn.Sequential(xn.Linear(4, 2))
    h = _fit(model, x, y, epochs=2)
    assert np.isfinite(h["loss"]).all()
    assert set(xn.evaluate(model, x.astype(bool), y)) == {"loss", "accuracy"}
    assert xn.predict(model, be.asarray(x)).dtype == be.dtype("float32")


def test_a_layer_given_another_dtype_names_it(be):
    layer = xn.Linear(4, 2)
    with pytest.raises(TypeError, match=r"Linear\(in_features=4.*expected input of dtype "
                                        r"float32 \(the parameters'\), got int64"):
        layer(be.asarray(np.ones((2, 4), dtype=np.int64)))
    bn = xn.BatchNorm1D(4)
    with pytest.raises(TypeError, match=r"BatchNorm1D.*dtype float32.*got int64"):
        bn(be.asarray(np.ones((2, 4), dtype=np.int64)))


def test_batchnorm_names_itself_for_data_from_elsewhere():
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    with xn.use("array_api_strict", device="device1"):
        bn = xn.BatchNorm1D(2)
    with pytest.raises(TypeError, match=r"BatchNorm1D.*input is a numpy array.*parameters are "
                                        r"array_api_strict"):
        bn(np.ones((3, 2), dtype=np.float32))
    with xn.use("array_api_strict", device="device2") as other:
        x = other.asarray(np.ones((3, 2)), dtype="float32")
    with pytest.raises(ValueError, match=r"BatchNorm1D.*on device .*device2.*device1"):
        bn(x)


# -- BinaryCrossEntropy on probabilities ---------------------------------------------------
def test_binary_cross_entropy_from_probabilities(be):
    p_host = np.array([[0.9], [0.2], [0.6], [0.4]])
    t_host = np.array([1.0, 0.0, 0.0, 1.0])
    loss = xn.BinaryCrossEntropy(from_logits=False)
    c = loss.forward(be.asarray(p_host, dtype="float32"), be.asarray(t_host, dtype="float32"))
    want = -np.mean(t_host * np.log(p_host[:, 0]) + (1 - t_host) * np.log(1 - p_host[:, 0]))
    assert float(xn.to_numpy(c)) == pytest.approx(want, rel=1e-5)
    g = xn.to_numpy(loss.backward())[:, 0]
    np.testing.assert_allclose(g, (p_host[:, 0] - t_host) / (p_host[:, 0] * (1 - p_host[:, 0]))
                               / 4, rtol=1e-4)
    acc = xn.metrics.Accuracy()
    acc.prepare(loss, 1)
    hits = acc.correct(be.asarray(p_host, dtype="float32"), be.asarray(t_host.astype(np.int64)))
    assert float(xn.to_numpy(hits)) == 2.0  # 0.9 right, 0.2 right, 0.6 wrong, 0.4 wrong


def test_a_sigmoid_model_with_a_logits_loss_warns_once_and_probabilities_score_right():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    with xn.use("numpy"):
        xn.seed(0)
        model = xn.Sequential(xn.Linear(2, 1), xn.Sigmoid())
        model[0].weight.value = np.array([[20.0, 0.0]], dtype=np.float32)
        model[0].bias.value = np.zeros(1, dtype=np.float32)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy())
            xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy())
        squashed = [w for w in seen if "outputs probabilities" in str(w.message)]
        assert len(squashed) == 1 and "from_logits=False" in str(squashed[0].message)
        right = xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy(from_logits=False))
    assert right["accuracy"] >= 0.99


# -- empty data ----------------------------------------------------------------------------
def test_empty_data_is_refused_with_one_clear_error(be):
    model = _mlp()
    empty_x, empty_y = np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    for call in (lambda: _fit(model, empty_x, empty_y),
                 lambda: xn.evaluate(model, empty_x, empty_y),
                 lambda: xn.predict(model, empty_x)):
        with pytest.raises(ValueError, match=r"no examples \(0 rows\)"):
            call()
    with pytest.raises(ValueError, match="more than one value per channel"):
        xn.BatchNorm1D(4).forward(be.asarray(empty_x), train=True)


# -- mistakes found before the first step --------------------------------------------------
class _CountingLoss(xn.SoftmaxCrossEntropy):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        return super().forward(pred, target)


@pytest.mark.parametrize("kw, error, pattern", [
    (dict(validation_data=(np.zeros((5, 4)),)), ValueError, "expected a pair"),
    (dict(validation_data=(np.zeros((5, 3)), np.zeros(5, dtype=np.int64))), ValueError,
     r"x_val has examples of shape \(3,\), the training data \(4,\)"),
    (dict(validation_data=(np.zeros((5, 4)), np.zeros(4, dtype=np.int64))), ValueError,
     "x has 5 examples but y has 4"),
    (dict(callbacks=[xn.EarlyStopping("val_accuracy")]), KeyError,
     "'val_accuracy' is never logged.*validation_data"),
    (dict(callbacks=[xn.ModelCheckpoint("no/such/folder/m.xpnet", monitor="loss")]),
     FileNotFoundError, "folder 'no/such/folder'"),
])
def test_mistakes_are_reported_before_the_first_step(kw, error, pattern):
    x, y = _blobs()
    loss = _CountingLoss()
    with xn.use("numpy"), pytest.raises(error, match=pattern):
        _fit(_mlp(), x, y, loss=loss, **kw)
    assert loss.calls == 0


# -- multi-input graphs --------------------------------------------------------------------
def _two_inputs():
    a, b = xn.Input(shape=(3,)), xn.Input(shape=(2,))
    joined = xn.Concat()(xn.Tanh()(xn.Linear(3, 4)(a)), b)
    return xn.Graph(inputs=[a, b], outputs=xn.Linear(6, 2)(joined))


def test_multi_input_graphs_take_a_list_everywhere(be):
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))
    y = (xa[:, 0] + xb[:, 1] > 0).astype(np.int64)
    model = _two_inputs()
    h = _fit(model, [xa, xb], y, epochs=2, batch_size=7, validation_data=([xa, xb], y))
    assert len(h["val_accuracy"]) == 2
    scores = xn.predict(model, [xa, xb], batch_size=8)
    direct = model([be.asarray(xa, dtype="float32"), be.asarray(xb, dtype="float32")])
    np.testing.assert_allclose(xn.to_numpy(scores), xn.to_numpy(direct), rtol=1e-5, atol=1e-6)
    assert xn.evaluate(model, (xa, xb), y)["accuracy"] == pytest.approx(
        float(np.mean(xn.to_numpy(scores).argmax(axis=1) == y)))
    assert xn.gradcheck(model, [be.asarray(xa[:3], dtype="float32"),
                                be.asarray(xb[:3], dtype="float32")])
    with pytest.raises(ValueError, match="has 2 inputs; give x as a list of 2 arrays"):
        xn.predict(model, xa)


# -- arguments checked at once -------------------------------------------------------------
@pytest.mark.parametrize("call, error, pattern", [
    (lambda: _fit(_mlp(), *_blobs(), batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda: _fit(_mlp(), *_blobs(), seed=-1), ValueError, "seed must be >= 0"),
    (lambda: _fit(_mlp(), *_blobs(), initial_epoch=-2), ValueError, "initial_epoch must be"),
    (lambda: _fit(_mlp(), *_blobs(), batch_size=2.5), TypeError, "batch_size must be an int"),
    (lambda: xn.Conv1D(1, -1, 2), ValueError, "Conv1D: out_channels must be >= 1, got -1"),
    (lambda: xn.Conv1D(1, 2, 2.5), TypeError, "Conv1D: kernel_size must be an integer"),
    (lambda: xn.use(None), TypeError, "backend name must be a string.*got None"),
    (lambda: xn.Dropout("0.5"), TypeError, "Dropout: p must be a number, got '0.5'"),
    (lambda: xn.Linear(2.5, 3), TypeError, "Linear: in_features must be an integer, got 2.5"),
    (lambda: xn.Linear(2, 3, dtype="int32"), ValueError, "Linear: dtype must be one of"),
    (lambda: xn.BatchNorm1D(True), TypeError, "num_features must be an integer"),
    (lambda: xn.Reshape((2, 0)), ValueError, "Reshape: shape must be >= 1"),
])
def test_bad_arguments_raise_at_once_naming_the_argument(call, error, pattern):
    with xn.use("numpy"), pytest.raises(error, match=pattern):
        call()


# -- the progress display ------------------------------------------------------------------
def test_progress_bar_is_short_and_the_summary_is_a_line_of_its_own(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed (the data extra)")
    from xpnet.train import Progress

    out = io.StringIO()
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(80, 24):
                        type("S", (), {"columns": 0, "lines": 0})())  # a 0x0 pty
    bar = Progress("bar", epochs=2, steps=4, stream=out)
    bar.start(0)
    assert bar.bar.ncols == 80
    bar.step(2, {"loss": 0.123456, "accuracy": 0.5})
    bar.step(2, None)
    logs = {"loss": 0.1, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85,
            "time": 1.0, "samples_per_sec": 1000.0}
    bar.end(0, logs)
    lines = [line for line in out.getvalue().replace("\r", "\n").split("\n") if line.strip()]
    summary = [line for line in lines if line.startswith("epoch 1/2  loss")]
    assert len(summary) == 1 and "val_accuracy 0.8500" in summary[0]
    assert all(len(line) <= 80 for line in lines if line not in summary)
    assert not any(line.strip() == "" for line in out.getvalue().split("\n")[:-1])


# -- found while reviewing the redesign ----------------------------------------------------
def test_with_on_the_current_backend_keeps_the_selection():
    """Only the first `with` on what use() returned ends that use (as with
    torch.set_grad_enabled); `with xn.current():` or `with model.backend:` restore the
    selection they found."""
    before = xn.current()
    try:
        xn.use("numpy")
        xn.use("array_api_strict")
        with xn.current():
            pass
        assert xn.current().name == "array_api_strict"
        model = xn.Linear(2, 2)
        with model.backend:
            pass
        assert xn.current().name == "array_api_strict"
        used = xn.use("array_api_strict", device="device1")
        with used as be:
            with used:  # entered again: nothing more to undo
                pass
            assert xn.current() is be and be == used
        assert xn.current().device_name == "cpu"  # the use() call is undone by its block
    finally:  # this test moves the selection on purpose; the next test must not see it
        xn.use(before.name, device=before.device_name)


def test_loading_a_graph_needs_only_the_backend_asked_for(tmp_path, monkeypatch):
    with xn.use("numpy"):
        inp = xn.Input(shape=(3,))
        model = xn.Graph(inputs=inp, outputs=xn.ReLU()(xn.Linear(3, 2)(inp)))
        xn.save(tmp_path / "g.xpnet", model)
    monkeypatch.setattr(backend_module, "_from_environment", None)
    monkeypatch.setenv("XPNET_BACKEND", "cupy")  # not usable here; must not be touched
    loaded = contextvars.Context().run(xn.load, tmp_path / "g.xpnet", backend="numpy")
    np.testing.assert_array_equal(loaded.parameters()[0].value, model.parameters()[0].value)


def test_a_user_class_cannot_take_over_a_registered_name(tmp_path):
    class ReLU(xn.Layer):  # the same short name as xpnet's
        def forward(self, x, *, train=True):
            return x

    class Doubler(xn.Layer):
        def forward(self, x, *, train=True):
            return 2 * x

    from xpnet.layers import LAYER_TYPES

    assert LAYER_TYPES["ReLU"] is xn.ReLU and "Merge" not in LAYER_TYPES
    with xn.use("numpy"):
        path = tmp_path / "m.xpnet"
        xn.save(path, xn.Sequential(xn.Linear(2, 2), xn.ReLU(), ReLU(), Doubler()))
        loaded = xn.load(path)
    assert [type(layer) for layer in loaded] == [xn.Linear, xn.ReLU, ReLU, Doubler]


def test_host_helpers_accept_what_numpy_accepts():
    np.testing.assert_array_equal(xn.to_numpy(1.5), np.array(1.5))
    np.testing.assert_array_equal(xn.to_numpy([1, 2]), np.array([1, 2]))
    be = backend_module.make("numpy")
    swapped = np.arange(3, dtype=">f4")
    np.testing.assert_array_equal(be.asarray(swapped), swapped)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 0\]"):
        xn.QuadraticCost()(np.zeros((3, 1), dtype=np.float32), np.array([0, 1, 1]))


def test_gradcheck_leaves_a_given_stream_one_pass_on(be):
    stream = xn.RandomStream(5)
    stream.next_key()
    model = xn.Sequential(xn.Linear(3, 4), xn.Dropout(0.5), xn.Tanh())
    x = be.asarray(np.random.default_rng(0).standard_normal((2, 3)), dtype="float32")
    assert xn.gradcheck(model, x, stream=stream)
    assert (stream.key, stream.position) == ((5,), 2)  # one draw made by one forward pass
