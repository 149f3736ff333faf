"""Metrics: the loss and accuracy sums fit and evaluate keep, and evaluate(...,
metrics=[...]): top-k accuracy, mean absolute error and a confusion matrix, summed on the
device batch by batch and read once, against scikit-learn (NumPy where it is not
installed)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_on

import xpnet as xn
from xpnet.backend import backend_of, make
from xpnet.train import metrics as metrics_mod


def _top_k(y, scores, k):
    try:
        from sklearn.metrics import top_k_accuracy_score
    except ImportError:
        order = np.argsort(-scores, axis=1)[:, :k]
        return float(np.mean([t in row for t, row in zip(y, order)]))
    return float(top_k_accuracy_score(y, scores, k=k, labels=np.arange(scores.shape[1])))


def _confusion(y, guess, k):
    try:
        from sklearn.metrics import confusion_matrix
    except ImportError:
        out = np.zeros((k, k), dtype=np.int64)
        np.add.at(out, (y, guess), 1)
        return out
    return confusion_matrix(y, guess, labels=np.arange(k))


def _mae(y, pred):
    try:
        from sklearn.metrics import mean_absolute_error
    except ImportError:
        return float(np.mean(np.abs(y - pred)))
    return float(mean_absolute_error(y, pred))


# one geometry throughout (48 rows of 4 features, batches of 16): JAX compiles each
# operation once per shape, so shared shapes keep these tests fast there
N, BATCH = 48, 16


def _classifier(rng, k=7):
    x = rng.standard_normal((N, 4)).astype(np.float32)
    y = rng.integers(0, k, N)
    return xn.Sequential(xn.Linear(4, k)), x, y


@pytest.mark.fit_level
def test_classification_metrics_against_sklearn(be, rng):
    model, x, y = _classifier(rng)
    scores = xn.to_numpy(xn.predict(model, x)).astype(np.float64)
    got = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=BATCH,
                      metrics=["accuracy", "top_k_accuracy", xn.metrics.TopKAccuracy(k=2),
                               "confusion_matrix"])
    assert set(got) == {"loss", "accuracy", "top_k_accuracy", "top_2_accuracy",
                        "confusion_matrix"}
    assert got["top_k_accuracy"] == pytest.approx(_top_k(y, scores, 5))
    assert got["top_2_accuracy"] == pytest.approx(_top_k(y, scores, 2))
    assert got["accuracy"] == pytest.approx(_top_k(y, scores, 1))
    cm = got["confusion_matrix"]
    assert isinstance(cm, np.ndarray) and cm.dtype == np.int64 and cm.shape == (7, 7)
    np.testing.assert_array_equal(cm, _confusion(y, scores.argmax(axis=1), 7))
    # the default result is unchanged, and "accuracy" asked for is the same number
    plain = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=BATCH)
    assert plain == pytest.approx({"loss": got["loss"], "accuracy": got["accuracy"]})
    # one-hot targets are classes too
    onehot = np.eye(7, dtype=np.float32)[y]
    again = xn.evaluate(model, x, onehot, batch_size=BATCH,
                        metrics=[xn.metrics.TopKAccuracy(3), "confusion_matrix"])
    assert again["top_3_accuracy"] == pytest.approx(_top_k(y, scores, 3))
    np.testing.assert_array_equal(again["confusion_matrix"], cm)


@pytest.mark.fit_level
def test_mean_absolute_error_against_sklearn(be, rng):
    model = xn.Sequential(xn.Linear(4, 3))
    x = rng.standard_normal((N, 4)).astype(np.float32)
    target = rng.standard_normal((N, 3)).astype(np.float32)
    pred = xn.to_numpy(xn.predict(model, x)).astype(np.float64)
    got = xn.evaluate(model, x, target, loss=xn.QuadraticCost(), batch_size=BATCH,
                      metrics=["mae"])
    assert set(got) == {"loss", "mae"}
    assert got["mae"] == pytest.approx(_mae(target, pred), rel=1e-5)
    with pytest.raises(ValueError, match="accuracy: needs class targets"):
        xn.evaluate(model, x, target, metrics=["accuracy"])


@pytest.mark.fit_level
def test_binary_confusion_matrix_uses_the_losses_threshold(be, rng):
    model = xn.Sequential(xn.Linear(4, 1))
    x = rng.standard_normal((N, 4)).astype(np.float32)
    y = rng.integers(0, 2, N)
    logits = xn.to_numpy(xn.predict(model, x))[:, 0]
    got = xn.evaluate(model, x, y, loss=xn.BinaryCrossEntropy(), batch_size=BATCH,
                      metrics=["confusion_matrix", "accuracy"])
    want = _confusion(y, (logits > 0).astype(int), 2)
    np.testing.assert_array_equal(got["confusion_matrix"], want)
    assert got["accuracy"] == pytest.approx(np.trace(want) / N)


def test_per_position_scores(be, rng):
    """Logits (n, L, k) with labels (n, L): one prediction per position."""
    scores = rng.standard_normal((6, 4, 6))
    labels = rng.integers(0, 6, (6, 4))
    top, cm = xn.metrics.TopKAccuracy(k=3), xn.metrics.ConfusionMatrix()
    cm.prepare(None, 6)
    top.prepare(None, 6)
    for lo, hi in ((0, 3), (3, 6)):
        pred = be.asarray(scores[lo:hi], dtype="float32")
        top.update(pred, be.asarray(labels[lo:hi]))
        cm.update(pred, be.asarray(labels[lo:hi]))
    flat_scores, flat_labels = scores.reshape(-1, 6), labels.reshape(-1)
    assert top.result() == pytest.approx(_top_k(flat_labels, flat_scores, 3))
    np.testing.assert_array_equal(cm.result(),
                                  _confusion(flat_labels, flat_scores.argmax(axis=1), 6))


def test_metrics_sum_on_the_device_and_read_once(be, rng, monkeypatch):
    """The sums stay on the device batch after batch: the host reads are those of the
    final results, as many for 3 batches as for 1."""
    model, x, y = _classifier(rng)
    reads = []
    real = metrics_mod.to_numpy
    monkeypatch.setattr(metrics_mod, "to_numpy", lambda a: reads.append(1) or real(a))
    counts = []
    for batch in (BATCH, N):
        chosen = [xn.metrics.Accuracy(), xn.metrics.TopKAccuracy(3),
                  xn.metrics.ConfusionMatrix()]
        reads.clear()
        out = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=batch,
                          metrics=chosen)
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 2 * (1 + len(chosen))  # a sum and a count each
    for sums in (chosen[0].hits, chosen[1].hits, chosen[2].counts):  # integer counts
        assert backend_of(sums) == be and be.xp.isdtype(sums.dtype, "integral")
    assert tuple(chosen[2].counts.shape) == (7, 7)
    assert int(out["confusion_matrix"].sum()) == N


def test_metrics_run_on_the_meta_device(rng):
    """On torch's meta device every host read raises: updates must not read."""
    pytest.importorskip("torch")
    meta = make("torch", "meta")
    pred = meta.asarray(np.zeros((6, 4)), dtype="float32")
    labels = meta.asarray(np.zeros(6, dtype=np.int64))
    for m in (xn.metrics.Accuracy(), xn.metrics.TopKAccuracy(2), xn.metrics.ConfusionMatrix(),
              xn.metrics.MeanAbsoluteError()):
        m.prepare(xn.SoftmaxCrossEntropy(), 4)
        target = pred if isinstance(m, xn.metrics.MeanAbsoluteError) else labels
        m.update(pred, target)
        m.update(pred, target)
        sums = [v for v in vars(m).values() if hasattr(v, "shape")]
        assert sums and all(backend_of(s) == meta for s in sums)


