"""Running sums of the loss and of correct predictions, kept on the device, and the
metrics ``evaluate(..., metrics=[...])`` computes.

Each step adds device scalars; nothing is read back until :meth:`Metrics.read`, which
``fit`` calls at its reporting interval and once per epoch. A :class:`Metric` likewise
sums each batch on the device and is read once, by :meth:`Metric.result`, at the end.

``evaluate`` takes metric names or objects::

    xn.evaluate(model, x, y, metrics=["accuracy", "top_k_accuracy", "mae",
                                      "confusion_matrix"])
    xn.evaluate(model, x, y, metrics=[xn.metrics.TopKAccuracy(k=3)])   # "top_3_accuracy"
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import _args
from .._compat import device, is_integral, namespace
from ..backend import to_numpy
from ..losses import BinaryCrossEntropy, Loss


class Metrics:
    """Sums of ``loss * examples`` and of correct predictions over the batches seen.

    Accuracy is hits over the predictions judged: one per example, or one per position
    for sequence targets (logits ``(n, L, k)`` with labels ``(n, L)``: per-token
    accuracy), as ``loss.positions`` says.

    Parameters
    ----------
    loss : Loss or None
        What ``cost`` values come from, and whose ``correct`` counts hits.
    count_hits : bool
        Whether to count correct predictions (classification accuracy).
    one_hot : bool
        Targets are integer labels that ``loss.encode_targets`` turned into one-hot rows.
    """

    def __init__(self, loss: Loss | None, count_hits: bool = True, one_hot: bool = False):
        self.judge = loss if loss is not None else Loss()
        self.count_hits, self.one_hot = count_hits, one_hot
        self.totals: tuple[Any, Any] | None = None  # what a compiled step adds to
        self.loss_sum: Any = None
        self.hits: Any = None
        self.seen = 0
        self.judged = 0  # predictions that ``hits`` counts over: examples or positions

    def add(self, pred: Any, target: Any, cost: Any, n: int) -> None:
        """Add one batch of ``n`` examples: its mean ``cost`` (None: no loss) and hits."""
        if cost is not None:
            c = cost * n
            self.loss_sum = c if self.loss_sum is None else self.loss_sum + c
        if self.count_hits:
            h = self.judge.correct(pred, target, one_hot=self.one_hot)
            if h is not None:
                self.hits = h if self.hits is None else self.hits + h
                self.judged += n * self.judge.positions(pred)
        self.seen += n

    def set_totals(self, loss_sum: Any, hits: Any, n: int, positions: int = 1) -> None:
        """Take the sums after one more batch of ``n`` examples, as a compiled step adds
        them up itself (``TrainStep.run(..., totals)``)."""
        self.loss_sum = loss_sum
        self.totals = (loss_sum, hits)
        if self.count_hits:
            self.hits = hits
            self.judged += n * positions
        self.seen += n

    def read(self) -> tuple[float | None, float | None]:
        """``(loss sum, hit count)`` on the host, None where nothing was summed."""
        loss = float(to_numpy(self.loss_sum)) if self.loss_sum is not None else None
        hits = float(to_numpy(self.hits)) if self.hits is not None else None
        return loss, hits

    def means(self) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` over the examples (for accuracy: the
        predictions judged) seen so far."""
        loss, hits = self.read()
        out = {}
        if loss is not None:
            out["loss"] = loss / max(self.seen, 1)
        if hits is not None:
            out["accuracy"] = hits / max(self.judged, 1)
        return out


# -- metrics for evaluate(..., metrics=[...]) ---------------------------------------
class Metric:
    """A quantity summed over batches on the device and read once at the end.

    ``evaluate`` calls :meth:`prepare` before the first batch (which also resets the
    sums), :meth:`update` with each batch's predictions and targets (device arrays, no
    host read), and :meth:`result` once. ``name`` is its key in the returned dict.
    """

    name = "metric"

    def prepare(self, loss: Loss | None, outputs: int) -> None:
        """Start afresh for predictions from a model with ``outputs`` columns, scored with
        ``loss`` (None: none)."""
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: Any, target: Any) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _count_dtype(xp: Any, like: Any) -> Any:
    """The library's default integer dtype (int64; int32 on JAX without x64)."""
    return xp.asarray(0, device=device(like)).dtype


def _add(total: Any, part: Any) -> Any:
    return part if total is None else total + part


