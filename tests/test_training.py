"""fit / evaluate / predict / History / callbacks / summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_on
from helpers import blobs

import xpnet as xn


def _model():
    return xn.Sequential(xn.Linear(4, 16), xn.ReLU(), xn.Linear(16, 3))


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
    assert type(fig).__name__ == "Figure" and len(fig.axes) == 2
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [[1.0, 0.5]]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_early_stopping_restores_best_weights():
    class Scripted(xn.Callback):
        """Feeds a made-up validation curve to EarlyStopping."""

    stopper = xn.EarlyStopping(monitor="val_loss", patience=2)
    with xn.use("numpy"):
        model = _model()
    stopper.on_train_begin(model, None)
    curve = [1.0, 0.5, 0.6, 0.7, 0.4]
    snapshots = []
    for epoch, v in enumerate(curve):
        model[0].weight.value = model[0].weight.value + 1.0
        snapshots.append(model[0].weight.value.copy())
        stopper.on_epoch_end(epoch, {"val_loss": v})
        if stopper.stop_training:
            break
    assert epoch == 3 and stopper.best_epoch == 1
    stopper.on_train_end()
    np.testing.assert_array_equal(model[0].weight.value, snapshots[1])


def test_early_stopping_in_fit_and_unknown_metric():
    x, y = blobs(60, spread=0.4)
    with xn.use("numpy"):
        model = _model()
        stop = xn.EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
        h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   epochs=10, progress=False, callbacks=[stop])
        assert len(h.epochs) == 2  # nothing improves by 10: stops after patience
        # the same callback in a second fit starts afresh, as Keras's does: two epochs
        # again, not one (stop_training and the count left over from the first fit)
        h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   epochs=10, progress=False, callbacks=[stop])
        assert len(h.epochs) == 2 and stop.best_epoch == 0
        with pytest.raises(KeyError, match="val_accuracy.*validation_data"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(),
                   optimizer=xn.SGD(model, lr=0.1), epochs=1, progress=False,
                   callbacks=[xn.EarlyStopping(monitor="val_accuracy")])


def test_model_checkpoint_keeps_best(tmp_path):
    x, y = blobs(120, spread=0.4)
    xv, yv = blobs(60, seed=2, spread=0.4)
    path = tmp_path / "best.xpnet"
    with xn.use("numpy"):
        model = _model()
        h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.Adam(model, lr=0.01),
                   epochs=5, progress=False, validation_data=(xv, yv),
                   callbacks=[xn.ModelCheckpoint(path, monitor="val_loss")])
        ck = xn.load_checkpoint(path)
    best = int(np.argmin(h["val_loss"]))
    assert ck.metadata["epoch"] == best + 1
    assert ck.metadata["val_loss"] == pytest.approx(h["val_loss"][best])
    reloaded = xn.evaluate(ck.model, xv, yv, loss=xn.SoftmaxCrossEntropy())
    assert reloaded["loss"] == pytest.approx(h["val_loss"][best], rel=1e-5)


def test_summary_lists_shapes_and_counts(be):
    model = xn.Sequential(xn.Linear(64, 30), xn.Sigmoid(), xn.Linear(30, 10))
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    assert "(N, 30)" in lines[2] and "1,950" in lines[2]
    assert "(N, 10)" in lines[4] and "310" in lines[4]
    assert lines[-1] == "Total trainable parameters: 2,260"


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


def test_loss_correct_counts_each_kind_of_target(be):
    """Loss.correct against counts made by hand in NumPy."""
    pred_host = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 2.0, 1.0]])
    labels = np.array([0, 2, 2, 0])
    pred = be.asarray(pred_host, dtype="float32")
    y = be.asarray(labels)
    onehot = be.asarray(np.eye(3)[labels], dtype="float32")
    soft = be.asarray(np.eye(3)[labels] * 0.8 + 0.2 / 3, dtype="float32")
    hand = float(np.sum(pred_host.argmax(axis=1) == labels))  # 3
    for loss in (xn.SoftmaxCrossEntropy(), xn.QuadraticCost()):
        assert float(xn.to_numpy(loss.correct(pred, y))) == hand
        assert float(xn.to_numpy(loss.correct(pred, onehot, one_hot=True))) == hand
    assert float(xn.to_numpy(xn.SoftmaxCrossEntropy().correct(pred, soft))) == hand
    assert xn.QuadraticCost().correct(pred, soft) is None  # regression targets: no classes
    logits_host = np.array([[0.3], [-1.0], [2.0], [-0.1]])
    logits = be.asarray(logits_host, dtype="float32")
    binary = np.array([1, 0, 0, 1])
    want = float(np.sum((logits_host[:, 0] > 0) == (binary > 0.5)))  # 2
    bce = xn.BinaryCrossEntropy()
    assert float(xn.to_numpy(bce.correct(logits, be.asarray(binary)))) == want
    assert float(xn.to_numpy(bce.correct(logits, be.asarray(binary, dtype="float32")))) == want


def test_metrics_sum_on_the_device_and_read_once(be):
    from xpnet.train import Metrics

    m = Metrics(xn.SoftmaxCrossEntropy())
    pred = be.asarray(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dtype="float32")
    y = be.asarray(np.array([0, 0, 0]))
    m.add(pred[0:2, ...], y[0:2], be.asarray(np.array(0.5), dtype="float32"), 2)
    m.add(pred[2:3, ...], y[2:3], be.asarray(np.array(2.0), dtype="float32"), 1)
    assert_on(be, m.loss_sum)
    assert_on(be, m.hits)
    assert m.means() == pytest.approx({"loss": (0.5 * 2 + 2.0) / 3, "accuracy": 2 / 3})
