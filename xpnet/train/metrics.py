"""Metrics: quantities summed on the device batch by batch and read on the host only to
report them. ``fit`` and ``evaluate`` use the same ones.

A :class:`Metric` keeps its running sums as device arrays (:meth:`Metric.arrays`), updated
by :meth:`Metric.update` with a batch's predictions and targets and read once by
:meth:`Metric.result`. Counts are device arrays too, so an update is the same whether it
runs eagerly or inside a compiled step (where the sums cross the call like the
parameters do). The loss itself is the metric :class:`Mean` of each batch's mean loss
weighted by its examples.

``fit(metrics=...)`` and ``evaluate(metrics=...)`` take names or objects::

    xn.evaluate(model, x, y, metrics=["accuracy", "top_k_accuracy", "mae",
                                      "confusion_matrix"])
    xn.fit(..., metrics=[xn.metrics.TopKAccuracy(k=3)])            # "top_3_accuracy"

Accuracy is judged as the loss defines classes: the arg-max of ``(n, k)`` scores against
integer labels (or one-hot rows), per position for ``(n, ..., k)`` logits; for one output
column, above 0.5 (above 0 for ``BinaryCrossEntropy`` on logits) against the label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import _args
from .._compat import device, is_integral, namespace
from ..backend import to_numpy
from ..losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy


class Metric:
    """A quantity summed over batches on the device and read once at the end.

    Subclasses name their device sums in ``sums`` (attribute names, None until the first
    update or :meth:`start`), define :meth:`update` (device arrays in, no host read) and
    :meth:`result`. ``name`` is the metric's key in ``fit``'s logs and ``evaluate``'s
    result.
    """

    name = "metric"
    sums: tuple[str, ...] = ()

    def prepare(self, loss: Loss | None, outputs: int, one_hot: bool = False) -> None:
        """Start afresh for predictions from a model with ``outputs`` columns, scored with
        ``loss`` (None: none); ``one_hot``: integer labels were made one-hot rows."""
        self.reset()

    def reset(self) -> None:
        for s in self.sums:
            setattr(self, s, None)

    def start(self, pred: Any, target: Any) -> None:
        """Make the sums zeros on the device (what a compiled step needs before its first
        call), by one update with a batch of zero rows shaped like ``pred``."""
        self.reset()
        self.update(pred[0:0, ...], target[0:0, ...])

    def update(self, pred: Any, target: Any) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def applies(self, pred: Any, target: Any) -> bool:
        """Whether this metric can judge such predictions and targets (``fit`` leaves out
        an accuracy that cannot, as for regression)."""
        return True

    def arrays(self) -> list[Any]:
        """The device sums, in ``sums`` order (after :meth:`start` or an update)."""
        return [getattr(self, s) for s in self.sums]

    def bind(self, arrays: list[Any]) -> None:
        for s, a in zip(self.sums, arrays, strict=True):
            setattr(self, s, a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _count_dtype(xp: Any, like: Any) -> Any:
    """The library's default integer dtype (int64; int32 on JAX without x64)."""
    return xp.asarray(0, device=device(like)).dtype


def _add(total: Any, part: Any) -> Any:
    return part if total is None else total + part


def _read(a: Any) -> float:
    return float(to_numpy(a)) if a is not None else math.nan


def _ratio(part: Any, whole: Any) -> float:
    """``part / whole`` read from the device (NaN before any update)."""
    if part is None:
        return math.nan
    return _read(part) / max(_read(whole), 1.0)


class Mean(Metric):
    """The mean of a per-batch value weighted by the batch's examples: ``fit`` and
    ``evaluate`` report the loss this way (``update(cost, examples)``)."""

    sums = ("total", "count")

    def __init__(self, name: str = "loss"):
        self.name = name
        self.reset()

    def start(self, like: Any, target: Any = None) -> None:
        xp = namespace(like)
        self.total = xp.zeros((), dtype=like.dtype, device=device(like))
        self.count = xp.zeros((), dtype=_count_dtype(xp, like), device=device(like))

    def update(self, value: Any, examples: int) -> None:
        self.total = _add(self.total, value * examples)
        self.count = _add(self.count, examples) if self.count is not None else \
            namespace(value).asarray(examples, device=device(value))

    def result(self) -> float:
        return _ratio(self.total, self.count)


