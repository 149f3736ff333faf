"""Per-batch callback hooks (device values read only on request), stopping on a
non-finite loss (by default and with TerminateOnNaN), and CSVLogger."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import assert_on

import xpnet as xn
from xpnet.train import callbacks as callbacks_mod


def _blobs(n=48, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    x = np.eye(3, 4)[y] * 2 + 0.3 * r.standard_normal((n, 4))
    return x.astype(np.float32), y


def _fit(model, x, y, **kw):
    kw.setdefault("optimizer", xn.SGD(model, lr=0.1))
    return xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=16, progress=False,
                  seed=0, **kw)


class Recorder(xn.Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, step, logs):
        self.seen.append((logs.epoch, step, logs.size, logs.loss, self.optimizer.steps))


def test_on_batch_end_gets_each_batch_loss_on_the_device(be):
    x, y = _blobs()
    rec = Recorder()
    model = xn.Sequential(xn.Linear(4, 3))
    h = _fit(model, x, y, epochs=2, callbacks=[rec])
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
    x, y = _blobs()
    losses = []
    with xn.use("numpy"):
        for compiled in (False, True):
            xn.seed(1)
            rec = Recorder()
            _fit(xn.Sequential(xn.Linear(4, 3)), x, y, epochs=2, callbacks=[rec],
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

    x, y = _blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        _fit(model, x, y, epochs=1, callbacks=[Lazy()])
        assert reads == []
        reader = Reader()
        _fit(model, x, y, epochs=1, callbacks=[reader])
    assert len(reads) == 3  # one per batch
    first, again, as_dict = reader.values
    assert first == again == as_dict["loss"] and as_dict["size"] == 16 and as_dict["epoch"] == 0


def test_fit_calls_no_batch_hook_when_none_is_defined(monkeypatch):
    def fail(*args):
        raise AssertionError("on_batch_end machinery ran")

    monkeypatch.setattr("xpnet.train.loop.batch_end", fail)
    x, y = _blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        cbs = [xn.Callback(), xn.EarlyStopping("loss")]
        assert callbacks_mod.batch_hooks(cbs) == []
        h = _fit(model, x, y, epochs=2, callbacks=cbs)
    assert len(h["loss"]) == 2


def test_stop_training_in_a_batch_hook_stops_after_that_batch():
    class StopAt(xn.Callback):
        def on_batch_end(self, step, logs):
            if step == 1:
                self.stop_training = True

    x, y = _blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)
        h = _fit(model, x, y, epochs=3, callbacks=[StopAt()], optimizer=opt)
    assert opt.steps == 2 and h.epochs == [0]


def _poisoned(n=48, at=20):
    x, y = _blobs(n)
    x[at] = np.nan
    return x, y


def test_terminate_on_nan_stops_at_the_batch_and_restores_the_weights(be):
    x, y = _poisoned()
    model = xn.Sequential(xn.Linear(4, 3))
    start = model.state_dict()
    opt = xn.SGD(model, lr=0.1)
    cb = xn.TerminateOnNaN()
    with pytest.raises(FloatingPointError, match="loss became nan in epoch 1, by step 2"):
        _fit(model, x, y, epochs=2, shuffle=False, callbacks=[cb], optimizer=opt)
    assert cb.stopped == (0, 1) and opt.steps == 2  # row 20 is in the second batch
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, start[k])


@pytest.mark.parametrize("reports, caught_at", [(10, 1), (1, 3)])
def test_a_nan_loss_is_caught_at_the_same_report_with_or_without_a_bar(be, reports, caught_at):
    """The loss is read at the reporting interval whatever shows it: the same NaN stops
    fit at the same step silent, with lines, and with a bar (it used to wait for the
    epoch's end without a bar). 3 steps an epoch: 10 reports an epoch read every step, 1
    only at the end. The weights are those of the last finite epoch."""
    x, y = _blobs()
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
    x, y = _poisoned(64, at=20)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)
        with pytest.raises(FloatingPointError, match="by step 2"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, batch_size=16,
                   shuffle=False, progress="bar", reports_per_epoch=2, seed=0)
    assert opt.steps == 2


def _rows(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def test_csv_logger_writes_a_row_per_epoch(tmp_path):
    x, y = _blobs()
    xv, yv = _blobs(16, seed=1)
    path = tmp_path / "log.csv"
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=0.1)

        class Peek(xn.Callback):  # each row is on disk when the epoch ends
            def on_epoch_end(self, epoch, logs):
                assert len(_rows(path)) == epoch + 2

        h = _fit(model, x, y, epochs=3, validation_data=(xv, yv), optimizer=opt,
                 callbacks=[xn.CSVLogger(path), Peek()])
        header, *rows = _rows(path)
        assert header == ["epoch", "accuracy", "loss", "samples_per_sec", "time",
                          "val_accuracy", "val_loss"]
        assert [int(r[0]) for r in rows] == [0, 1, 2]
        for key in ("loss", "accuracy", "val_loss"):
            got = [float(r[header.index(key)]) for r in rows]
            assert got == h[key]  # written exactly
        # appending resumes under the same header; append=False starts afresh
        _fit(model, x, y, epochs=5, initial_epoch=3, validation_data=(xv, yv),
             optimizer=opt, callbacks=[xn.CSVLogger(path, append=True)])
        header2, *rows2 = _rows(path)
        assert header2 == header and [int(r[0]) for r in rows2] == [0, 1, 2, 3, 4]
        _fit(model, x, y, epochs=1, optimizer=opt,  # no validation: fewer columns
             callbacks=[xn.CSVLogger(path, separator=";")])
        header3, *rows3 = _rows(path, ";")
        assert header3 == ["epoch", "accuracy", "loss", "samples_per_sec", "time"]
        assert len(rows3) == 1
        with pytest.raises(FileNotFoundError, match="CSVLogger: folder"):
            _fit(model, x, y, epochs=1, callbacks=[xn.CSVLogger(tmp_path / "no" / "l.csv")])
    with pytest.raises(ValueError, match="separator must be one character"):
        xn.CSVLogger(path, separator=", ")
