"""Cost functions: ``forward(pred, target) -> 0-d array`` (mean over the batch) and
``backward() -> dC/dpred``.

Targets are arrays on the same backend and device as the predictions. Integer class
labels of shape ``(n,)`` are accepted wherever a one-hot target would be.
``SoftmaxCrossEntropy`` also takes logits with classes on the last axis of any leading
shape, ``(n, ..., k)`` (a language model's ``(n, L, vocab)``), with labels ``(n, ...)``:
the mean is then over every position (and accuracy is per position).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._compat import device, is_integral, namespace
from .backend import check_same_place
from .backends import ops


class Loss:
    """Base class: subclasses compute the cost and keep what ``backward`` needs."""

    def __init__(self) -> None:
        self._grad_parts: Any = None

    def __call__(self, pred: Any, target: Any) -> Any:
        return self.forward(pred, target)

    def _cached(self) -> Any:
        if self._grad_parts is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs a forward() before it")
        return self._grad_parts

    def encode_targets(self, y: Any, n_out: int, dtype: Any) -> Any:
        """Targets as this loss wants them per step; ``fit`` calls it once per run.

        Integer labels become one-hot rows here, so no step builds them again. A label
        outside ``[0, n_out)`` (on a device, where it cannot be checked without a host
        read) becomes a row of NaN, so the loss turns NaN instead of training on zeros.
        """
        xp = namespace(y)
        if (self.one_hot_labels and y.ndim == 1 and n_out > 1
                and xp.isdtype(y.dtype, "integral")):
            onehot, valid = _one_hot(type(self).__name__, xp, y, n_out, dtype)
            return xp.where(valid[:, None], onehot, xp.full_like(onehot, math.nan))
        return y

    one_hot_labels = False

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_labels(who: str, labels: np.ndarray, n_classes: int, outputs: int | None = None
                 ) -> None:
    """Raise for integer labels outside ``[0, n_classes)`` (host arrays only: free there).

    ``outputs``: the model's output width, for the message (a model with one output
    column takes binary labels, so ``fit`` passes ``n_classes = 2`` for it).
    """
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        width = n_classes if outputs is None else outputs
        raise ValueError(
            f"{who}: labels must lie in [0, {n_classes - 1}] for {width} output(s), "
            f"got values from {lo} to {hi}"
        )


def _one_hot(who: str, xp: Any, labels: Any, k: int, dtype: Any) -> tuple[Any, Any]:
    """One-hot rows for integer labels, and a validity mask (labels in [0, k)).

    Labels in host memory are checked at once; on a device the check would stall the
    stream, so invalid rows are returned for the caller to poison with NaN instead.
    """
    if ops(xp).on_host:
        check_labels(who, labels, k)
    classes = xp.arange(k, dtype=labels.dtype, device=device(labels))
    onehot = xp.astype(labels[:, None] == classes[None, :], dtype)
    valid = (labels >= 0) & (labels < k)
    return onehot, valid


def _target_matrix(who: str, pred: Any, target: Any) -> tuple[Any, Any]:
    """The target as a float matrix shaped like ``pred`` (one-hot for integer labels)."""
    xp = namespace(pred)
    check_same_place(who, target, pred, what="target")
    if is_integral(xp, target.dtype):
        if pred.ndim != 2 or target.ndim != 1 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f"{who}: integer labels must have shape ({pred.shape[0]},) for predictions "
                f"of shape {tuple(pred.shape)}, got {tuple(target.shape)}"
            )
        return _one_hot(who, xp, target, pred.shape[1], pred.dtype)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"{who}: target shape {tuple(target.shape)} does not match prediction shape "
            f"{tuple(pred.shape)}"
        )
    return target, None


class QuadraticCost(Loss):
    """``C = 1/(2n) * sum_x ||a(x) - y(x)||^2``; ``dC/da = (a - y) / n``.

    ``pred`` has shape ``(n, k)``; ``target`` the same shape, or integer labels ``(n,)``
    which are one-hot encoded.
    """

    one_hot_labels = True

    def forward(self, pred: Any, target: Any) -> Any:
        xp = namespace(pred)
        y, valid = _target_matrix("QuadraticCost", pred, target)
        n = pred.shape[0]
        diff = pred - y
        self._grad_parts = (diff, n)
        cost = ops(xp).sum_axes(xp, diff * diff, None) / (2 * n)
        if valid is not None:
            cost = cost / xp.astype(xp.all(valid), pred.dtype)  # inf/NaN on bad labels
        return cost

    def backward(self) -> Any:
        diff, n = self._cached()
        return diff / n


class SoftmaxCrossEntropy(Loss):
    """Softmax of the logits followed by cross-entropy, fused.

    ``C = -1/n * sum_x sum_j y_j log softmax(z)_j`` and ``dC/dz = (softmax(z) - y) / n``.
    ``pred`` are logits of shape ``(n, k)``; ``target`` integer labels ``(n,)`` or
    rows of class probabilities ``(n, k)`` that sum to 1 (one-hot). Labels outside
    ``[0, k)`` raise at once on NumPy and make the loss NaN on other devices (checking
    there would stall the device); ``fit`` checks them on the host before training.

    Logits ``(n, ..., k)`` (classes on the last axis, e.g. a language model's
    ``(n, L, vocab)``) with labels ``(n, ...)`` or probabilities ``(n, ..., k)`` are
    read as ``m = n * ...`` rows: ``n`` above becomes ``m``, the mean over every
    position (PyTorch's ``cross_entropy`` on the flattened tokens), and accuracy is
    per position (:mod:`xpnet.train.metrics`).
    """

    one_hot_labels = True

    def forward(self, pred: Any, target: Any) -> Any:
        xp = namespace(pred)
        if pred.ndim != 2:
            return self._forward_positions(xp, pred, target)
        y, valid = _target_matrix("SoftmaxCrossEntropy", pred, target)
        per_example, ctx = ops(xp).softmax_xent(xp, pred, y)
        n = pred.shape[0]
        self._grad_parts = (pred, y, ctx, n, None)
        if valid is not None:
            per_example = xp.where(valid, per_example, xp.full_like(per_example, math.nan))
        return xp.sum(per_example) / n

    def _forward_positions(self, xp: Any, pred: Any, target: Any) -> Any:
        """Logits ``(n, ..., k)``: the 2-D loss on their ``(m, k)`` rows."""
        shape = tuple(pred.shape)
        if pred.ndim < 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (batch, classes) "
                             f"or (batch, ..., classes), got {shape}")
        check_same_place("SoftmaxCrossEntropy", target, pred, what="target")
        rows = math.prod(shape[:-1])
        if is_integral(xp, target.dtype):
            if tuple(target.shape) != shape[:-1]:
                raise ValueError(f"SoftmaxCrossEntropy: integer labels must have shape "
                                 f"{shape[:-1]} for logits of shape {shape}, got "
                                 f"{tuple(target.shape)}")
            target = xp.reshape(target, (rows,))
        elif tuple(target.shape) != shape:
            raise ValueError(f"SoftmaxCrossEntropy: target shape {tuple(target.shape)} does "
                             f"not match logits of shape {shape}")
        else:
            target = xp.reshape(target, (rows, shape[-1]))
        cost = self.forward(xp.reshape(pred, (rows, shape[-1])), target)
        self._grad_parts = (*self._grad_parts[:4], shape)
        return cost

    def backward(self) -> Any:
        z, y, ctx, n, shape = self._cached()
        xp = namespace(z)
        g = ops(xp).softmax_xent_grad(xp, z, y, ctx, n)
        return g if shape is None else xp.reshape(g, shape)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, from logits (default) or from probabilities.

    ``from_logits=True``: sigmoid and cross-entropy fused and stable,
    ``C = mean(max(z, 0) - z y + log(1 + exp(-|z|)))`` over every element and
    ``dC/dz = (sigmoid(z) - y) / size``. ``from_logits=False`` (after a Sigmoid layer):
    ``C = -mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``,
    ``dC/dp = (p - y) / (p (1 - p) size)``. ``target`` has ``pred``'s shape with values in
    [0, 1] (a ``(n,)`` target fits ``(n, 1)`` predictions).
    """

    #: How far probabilities are kept from 0 and 1 (Keras's epsilon).
    clip = 1e-7

    def __init__(self, from_logits: bool = True):
        super().__init__()
        if not isinstance(from_logits, bool):
            raise TypeError(f"BinaryCrossEntropy: from_logits must be True or False, "
                            f"got {from_logits!r}")
        self.from_logits = from_logits

    def forward(self, pred: Any, target: Any) -> Any:
        xp = namespace(pred)
        check_same_place("BinaryCrossEntropy", target, pred, what="target")
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            target = xp.reshape(target, (-1, 1))
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(
                f"BinaryCrossEntropy: target shape {tuple(target.shape)} does not match "
                f"prediction shape {tuple(pred.shape)}"
            )
        y = xp.astype(target, pred.dtype)
        size = math.prod(pred.shape)
        if not self.from_logits:
            p = xp.clip(pred, self.clip, 1.0 - self.clip)
            self._grad_parts = (p, y, size)
            return -xp.sum(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p)) / size
        self._grad_parts = (pred, y, size)
        per = xp.maximum(pred, 0.0) - pred * y + xp.log1p(xp.exp(-xp.abs(pred)))
        return xp.sum(per) / size

    def backward(self) -> Any:
        z, y, size = self._cached()
        if not self.from_logits:  # z is the clipped probability
            return (z - y) / (z * (1.0 - z) * size)
        sig = 0.5 * namespace(z).tanh(0.5 * z) + 0.5
        return (sig - y) / size

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}

    def __repr__(self) -> str:
        return f"BinaryCrossEntropy(from_logits={self.from_logits})"


