"""evaluate() and predict(): the model in inference mode over data placed once
(:func:`xpnet.data.prepare`), with the loss and metrics summed on the device and read at
the end (``fit``'s validation runs the same :func:`run_metrics`)."""

from __future__ import annotations

import warnings
import weakref
from typing import Any

from .. import _args
from .. import data as data_mod
from ..backend import on_model_device, to_numpy
from ..layers import Layer, Sigmoid, Softmax
from ..losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy, loss_named
from . import metrics as metrics_mod
from .metrics import MetricSet


@on_model_device
def evaluate(model: Layer, x: Any, y: Any = None, *, loss: Loss | str | None = None,
             batch_size: int = 1024, metrics: Any = None) -> dict[str, Any]:
    """Mean loss and metrics of ``model`` on ``(x, y)``, computed on its device.

    Returns ``{"loss": ..., "accuracy": ...}``: ``loss`` when a loss is given or the
    model has one (``model.loss``: the loss ``fit`` trained it with, also after
    ``xn.load``); ``accuracy`` for classification targets. ``x`` and ``y`` may be
    host arrays (uploaded once here) or arrays already on the model's device; a Graph
    with several inputs takes a list of arrays as ``x``. ``x`` may also be an iterable
    of ``(x, y)`` batches (a generator, a DataLoader), with no ``y``, as ``fit`` takes.
    ``loss`` may be a name of ``xpnet.losses.LOSSES`` (``"cross_entropy"``).

    ``metrics``: names (``"accuracy"``, ``"top_k_accuracy"`` (k=5), ``"mae"``,
    ``"confusion_matrix"``) or :class:`xpnet.metrics.Metric` objects
    (``xn.metrics.TopKAccuracy(k=3)``): then the result has ``loss`` (when known) and
    exactly those, each summed on the device batch by batch and read once at the end;
    a confusion matrix is a ``(k, k)`` NumPy int64 array (rows: true class).
    """
    _args.integer(batch_size, "batch_size", "evaluate", minimum=1)
    loss = loss_named(loss, "evaluate") if loss is not None else model.loss
    source = data_mod.prepare(model, x, y, who="evaluate", batch_size=batch_size)
    warn_if_squashed(model, loss)
    if metrics is None:  # the default: accuracy where the targets are classes
        chosen = [m for m in metrics_mod.resolve(["accuracy"], loss, source.outputs)
                  if m.applies(source.first, source.first_target())]
    else:
        chosen = metrics_mod.resolve(metrics, loss, source.outputs)
    return run_metrics(model, source, loss, chosen)


def run_metrics(model: Layer, source: data_mod.Source, loss: Loss | None,
                metrics: list[metrics_mod.Metric], reduce: Any = None) -> dict[str, Any]:
    """The loss (when given) and ``metrics`` of ``model`` over ``source``; ``reduce``
    sums the device sums over the ranks of a data-parallel run before they are read."""
    sums = MetricSet(metrics, loss=loss is not None)
    for m in metrics:
        m.reset()
    with source.batches() as batches:
        for size, (*xb, yb) in batches:
            pred = model.forward(source.x(xb), train=False)
            sums.update(pred, yb, loss.forward(pred, yb) if loss is not None else None, size)
    if reduce is not None and sums.started:
        sums.bind(reduce(sums.arrays()))
    return sums.results()


@on_model_device
def predict(model: Layer, x: Any, *, batch_size: int = 1024, numpy: bool = False) -> Any:
    """The model's outputs for ``x`` (inference mode), ``(n, ...)``.

    Returned as an array of the model's library on its device (a NumPy array, a CuPy
    array, a torch Tensor, a JAX Array...), so it can feed more device work without a
    copy; ``numpy=True`` returns a host NumPy array instead (one copy from the device,
    at the end), as ``xn.to_numpy(predict(...))`` does.

    ``x``: host or device arrays, a list of them for a Graph with several inputs; or an
    iterable (a generator, a DataLoader) of ``x``, ``(x,)`` or ``(x, y)`` batches."""
    _args.integer(batch_size, "batch_size", "predict", minimum=1)
    if not isinstance(numpy, bool):
        raise TypeError(f"predict: numpy must be True or False, got {numpy!r}")
    source = data_mod.prepare(model, x, who="predict", batch_size=batch_size, targets=False)
    with source.batches() as batches:
        outs = [model.forward(source.x(xb), train=False) for _, xb in batches]
    out = outs[0] if len(outs) == 1 else source.be.xp.concat(outs, axis=0)
    return to_numpy(out) if numpy else out


#: Models already warned about (weakly held: a model's entry goes with it).
_warned: weakref.WeakSet[Layer] = weakref.WeakSet()


def warn_if_squashed(model: Layer, loss: Loss | None) -> None:
    """Warn once per model when a loss that takes logits follows a layer that already
    turned them into probabilities (the loss and the accuracy would both be wrong)."""
    takes_logits = isinstance(loss, SoftmaxCrossEntropy) or (
        isinstance(loss, BinaryCrossEntropy) and loss.from_logits)
    last = _last_layer(model)
    if not takes_logits or not isinstance(last, (Sigmoid, Softmax)) or model in _warned:
        return
    _warned.add(model)
    fix = ("pass BinaryCrossEntropy(from_logits=False)" if isinstance(loss, BinaryCrossEntropy)
           else "end the model with its logits")
    warnings.warn(f"{type(loss).__name__} takes logits but the model ends in "
                  f"{type(last).__name__}, which outputs probabilities: drop that layer or "
                  f"{fix}", UserWarning, stacklevel=4)


def _last_layer(model: Layer) -> Layer:
    """The layer whose output is the model's output."""
    output = getattr(model, "output_layer", None)
    if output is not None:
        return _last_layer(output)
    children = model.children()
    return _last_layer(children[-1]) if children else model
