"""Callbacks: per-batch hooks (device values read only on request), EarlyStopping,
ModelCheckpoint, TerminateOnNaN and CSVLogger. (fit's own stop at a non-finite loss,
without a callback, is tested in test_training.py.)"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import assert_on
from helpers import blobs, poisoned_blobs, quick_fit

import xpnet as xn
from xpnet.train import callbacks as callbacks_mod


class Recorder(xn.Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, step, logs):
        self.seen.append((logs.epoch, step, logs.size, logs.loss, self.optimizer.steps))


@pytest.mark.fit_level
def test_on_batch_end_gets_each_batch_loss_on_the_device(be):
    x, y = blobs()
    rec = Recorder()
    model = xn.Sequential(xn.Linear(4, 3))
    h = quick_fit(model, x, y, epochs=2, callbacks=[rec])
    assert [(e, s, n, k) for e, s, n, _, k in rec.seen] == [
        (0, 0, 16, 1), (0, 1, 16, 2), (0, 2, 16, 3), (1, 0, 16, 4), (1, 1, 16, 5), (1, 2, 16, 6)]
    for *_, loss, _ in rec.seen:
        assert_on(be, loss)
        assert tuple(loss.shape) == ()
    for epoch in (0, 1):  # the epoch's loss is the size-weighted mean of its batches'
        rows = [(n, float(xn.to_numpy(c))) for e, _, n, c, _ in rec.seen if e == epoch]
        mean = sum(n * c for n, c in rows) / len(y)
        assert mean == pytest.approx(h["loss"][epoch], rel=1e-5)


def test_compiled_steps_give_the_same_batch_losses():
    x, y = blobs()
    losses = []
    with xn.use("numpy"):
        for compiled in (False, True):
            xn.seed(1)
            rec = Recorder()
            quick_fit(xn.Sequential(xn.Linear(4, 3)), x, y, epochs=2, callbacks=[rec],
                 compile=compiled)
            losses.append([float(xn.to_numpy(c)) for *_, c, _ in rec.seen])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_batch_logs_read_only_when_asked(monkeypatch):
    reads = []
    real = callbacks_mod.to_numpy
    monkeypatch.setattr(callbacks_mod, "to_numpy", lambda a: reads.append(1) or real(a))

    class Lazy(xn.Callback):
        def on_batch_end(self, step, logs):
            self.last = logs.loss  # the device array: no read

    class Reader(xn.Callback):
        def on_batch_end(self, step, logs):
            self.values = (logs["loss"], logs["loss"], dict(logs))  # one read, kept

    x, y = blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        quick_fit(model, x, y, epochs=1, callbacks=[Lazy()])
        assert reads == []
        reader = Reader()
        quick_fit(model, x, y, epochs=1, callbacks=[reader])
    assert len(reads) == 3  # one per batch
    first, again, as_dict = reader.values
    assert first == again == as_dict["loss"] and as_dict["size"] == 16 and as_dict["epoch"] == 0


def test_fit_calls_no_batch_hook_when_none_is_defined(monkeypatch):
    def fail(*args):
        raise AssertionError("on_batch_end machinery ran")

    monkeypatch.setattr("xpnet.train.loop.batch_end", fail)
    x, y = blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        cbs = [xn.Callback(), xn.EarlyStopping("loss")]
        assert callbacks_mod.batch_hooks(cbs) == []
        h = quick_fit(model, x, y, epochs=2, callbacks=cbs)
    assert len(h["loss"]) == 2


def test_stop_training_in_a_batch_hook_stops_after_that_batch():
    class StopAt(xn.Callback):
        def on_batch_end(self, step, logs):
            if step == 1:
                self.stop_training = True

    x, y = blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)
        h = quick_fit(model, x, y, epochs=3, callbacks=[StopAt()], optimizer=opt)
    assert opt.steps == 2 and h.epochs == [0]


@pytest.mark.fit_level
def test_terminate_on_nan_stops_at_the_batch_and_restores_the_weights(be):
    x, y = poisoned_blobs()
    model = xn.Sequential(xn.Linear(4, 3))
    start = model.state_dict()
    opt = xn.SGD(model, lr=0.1)
    cb = xn.TerminateOnNaN()
    with pytest.raises(FloatingPointError, match="loss became nan in epoch 1, by step 2"):
        quick_fit(model, x, y, epochs=2, shuffle=False, callbacks=[cb], optimizer=opt)
    assert cb.stopped == (0, 1) and opt.steps == 2  # row 20 is in the second batch
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, start[k])


def _rows(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def test_csv_logger_writes_a_row_per_epoch(tmp_path):
    x, y = blobs()
    xv, yv = blobs(16, seed=1)
    path = tmp_path / "log.csv"
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)

        class Peek(xn.Callback):  # each row is on disk when the epoch ends
            def on_epoch_end(self, epoch, logs):
                assert len(_rows(path)) == epoch + 2

        h = quick_fit(model, x, y, epochs=3, validation_data=(xv, yv), optimizer=opt,
                 callbacks=[xn.CSVLogger(path), Peek()])
        header, *rows = _rows(path)
        assert header == ["epoch", "accuracy", "loss", "samples_per_sec", "time",
                          "val_accuracy", "val_loss"]
        assert [int(r[0]) for r in rows] == [0, 1, 2]
        for key in ("loss", "accuracy", "val_loss"):
            got = [float(r[header.index(key)]) for r in rows]
            assert got == h[key]  # written exactly
        # appending resumes under the same header; append=False starts afresh
        quick_fit(model, x, y, epochs=5, initial_epoch=3, validation_data=(xv, yv),
             optimizer=opt, callbacks=[xn.CSVLogger(path, append=True)])
        header2, *rows2 = _rows(path)
        assert header2 == header and [int(r[0]) for r in rows2] == [0, 1, 2, 3, 4]
        quick_fit(model, x, y, epochs=1, optimizer=opt,  # no validation: fewer columns
             callbacks=[xn.CSVLogger(path, separator=";")])
        header3, *rows3 = _rows(path, ";")
        assert header3 == ["epoch", "accuracy", "loss", "samples_per_sec", "time"]
        assert len(rows3) == 1
        with pytest.raises(FileNotFoundError, match="CSVLogger: folder"):
            quick_fit(model, x, y, epochs=1, callbacks=[xn.CSVLogger(tmp_path / "no" / "l.csv")])
    with pytest.raises(ValueError, match="separator must be one character"):
        xn.CSVLogger(path, separator=", ")


# -- EarlyStopping and ModelCheckpoint ------------------------------------------------
def _model():
    """The MLP test_training.py trains."""
    return xn.Sequential(xn.Linear(4, 16), xn.ReLU(), xn.Linear(16, 3))


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