def _class_labels(who: str, xp: Any, pred: Any, target: Any) -> Any:
    """Integer labels shaped like ``pred`` without its class axis: ``target`` itself, or
    the arg-max of one-hot (probability) rows shaped like ``pred``."""
    if is_integral(xp, target.dtype):
        if tuple(target.shape) != tuple(pred.shape[:-1]):
            raise ValueError(f"{who}: integer labels must have shape {tuple(pred.shape[:-1])} "
                             f"for predictions of shape {tuple(pred.shape)}, got "
                             f"{tuple(target.shape)}")
        return target
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"{who}: targets must be integer labels {tuple(pred.shape[:-1])} or "
                         f"class rows shaped like the predictions {tuple(pred.shape)}, got "
                         f"{tuple(target.shape)}")
    return xp.argmax(target, axis=-1)


class Accuracy(Metric):
    """The fraction of predictions that are right, judged as ``fit`` judges them (the
    loss's ``correct``): arg-max against integer labels, or one output column against
    0.5 (0 for ``BinaryCrossEntropy`` on logits); per position for ``(n, L, k)`` logits.
    """

    def __init__(self, name: str = "accuracy"):
        self.name = name
        self.judge = Loss()
        self.reset()

    def prepare(self, loss: Loss | None, outputs: int) -> None:
        self.judge = loss if loss is not None else Loss()
        self.reset()

    def reset(self) -> None:
        self.hits: Any = None
        self.judged = 0

    def update(self, pred: Any, target: Any) -> None:
        judge = self.judge
        hits = judge.correct(pred, target)
        if hits is None:
            raise ValueError(f"{self.name}: needs class targets (integer labels, or 0/1 for "
                             f"one output), got {target.dtype} targets of shape "
                             f"{tuple(target.shape)} for predictions {tuple(pred.shape)}")
        self.hits = _add(self.hits, hits)
        self.judged += int(pred.shape[0]) * judge.positions(pred)

    def result(self) -> float:
        return float(to_numpy(self.hits)) / max(self.judged, 1) if self.hits is not None \
            else math.nan


class TopKAccuracy(Metric):
    """The fraction of examples whose true class is among the ``k`` highest scores.

    Predictions ``(n, k_classes)`` (or ``(n, ..., k_classes)``, per position); targets
    integer labels or one-hot rows. A class tied with the ``k``-th score counts as in
    the top ``k`` (Keras's ``in_top_k``); a NaN true-class score never does. Equals
    ``sklearn.metrics.top_k_accuracy_score`` where scores have no ties. Default name
    ``"top_{k}_accuracy"``.
    """

    def __init__(self, k: int = 5, name: str | None = None):
        self.k = _args.integer(k, "k", "TopKAccuracy", minimum=1)
        self.name = name or f"top_{self.k}_accuracy"
        self.reset()

    def reset(self) -> None:
        self.hits: Any = None
        self.judged = 0

    def update(self, pred: Any, target: Any) -> None:
        xp = namespace(pred)
        if pred.ndim < 2 or pred.shape[-1] < 2:
            raise ValueError(f"{self.name}: needs class scores (n, classes), got predictions "
                             f"of shape {tuple(pred.shape)}")
        labels = _class_labels(self.name, xp, pred, target)
        classes = xp.arange(pred.shape[-1], dtype=labels.dtype, device=device(labels))
        mine = labels[..., None] == classes
        true = xp.sum(xp.where(mine, pred, xp.zeros_like(pred)), axis=-1)
        count = _count_dtype(xp, pred)
        above = xp.sum(xp.astype(pred > true[..., None], count), axis=-1)
        right = (above < self.k) & (true == true) & xp.any(mine, axis=-1)
        self.hits = _add(self.hits, xp.sum(xp.astype(right, count)))
        self.judged += math.prod(labels.shape)

    def result(self) -> float:
        return float(to_numpy(self.hits)) / max(self.judged, 1) if self.hits is not None \
            else math.nan