#: Losses by name, as ``fit(loss="cross_entropy")`` and the ``xpnet`` command take them.
LOSSES = {
    "quadratic": QuadraticCost,
    "mse": QuadraticCost,
    "cross_entropy": SoftmaxCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
}


def loss_named(loss: Any, who: str) -> Loss:
    """``loss`` itself, or for a name in :data:`LOSSES` that loss with its defaults;
    ValueError naming the choices for another name."""
    if not isinstance(loss, str):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"{who}: unknown loss {loss!r}; expected one of "
                         f"{', '.join(LOSSES)}, or a Loss object (xn.SoftmaxCrossEntropy())")
    return LOSSES[loss]()


#: Every loss type a checkpoint may name (``xn.save`` records ``model.loss``): class name
#: -> class. Register a Loss of your own here, with ``get_config()`` returning its
#: constructor arguments, to save models trained with it.
LOSS_TYPES: dict[str, type[Loss]] = {
    cls.__name__: cls for cls in (QuadraticCost, SoftmaxCrossEntropy, BinaryCrossEntropy)}


def loss_config(loss: Any) -> dict[str, Any]:
    """``{"type": class name, "config": constructor arguments}`` for a loss checkpoints
    can rebuild (a class in :data:`LOSS_TYPES`); TypeError for any other, naming the way
    out."""
    name = type(loss).__name__
    if LOSS_TYPES.get(name) is not type(loss):
        raise TypeError(f"the loss {loss!r} cannot be saved: checkpoints rebuild only the "
                        f"classes in xpnet.losses.LOSS_TYPES ({', '.join(LOSS_TYPES)}); "
                        f"register your class there (with get_config() returning its "
                        f"constructor arguments), or set model.loss = None before saving")
    return {"type": name, "config": loss.get_config()}
