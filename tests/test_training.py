"""fit / evaluate / predict, History, the progress display and summary; fit's checks
of its data and arguments (callbacks: test_callbacks.py, metrics: test_metrics.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import assert_on
from helpers import blobs, poisoned_blobs, quick_fit

import xpnet as xn


def _model():
    return xn.Sequential(xn.Linear(4, 16), xn.ReLU(), xn.Linear(16, 3))


@pytest.mark.fit_level
def test_fit_learns_and_reports(be):
    x, y = blobs(240, spread=0.4)
    xv, yv = blobs(90, seed=1, spread=0.4)
    model = _model()
    h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.Adam(model, lr=0.02),
               epochs=8, batch_size=32, validation_data=(xv, yv), progress=False, seed=0)
    assert h.epochs == list(range(8))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "time", "samples_per_sec"):
        assert len(h[key]) == 8, key
    assert h["loss"][-1] < h["loss"][0] / 3
    assert h["val_accuracy"][-1] >= 0.95
    # evaluate reproduces the last validation numbers (the loss from fit is the default)
    ev = xn.evaluate(model, xv, yv)
    assert ev["accuracy"] == pytest.approx(h["val_accuracy"][-1])
    assert ev["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-5)
    # predict returns device arrays whose argmax gives that accuracy
    scores = xn.predict(model, xv, batch_size=40)
    assert_on(be, scores)
    acc = float(np.mean(xn.to_numpy(scores).argmax(axis=1) == yv))
    assert acc == pytest.approx(ev["accuracy"])


def test_evaluate_counts_by_hand():
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(2, 2))
        model[0].weight.value = np.eye(2, dtype=np.float32)
        model[0].bias.value = np.zeros(2, dtype=np.float32)
        x = np.array([[1, 0], [0, 1], [1, 0], [2, 3]], dtype=np.float32)
        y = np.array([0, 1, 1, 1])
        out = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=3)
    assert out["accuracy"] == 0.75
    z = x.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert out["loss"] == pytest.approx(-np.mean(logp[np.arange(4), y]), rel=1e-6)


@pytest.mark.fit_level
def test_fit_accepts_data_already_on_the_device(be):
    x, y = blobs(64, spread=0.4)
    model = _model()
    h = xn.fit(model, be.asarray(x), be.asarray(y), loss=xn.SoftmaxCrossEntropy(),
               optimizer=xn.SGD(model, lr=0.1), epochs=2, batch_size=30, progress=False)
    assert len(h["loss"]) == 2 and np.isfinite(h["loss"]).all()


def test_fit_is_deterministic_given_seed():
    x, y = blobs(100, spread=0.4)
    runs = []
    for _ in range(2):
        with xn.use("numpy"):
            xn.seed(3)
            model = _model()
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   epochs=3, batch_size=7, progress=False, seed=11)
            runs.append([p.value.copy() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_rejects_bad_labels_before_training():
    x, y = blobs(20, spread=0.4)
    y[5] = 7
    with xn.use("array_api_strict", device="device1"):
        model = _model()
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*0 to 7"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   progress=False)


def test_fit_rejects_data_on_another_device():
    x, y = blobs(20, spread=0.4)
    with xn.use("array_api_strict", device="device1"):
        model = _model()
    with xn.use("array_api_strict", device="device2") as other:
        xd = other.asarray(x)
    with pytest.raises(TypeError, match="device2.*device1"):
        xn.fit(model, xd, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match="x has 20 examples but y has 19"):
        xn.fit(model, x, y[:19], loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1))


def test_progress_lines_and_silence(capsys):
    x, y = blobs(40, spread=0.4)
    with xn.use("numpy"):
        model = _model()
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               epochs=2, progress="lines")
        out = capsys.readouterr().out
        assert out.count("epoch ") == 2 and "epoch 2/2" in out and "accuracy" in out
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               epochs=2, progress=False)
        assert capsys.readouterr().out == ""


def test_binary_classification_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(2, 1))
        h = xn.fit(model, x, y, loss=xn.BinaryCrossEntropy(), optimizer=xn.Adam(model, lr=0.05),
                   epochs=15, batch_size=20, progress=False, seed=0)
    assert h["accuracy"][-1] >= 0.95


def test_history_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    h = xn.History()
    h.append(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.4})
    h.append(1, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.7})
    h.to_json(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text())["val_accuracy"] == [0.4, 0.7]
    h.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_returns_a_figure_and_keeps_the_matplotlib_backend(tmp_path):
    """For notebooks: no path gives the Figure; the user's backend is never switched."""
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    h = xn.History()
    h.append(0, {"loss": 1.0, "accuracy": 0.5})
    h.append(1, {"loss": 0.5, "accuracy": 0.8})
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # the user's choice, which plot must leave alone
    try:
        fig = h.plot()
        h.plot(tmp_path / "c.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [[1.0, 0.5]]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_lists_shapes_and_counts(be):
    model = xn.Sequential(xn.Linear(64, 30), xn.Sigmoid(), xn.Linear(30, 10))
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    assert "(N, 30)" in lines[2] and "1,950" in lines[2]
    assert "(N, 10)" in lines[4] and "310" in lines[4]
    assert lines[-3:] == ["Total params: 2,260", "Trainable params: 2,260",
                          "Non-trainable params: 0"]


def test_validation_data_is_uploaded_once(monkeypatch):
    """fit moves the validation set to the device before the first epoch, not every epoch."""
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    x, y = blobs(60, spread=0.4)
    xv, yv = blobs(30, seed=1, spread=0.4)
    uploads = []
    real = xn.Backend.asarray

    def counting(self, host, dtype=None, copy=True):
        uploads.append(tuple(np.shape(host)))
        return real(self, host, dtype=dtype, copy=copy)

    with xn.use("array_api_strict", device="device1"):
        model = _model()
        monkeypatch.setattr(xn.Backend, "asarray", counting)
        h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   epochs=3, batch_size=20, validation_data=(xv, yv), progress=False, seed=0)
    assert len(h["val_accuracy"]) == 3
    assert uploads.count((30, 4)) == 1 and uploads.count((30,)) == 1, uploads