def correct(pred: Any, target: Any, *, soft_classes: bool, cut: float,
            float_binary: bool) -> Any:
    """How many predictions are right, a 0-d integer device array, or None where the
    targets are not classes (regression).

    ``(n, k)`` scores (``(n, ..., k)``: per position): the arg-max against integer labels,
    or against the arg-max of class rows when ``soft_classes``. One output column: above
    ``cut`` against integer labels above 0 (and float labels above 0.5 when
    ``float_binary``).
    """
    xp = namespace(pred)
    if pred.ndim >= 2 and pred.shape[-1] > 1:
        if is_integral(xp, target.dtype):
            right = xp.argmax(pred, axis=-1) == target
        elif soft_classes and tuple(target.shape) == tuple(pred.shape):
            right = xp.argmax(pred, axis=-1) == xp.argmax(target, axis=-1)
        else:
            return None
    elif is_integral(xp, target.dtype) or float_binary:
        y = xp.reshape(target, (-1,))
        truth = y > 0 if is_integral(xp, y.dtype) else y > 0.5
        right = (xp.reshape(pred, (-1,)) > cut) == truth
    else:
        return None
    return xp.sum(xp.astype(right, _count_dtype(xp, pred)))


def positions(pred: Any) -> int:
    """Predictions judged per example: one, or for logits ``(n, ..., k)`` with classes on
    the last axis, one per position (the product of the middle axes)."""
    return math.prod(pred.shape[1:-1]) if pred.ndim > 2 and pred.shape[-1] > 1 else 1


def threshold(loss: Loss | None) -> float:
    """Where one output column turns from class 0 to 1: 0 for logits, else 0.5."""
    return 0.0 if isinstance(loss, BinaryCrossEntropy) and loss.from_logits else 0.5


class Accuracy(Metric):
    """The fraction of predictions that are right (see :func:`correct`): the arg-max
    against integer labels or one-hot rows, per position for ``(n, L, k)`` logits, or one
    output column against 0.5 (0 for ``BinaryCrossEntropy`` on logits)."""

    sums = ("hits", "judged")

    def __init__(self, name: str = "accuracy"):
        self.name = name
        self.soft_classes, self.cut, self.float_binary = False, 0.5, False
        self.reset()

    def prepare(self, loss: Loss | None, outputs: int, one_hot: bool = False) -> None:
        self.soft_classes = one_hot or isinstance(loss, SoftmaxCrossEntropy)
        self.cut = threshold(loss)
        self.float_binary = isinstance(loss, BinaryCrossEntropy)
        self.reset()

    def correct(self, pred: Any, target: Any) -> Any:
        """How many of the batch's predictions are right, as this accuracy judges them
        (:func:`correct`): a 0-d integer device array, or None for targets that are not
        classes."""
        return correct(pred, target, soft_classes=self.soft_classes, cut=self.cut,
                       float_binary=self.float_binary)

    def applies(self, pred: Any, target: Any) -> bool:
        return self.correct(pred, target) is not None

    def update(self, pred: Any, target: Any) -> None:
        hits = self.correct(pred, target)
        if hits is None:
            raise ValueError(f"{self.name}: needs class targets (integer labels, or 0/1 for "
                             f"one output), got {target.dtype} targets of shape "
                             f"{tuple(target.shape)} for predictions {tuple(pred.shape)}")
        xp = namespace(pred)
        self.hits = _add(self.hits, hits)
        judged = xp.asarray(int(pred.shape[0]) * positions(pred), dtype=hits.dtype,
                            device=device(pred))
        self.judged = _add(self.judged, judged)

    def result(self) -> float:
        return _ratio(self.hits, self.judged)


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


class TopKAccuracy(Metric):
    """The fraction of examples whose true class is among the ``k`` highest scores.

    Predictions ``(n, k_classes)`` (or ``(n, ..., k_classes)``, per position); targets
    integer labels or one-hot rows. A class tied with the ``k``-th score counts as in
    the top ``k`` (Keras's ``in_top_k``); a NaN true-class score never does. Equals
    ``sklearn.metrics.top_k_accuracy_score`` where scores have no ties. Default name
    ``"top_{k}_accuracy"``.
    """

    sums = ("hits", "judged")

    def __init__(self, k: int = 5, name: str | None = None):
        self.k = _args.integer(k, "k", "TopKAccuracy", minimum=1)
        self.name = name or f"top_{self.k}_accuracy"
        self.reset()

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
        self.judged = _add(self.judged, xp.asarray(math.prod(labels.shape), dtype=count,
                                                   device=device(pred)))

    def result(self) -> float:
        return _ratio(self.hits, self.judged)