class MeanAbsoluteError(Metric):
    """``mean(|pred - target|)`` over every element (sklearn's ``mean_absolute_error``
    averaged over outputs). ``target`` has the predictions' shape (a ``(n,)`` target
    fits ``(n, 1)`` predictions)."""

    def __init__(self, name: str = "mae"):
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.total: Any = None
        self.count = 0

    def update(self, pred: Any, target: Any) -> None:
        xp = namespace(pred)
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            target = xp.reshape(target, (-1, 1))
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"{self.name}: targets must have the predictions' shape "
                             f"{tuple(pred.shape)}, got {tuple(target.shape)}")
        diff = xp.abs(pred - xp.astype(target, pred.dtype))
        self.total = _add(self.total, xp.sum(diff))
        self.count += math.prod(pred.shape)

    def result(self) -> float:
        return float(to_numpy(self.total)) / max(self.count, 1) if self.total is not None \
            else math.nan


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class) pairs: a ``(k, k)`` NumPy int64 array,
    rows the true class and columns the predicted one, as
    ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(k))``.

    The predicted class is the arg-max of ``(n, k)`` scores (per position for
    ``(n, ..., k)``); for one output column it is 1 above 0.5 (above 0 for
    ``BinaryCrossEntropy`` on logits), else 0. ``num_classes`` defaults to the model's
    output width (2 for one column). Counted on the device with a matmul of one-hot rows.
    """

    def __init__(self, num_classes: int | None = None, name: str = "confusion_matrix"):
        self.num_classes = (None if num_classes is None else
                            _args.integer(num_classes, "num_classes", "ConfusionMatrix",
                                          minimum=2))
        self.name = name
        self.cut = 0.5
        self.k = self.num_classes
        self.reset()

    def prepare(self, loss: Loss | None, outputs: int) -> None:
        self.k = self.num_classes or max(outputs, 2)
        self.cut = 0.0 if isinstance(loss, BinaryCrossEntropy) and loss.from_logits else 0.5
        self.reset()

    def reset(self) -> None:
        self.counts: Any = None

    def update(self, pred: Any, target: Any) -> None:
        xp = namespace(pred)
        if pred.ndim >= 2 and pred.shape[-1] > 1:
            true = _class_labels(self.name, xp, pred, target)
            guess = xp.argmax(pred, axis=-1)
        else:
            flat = xp.reshape(pred, (-1,))
            true = xp.reshape(target, (-1,))
            if true.shape != flat.shape:
                raise ValueError(f"{self.name}: targets must have one value per prediction "
                                 f"{tuple(pred.shape)}, got {tuple(target.shape)}")
            count = _count_dtype(xp, pred)
            true = xp.astype(true if is_integral(xp, true.dtype) else true > 0.5, count)
            guess = xp.astype(flat > self.cut, count)
        if self.k is None:
            self.k = max(int(pred.shape[-1]) if pred.ndim >= 2 else 1, 2)
        true, guess = xp.reshape(true, (-1,)), xp.reshape(guess, (-1,))
        classes = xp.arange(self.k, device=device(pred))
        rows = xp.astype(xp.astype(true, classes.dtype)[:, None] == classes, pred.dtype)
        cols = xp.astype(xp.astype(guess, classes.dtype)[:, None] == classes, pred.dtype)
        counts = xp.astype(rows.T @ cols, _count_dtype(xp, pred))  # exact: < 2**24 rows
        self.counts = _add(self.counts, counts)

    def result(self) -> np.ndarray:
        if self.counts is None:
            return np.zeros((self.k or 2, self.k or 2), dtype=np.int64)
        return np.asarray(to_numpy(self.counts), dtype=np.int64)


METRICS: dict[str, Any] = {
    "accuracy": Accuracy, "acc": Accuracy,
    "top_k_accuracy": lambda: TopKAccuracy(5, name="top_k_accuracy"),
    "mae": MeanAbsoluteError, "mean_absolute_error": lambda: MeanAbsoluteError(
        "mean_absolute_error"),
    "confusion_matrix": ConfusionMatrix,
}


def resolve(metrics: Iterable[str | Metric] | str | Metric | None, loss: Loss | None,
            outputs: int, who: str = "evaluate") -> list[Metric] | None:
    """Metric objects for ``metrics`` (names from :data:`METRICS` or Metric objects),
    each prepared for this run; None for None (the default: loss and accuracy)."""
    if metrics is None:
        return None
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    out: list[Metric] = []
    for m in metrics:
        if isinstance(m, str):
            if m not in METRICS:
                raise ValueError(f"{who}: unknown metric {m!r}; known: {', '.join(METRICS)}, "
                                 f"or a xn.metrics.Metric object")
            m = METRICS[m]()
        elif not isinstance(m, Metric):
            raise TypeError(f"{who}: metrics must be names or xn.metrics.Metric objects, got "
                            f"{type(m).__name__}")
        m.prepare(loss, outputs)
        out.append(m)
    names = [m.name for m in out]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(f"{who}: metric names must differ from each other and from 'loss', "
                         f"got {names}")
    return out


def results(metrics: list[Metric]) -> dict[str, Any]:
    """Each metric's value, read from the device now."""
    return {m.name: m.result() for m in metrics}