def test_metric_arguments(rng):
    with xn.use("numpy"):
        model, x, y = _classifier(rng)
        with pytest.raises(ValueError, match="unknown metric 'f1'; known: accuracy"):
            xn.evaluate(model, x, y, metrics=["f1"])
        with pytest.raises(TypeError, match="metrics must be names or"):
            xn.evaluate(model, x, y, metrics=[len])
        with pytest.raises(ValueError, match="must differ"):
            xn.evaluate(model, x, y, metrics=["accuracy", xn.metrics.Accuracy()])
        with pytest.raises(ValueError, match="mae: targets must have the predictions' shape"):
            xn.evaluate(model, x, y, metrics=["mae"])
        only = xn.evaluate(model, x, y, metrics="top_k_accuracy")
        assert set(only) == {"top_k_accuracy"}  # no loss known, no accuracy asked
    with pytest.raises(ValueError, match="TopKAccuracy: k must be >= 1"):
        xn.metrics.TopKAccuracy(k=0)


def _hits(loss, pred, target, one_hot=False):
    acc = xn.metrics.Accuracy()
    acc.prepare(loss, int(pred.shape[-1]), one_hot)
    found = acc.correct(pred, target)
    return None if found is None else float(xn.to_numpy(found))


def test_accuracy_counts_each_kind_of_target(be):
    """Accuracy's counts (as each loss defines classes) against counts made by hand."""
    pred_host = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 2.0, 1.0]])
    labels = np.array([0, 2, 2, 0])
    pred = be.asarray(pred_host, dtype="float32")
    y = be.asarray(labels)
    onehot = be.asarray(np.eye(3)[labels], dtype="float32")
    soft = be.asarray(np.eye(3)[labels] * 0.8 + 0.2 / 3, dtype="float32")
    hand = float(np.sum(pred_host.argmax(axis=1) == labels))  # 3
    for loss in (xn.SoftmaxCrossEntropy(), xn.QuadraticCost()):
        assert _hits(loss, pred, y) == hand
        assert _hits(loss, pred, onehot, one_hot=True) == hand
    assert _hits(xn.SoftmaxCrossEntropy(), pred, soft) == hand
    assert _hits(xn.QuadraticCost(), pred, soft) is None  # regression targets: no classes
    logits_host = np.array([[0.3], [-1.0], [2.0], [-0.1]])
    logits = be.asarray(logits_host, dtype="float32")
    binary = np.array([1, 0, 0, 1])
    want = float(np.sum((logits_host[:, 0] > 0) == (binary > 0.5)))  # 2
    bce = xn.BinaryCrossEntropy()
    assert _hits(bce, logits, be.asarray(binary)) == want
    assert _hits(bce, logits, be.asarray(binary, dtype="float32")) == want


def test_loss_and_hits_sum_on_the_device_and_read_once(be):
    from xpnet.train import MetricSet

    acc = xn.metrics.Accuracy()
    acc.prepare(xn.SoftmaxCrossEntropy(), 2)
    m = MetricSet([acc])
    pred = be.asarray(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dtype="float32")
    y = be.asarray(np.array([0, 0, 0]))
    m.update(pred[0:2, ...], y[0:2], be.asarray(np.array(0.5), dtype="float32"), 2)
    m.update(pred[2:3, ...], y[2:3], be.asarray(np.array(2.0), dtype="float32"), 1)
    assert_on(be, m.loss.total)
    for count in (acc.hits, acc.judged, m.loss.count):  # integer counts on the device
        assert xn.backend.backend_of(count) == be and be.xp.isdtype(count.dtype, "integral")
    assert m.results() == pytest.approx({"loss": (0.5 * 2 + 2.0) / 3, "accuracy": 2 / 3})