def test_evaluate_after_load_reports_the_loss_fit_used(tmp_path):
    """fit records its loss as model.loss and xn.save keeps it: evaluate on the loaded
    model reports the same loss (it was dropped: the loss lived in a hidden attribute)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 1))
        xn.fit(model, x, y, loss=xn.BinaryCrossEntropy(from_logits=True),
               optimizer=xn.SGD(model, lr=0.5), epochs=2, batch_size=8, progress=False,
               seed=0)
        assert isinstance(model.loss, xn.BinaryCrossEntropy) and model.loss.from_logits
        xn.save(tmp_path / "m.xpnet", model)
        loaded = xn.load(tmp_path / "m.xpnet")
        got, want = xn.evaluate(loaded, x, y), xn.evaluate(model, x, y)
    assert set(got) == {"loss", "accuracy"}
    assert got == pytest.approx(want)


def test_fit_leaves_no_hidden_state_on_the_model(rng):
    """What a run needs lives on the run or its step: fit, compiled or not, adds nothing
    to the model but the loss it records."""
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        before = {id(layer): set(vars(layer)) for layer in model.layers()}
        for compile in (False, True):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
                   progress=False, compile=compile)
        after = {id(layer): set(vars(layer)) for layer in model.layers()}
    assert after[id(model)] - before[id(model)] == {"loss"}
    assert all(after[k] == before[k] for k in before if k != id(model))


def test_arrays_and_bind_are_the_one_seam_for_the_models_state(be):
    """Layer.arrays() lists every array (running statistics too) in named_state order;
    bind() puts them back; copies do not follow later in-place updates."""
    model = xn.Sequential(xn.Linear(3, 4), xn.BatchNorm1D(4), xn.Linear(4, 2))
    names = [n for n, _ in model.named_state()]
    arrays = model.arrays()
    assert len(arrays) == len(names) == 8 and all(
        a is p.value for a, (_, p) in zip(arrays, model.named_state()))
    copies = model.arrays(copy=True)
    opt = xn.SGD(model, lr=1.0)
    for p in model.parameters():
        p.grad = be.xp.ones_like(p.value)
    opt.step()  # in place where the library allows
    moved = [xn.to_numpy(a) for a in model.arrays()]
    model.bind(copies)
    for (name, p), a, b in zip(model.named_state(), copies, moved):
        np.testing.assert_array_equal(xn.to_numpy(p.value), xn.to_numpy(a), err_msg=name)
        if name.endswith("weight") and "1." not in name:
            assert not np.array_equal(xn.to_numpy(a), b), name  # the copy did not move
    with pytest.raises(ValueError, match="bind got 7 arrays, the model holds 8"):
        model.bind(copies[:7])


# -- misuse that used to lose data, hang or give a silently wrong answer ----------------
# Each is refused before the first step with one clear error, or made to fail loudly.
def _mlp(out=3):
    """The small tanh MLP the misuse tests below train."""
    return xn.Sequential(xn.Linear(4, 8), xn.Tanh(), xn.Linear(8, out))


# labels out of range
def test_out_of_range_labels_in_a_list_are_refused():
    x, y = blobs(60)
    with xn.use("numpy"):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*0 to 5"):
            quick_fit(_mlp(), x, [int(v) for v in y[:-1]] + [5])


@pytest.mark.fit_level
def test_out_of_range_labels_on_a_device_turn_the_loss_nan(be):
    """On a device the labels cannot be checked without a host read: the loss must turn
    NaN (which fit reports), never train on as all-zero targets."""
    x, y = blobs(60)
    y[3] = 7
    model = _mlp()
    on_host = xn.backends.ops(be.xp).on_host  # NumPy: checked at once
    error, pattern = ((ValueError, "labels must lie") if on_host else
                      (FloatingPointError, "loss became nan in epoch 1"))
    with pytest.raises(error, match=pattern):
        quick_fit(model, x, be.asarray(y))


def test_evaluate_checks_labels_on_the_host(be):
    x, y = blobs(60)
    y[0] = 9
    with pytest.raises(ValueError, match=r"evaluate: labels must lie in \[0, 2\]"):
        xn.evaluate(_mlp(), x, y, loss=xn.SoftmaxCrossEntropy())


# a loss that is not finite
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fit_stops_at_a_non_finite_loss_and_keeps_the_last_finite_weights():
    x, y = blobs(64)
    with xn.use("numpy"):
        model = _mlp()
        quick_fit(model, x, y, epochs=1)
        before = [p.value.copy() for p in model.parameters()]
        bad = x.copy()
        bad[40] = np.inf  # in the third batch of 16: caught there (a report every step)
        with pytest.raises(FloatingPointError, match=r"loss became nan in epoch 2, by step 3"):
            quick_fit(model, bad, y, epochs=3, initial_epoch=1, shuffle=False)
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.value, b)


@pytest.mark.fit_level
@pytest.mark.parametrize("reports, caught_at", [(10, 1), (1, 3)])
def test_a_nan_loss_is_caught_at_the_same_report_with_or_without_a_bar(be, reports, caught_at):
    """The loss is read at the reporting interval whatever shows it: the same NaN stops
    fit at the same step silent, with lines, and with a bar (it used to wait for the
    epoch's end without a bar). 3 steps an epoch: 10 reports an epoch read every step, 1
    only at the end. The weights are those of the last finite epoch."""
    x, y = blobs(48)
    saved = {}

    class Poison(xn.Callback):  # the weights turn NaN after epoch 0 (its own are kept)
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                saved.update(self.model.state_dict())
                p = self.model.parameters()[0]
                p.value = p.value * np.nan

    for progress in (False, "lines", "bar"):
        xn.seed(0)
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)
        with pytest.raises(FloatingPointError,
                           match=f"loss became nan in epoch 2, by step {caught_at}"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, batch_size=16,
                   seed=0, epochs=3, callbacks=[Poison()], progress=progress,
                   reports_per_epoch=reports)
        assert opt.steps == 3 + caught_at, progress
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, saved[k])


def test_a_nan_loss_stops_fit_at_the_first_progress_report():
    # reports_per_epoch reads, with or without tqdm (without it, "bar" shows lines)
    x, y = poisoned_blobs(64, at=20)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)
        with pytest.raises(FloatingPointError, match="by step 2"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, batch_size=16,
                   shuffle=False, progress="bar", reports_per_epoch=2, seed=0)
    assert opt.steps == 2


# inputs of another dtype
@pytest.mark.fit_level
def test_integer_and_bool_inputs_are_cast_to_the_model_dtype(be):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(40, 4))
    y = (x[:, 0] > 1).astype(np.int64)
    model = xn.Sequential(xn.Linear(4, 2))
    h = quick_fit(model, x, y, epochs=2)
    assert np.isfinite(h["loss"]).all()
    assert set(xn.evaluate(model, x.astype(bool), y)) == {"loss", "accuracy"}
    assert xn.predict(model, be.asarray(x)).dtype == be.dtype("float32")


# empty data
def test_empty_data_is_refused_with_one_clear_error(be):
    model = _mlp()
    empty_x, empty_y = np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    for call in (lambda: quick_fit(model, empty_x, empty_y),
                 lambda: xn.evaluate(model, empty_x, empty_y),
                 lambda: xn.predict(model, empty_x)):
        with pytest.raises(ValueError, match=r"no examples \(0 rows\)"):
            call()
    with pytest.raises(ValueError, match="more than one value per channel"):
        xn.BatchNorm1D(4).forward(be.asarray(empty_x), train=True)


# mistakes found before the first step
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
    x, y = blobs(60)
    loss = _CountingLoss()
    with xn.use("numpy"), pytest.raises(error, match=pattern):
        quick_fit(_mlp(), x, y, loss=loss, **kw)
    assert loss.calls == 0


# multi-input graphs
def _two_inputs():
    a, b = xn.Input(shape=(3,)), xn.Input(shape=(2,))
    joined = xn.Concat()(xn.Tanh()(xn.Linear(3, 4)(a)), b)
    return xn.Graph(inputs=[a, b], outputs=xn.Linear(6, 2)(joined))


@pytest.mark.fit_level
def test_multi_input_graphs_take_a_list_everywhere(be):
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))
    y = (xa[:, 0] + xb[:, 1] > 0).astype(np.int64)
    model = _two_inputs()
    h = quick_fit(model, [xa, xb], y, epochs=2, batch_size=7, validation_data=([xa, xb], y))
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


# arguments checked at once
@pytest.mark.parametrize("call, error, pattern", [
    (lambda: quick_fit(_mlp(), *blobs(60), batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda: quick_fit(_mlp(), *blobs(60), seed=-1), ValueError, "seed must be >= 0"),
    (lambda: quick_fit(_mlp(), *blobs(60), initial_epoch=-2), ValueError, "initial_epoch must be"),
    (lambda: quick_fit(_mlp(), *blobs(60), batch_size=2.5), TypeError, "batch_size must be an int"),
])
def test_fit_arguments_raise_at_once_naming_the_argument(call, error, pattern):
    with xn.use("numpy"), pytest.raises(error, match=pattern):
        call()


# the progress display
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
    header = [i for i, line in enumerate(lines) if line.split()[:2] == ["loss", "accuracy"]]
    assert len(header) == 1 and lines[header[0] + 1].startswith("epoch 1/2  ")
    assert lines[header[0] + 1].split()[2:] == ["0.1000", "0.9000", "0.2000", "0.8500",
                                                "1.00", "s", "1,000"]
    assert all(len(line) < 80 for line in lines[header[0]:])  # the results
    assert all(len(line) <= 80 for line in lines)  # the bar: at most the terminal's width
    assert not any(line.strip() == "" for line in out.getvalue().split("\n")[:-1])