class MeanAbsoluteError(Metric):
    """``mean(|pred - target|)`` over every element (sklearn's ``mean_absolute_error``
    averaged over outputs). ``target`` has the predictions' shape (a ``(n,)`` target
    fits ``(n, 1)`` predictions)."""

    sums = ("total", "count")

    def __init__(self, name: str = "mae"):
        self.name = name
        self.reset()

    def update(self, pred: Any, target: Any) -> None:
        xp = namespace(pred)
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            target = xp.reshape(target, (-1, 1))
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"{self.name}: targets must have the predictions' shape "
                             f"{tuple(pred.shape)}, got {tuple(target.shape)}")
        diff = xp.abs(pred - xp.astype(target, pred.dtype))
        self.total = _add(self.total, xp.sum(diff))
        self.count = _add(self.count, xp.asarray(math.prod(pred.shape), device=device(pred),
                                                 dtype=_count_dtype(xp, pred)))

    def result(self) -> float:
        return _ratio(self.total, self.count)


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class) pairs: a ``(k, k)`` NumPy int64 array,
    rows the true class and columns the predicted one, as
    ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(k))``.

    The predicted class is the arg-max of ``(n, k)`` scores (per position for
    ``(n, ..., k)``); for one output column it is 1 above 0.5 (above 0 for
    ``BinaryCrossEntropy`` on logits), else 0. ``num_classes`` defaults to the model's
    output width (2 for one column). Counted on the device with a matmul of one-hot rows.
    In ``fit``'s logs it is the matrix of the epoch (not shown on the progress line).
    """

    sums = ("counts",)

    def __init__(self, num_classes: int | None = None, name: str = "confusion_matrix"):
        self.num_classes = (None if num_classes is None else
                            _args.integer(num_classes, "num_classes", "ConfusionMatrix",
                                          minimum=2))
        self.name = name
        self.cut = 0.5
        self.k = self.num_classes
        self.reset()

    def prepare(self, loss: Loss | None, outputs: int, one_hot: bool = False) -> None:
        self.k = self.num_classes or max(outputs, 2)
        self.cut = threshold(loss)
        self.reset()

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
            outputs: int, who: str = "evaluate", one_hot: bool = False) -> list[Metric]:
    """Metric objects for ``metrics`` (names from :data:`METRICS` or Metric objects),
    each prepared for this run; ``[]`` for None."""
    if metrics is None:
        return []
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
        m.prepare(loss, outputs, one_hot)
        out.append(m)
    names = [m.name for m in out]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(f"{who}: metric names must differ from each other and from 'loss', "
                         f"got {names}")
    return out


class MetricSet:
    """The loss (a :class:`Mean`, when there is a loss) and the chosen metrics of one pass
    over the data: what ``fit``'s step and ``evaluate`` add each batch to.

    ``update`` runs on the device (eagerly or inside a compiled step); :meth:`arrays` and
    :meth:`bind` carry the sums across a compiled call; :meth:`results` reads them.
    """

    def __init__(self, metrics: list[Metric], loss: bool = True):
        self.loss = Mean("loss") if loss else None
        self.metrics = list(metrics)
        self._all: list[Metric] = ([self.loss] if self.loss else []) + self.metrics

    @property
    def names(self) -> list[str]:
        return [m.name for m in self._all]

    def reset(self) -> None:
        for m in self._all:
            m.reset()

    def start(self, pred: Any, target: Any) -> None:
        """Zeros on the device for every sum (before a compiled step's first call)."""
        for m in self._all:
            m.start(pred, target)

    def update(self, pred: Any, target: Any, cost: Any, examples: int) -> None:
        """Add one batch: its predictions, targets and mean loss ``cost`` (None: none)."""
        if self.loss is not None and cost is not None:
            self.loss.update(cost, examples)
        for m in self.metrics:
            m.update(pred, target)

    def arrays(self) -> list[Any]:
        return [a for m in self._all for a in m.arrays()]

    def bind(self, arrays: list[Any]) -> None:
        i = 0
        for m in self._all:
            k = len(m.sums)
            m.bind(list(arrays[i:i + k]))
            i += k

    @property
    def started(self) -> bool:
        return all(a is not None for a in self.arrays())

    def results(self) -> dict[str, Any]:
        """Every metric's value, read from the device now (``{}`` before any update)."""
        return {m.name: m.result() for m in self._all if m.arrays()[0] is not None}


def results(metrics: list[Metric]) -> dict[str, Any]:
    """Each metric's value, read from the device now."""
    return {m.name: m.result() for m in metrics}
