"""fit(), evaluate() and predict().

Training runs where the model's parameters live. The data set, and the validation
set, move to that device once; each epoch is shuffled there and cut into
mini-batches. Running sums of the loss and of correct predictions stay on the device
(``Metrics``) and are read back to the host only to report them: at the end of each
epoch, and a few times per epoch for the progress bar.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _args, random
from .. import data as data_mod
from .. import distributed as distributed_mod
from .._compat import namespace
from ..backend import Backend, dtype_name
from ..layers import Embedding, Layer, Sigmoid, Softmax, layer_config
from ..losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy, check_labels
from ..optim import Optimizer
from .callbacks import Callback
from .history import History
from .metrics import Metrics
from .progress import Progress


def fit(model: Layer, x: Any, y: Any, *, loss: Loss, optimizer: Optimizer, epochs: int = 1,
        batch_size: int = 32, validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True, progress: Any = None, callbacks: list[Callback] | None = None,
        seed: int | None = None, initial_epoch: int = 0, reports_per_epoch: int = 10,
        metrics: tuple[str, ...] = ("accuracy",),
        distributed: bool | Any = False) -> History:
    """Train ``model`` with mini-batch gradient descent and return its History.

    Parameters
    ----------
    x, y : arrays, ``(n, ...)`` and ``(n,)`` integer labels or ``(n, k)`` targets
        Host (NumPy) arrays, lists, or arrays already on the model's backend. Inputs
        become the model's float dtype, except integer token ids for a model that
        starts with an Embedding. A Graph with several inputs takes a list of arrays
        as ``x``. A model with logits ``(n, ..., k)`` (a language model's
        ``(n, L, vocab)``) takes labels ``(n, ...)``; its accuracy is per position.
    loss, optimizer : Loss and Optimizer
    epochs, batch_size : int
        Train epochs ``initial_epoch .. epochs - 1`` in batches of ``batch_size``
        (the last batch of an epoch may be smaller).
    validation_data : (x_val, y_val), optional
        Uploaded once, evaluated after each epoch: ``val_loss``, ``val_accuracy``.
    shuffle : bool
        Reorder the examples each epoch, by a permutation seeded with ``(seed, epoch)``.
    progress : None, bool, "bar" or "lines"
        None: a tqdm bar on a terminal, else one line per epoch. False: silent.
    callbacks : list of Callback, e.g. EarlyStopping, ModelCheckpoint
    seed : int, optional
        Seeds shuffling and dropout (a ``RandomStream`` keyed ``(seed, epoch)`` each
        epoch); drawn from the ``xn.seed`` stream when not given. Pass the same seed
        and ``initial_epoch`` to resume a run exactly.
    reports_per_epoch : int
        How often per epoch the progress bar reads the running loss from the device.
    metrics : tuple of str
        ``("accuracy",)`` (default) also counts correct predictions; ``()`` only the loss.
    distributed : bool or Communicator
        ``True``: data-parallel over the MPI ranks of this job (``mpiexec -n R``).
        ``batch_size`` stays the global batch: each rank takes its share of every batch
        and gradients are summed across ranks before each step, so the steps are those
        of one process. Only rank 0 shows progress and writes checkpoints. Statistics
        that layers keep (BatchNorm) come from each rank's share, then rank 0's. The
        ranks check that they agree (model, data size, batch size, epochs) first, and an
        error on any rank ends every rank.

    Raises
    ------
    FloatingPointError
        When the loss read at a report is NaN or infinite; the weights are then those
        of the last epoch whose loss was finite (or the starting ones).
    """
    strategy = distributed_mod.resolve(distributed)
    try:  # an error anywhere, on any rank, ends every rank: none may wait forever
        return _fit(model, x, y, loss, optimizer, epochs, batch_size, validation_data, shuffle,
                    progress, list(callbacks or []), seed, initial_epoch, reports_per_epoch,
                    metrics, strategy)
    except Exception as error:
        strategy.fail(error)  # one process: raised as it is
        raise  # a strategy that could not end the job must not look like a finished fit


def _fit(model, x, y, loss, optimizer, epochs, batch_size, validation_data, shuffle, progress,
         callbacks, seed, initial_epoch, reports_per_epoch, metrics, strategy) -> History:
    _check_arguments(epochs, batch_size, seed, initial_epoch, reports_per_epoch)
    be = model.backend
    dtype = _param_dtype(model, be)
    inputs = _inputs_on(model, be, dtype, x, "fit")
    n = _check_counts("fit", inputs, y)
    first = model.forward(_first_rows(model, inputs), train=False)
    n_out = _width(first)
    y_dev = _labels_on(be, dtype, y, n_out, "fit")
    y_enc = loss.encode_targets(y_dev, n_out, be.dtype(dtype))
    one_hot = y_enc is not y_dev
    val = None
    if validation_data is not None:
        val = _validation_on(model, be, dtype, validation_data, inputs, n_out)
    _warn_if_squashed(model, loss)
    count_hits = "accuracy" in metrics and loss.correct(
        first, y_enc[0:1, ...], one_hot=one_hot) is not None
    logged = {"loss", "time", "samples_per_sec"} | ({"accuracy"} if count_hits else set())
    logged |= {"val_" + k for k in logged & {"loss", "accuracy"}} if val is not None else set()
    for cb in callbacks:
        cb.check(logged)
    if seed is None:
        seed = int(random.current().host.integers(2**31))
    strategy.agree({"model": json.dumps(layer_config(model), sort_keys=True),
                    "examples": n, "input_shapes": [list(a.shape[1:]) for a in inputs],
                    "dtype": dtype, "batch_size": batch_size, "epochs": epochs,
                    "initial_epoch": initial_epoch})
    seed = strategy.start(model, seed)  # every rank: rank 0's parameters and seed
    model._fit_loss = loss  # evaluate() reports this loss by default
    steps = math.ceil(n / batch_size)
    run = _Run(model, loss, optimizer, inputs, y_enc, one_hot, strategy,
               random.RandomStream(seed), batch_size, shuffle, count_hits,
               Progress(progress if strategy.rank == 0 else False, epochs, steps),
               max(1, steps // max(1, reports_per_epoch)), loss.positions(first))
    for cb in callbacks:
        cb.rank = strategy.rank
        cb.on_train_begin(model, optimizer)
    history = History()
    for epoch in range(initial_epoch, epochs):
        start = time.perf_counter()
        logs = run.epoch(epoch)
        if val is not None:
            scores = evaluate(model, *val, loss=loss, batch_size=max(batch_size, 1024))
            logs.update({"val_" + k: v for k, v in scores.items()})
        elapsed = time.perf_counter() - start
        logs["time"] = elapsed
        logs["samples_per_sec"] = n / elapsed if elapsed > 0 else float("inf")
        history.append(epoch, logs)
        run.progress.end(epoch, logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if any(cb.stop_training for cb in callbacks):
            break
    for cb in callbacks:
        cb.on_train_end()
    strategy.finish(model)
    return history


@dataclass
class _Run:
    """What stays fixed over a ``fit``'s epochs; :meth:`epoch` trains one of them."""

    model: Layer
    loss: Loss
    optimizer: Optimizer
    inputs: list[Any]
    y: Any
    one_hot: bool
    strategy: distributed_mod.Strategy
    stream: random.RandomStream
    batch_size: int
    shuffle: bool
    count_hits: bool
    progress: Progress
    report_every: int
    positions: int = 1  # predictions judged per example: accuracy is hits / (n * positions)

    def __post_init__(self) -> None:
        self.n = int(self.y.shape[0])
        self.multi = self.model.multi_input
        self._finite = _snapshot(self.model)  # what a non-finite loss restores

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the data in shuffled mini-batches; the epoch's mean metrics."""
        self.progress.start(epoch)
        seed = self.stream.seed
        self.stream.restart(seed, epoch)  # dropout masks, like the order, per epoch
        order = data_mod.epoch_order(self.n, seed, epoch) if self.shuffle else None
        arrays = data_mod.shuffled(self.model.backend, [*self.inputs, self.y], order)
        sums = Metrics(self.loss, self.count_hits, self.one_hot)
        step = 0
        with self.stream.active():
            for step, (size, batch) in enumerate(data_mod.batches(arrays, self.batch_size),
                                                 1):
                self._step(sums, self.strategy.shard(batch, size), size)
                # the one host read inside the loop, at the reporting interval
                if (self.progress.bar is not None and step % self.report_every == 0
                        and sums.seen > 0):
                    means = sums.means()
                    self._check_finite(means.get("loss"), epoch, step)
                    self.progress.step(1, means)
                else:
                    self.progress.step(1, None)
        loss_sum, hits = sums.read()
        total_loss, total_hits = self.strategy.totals([loss_sum or 0.0, hits or 0.0])
        logs = {"loss": total_loss / self.n}
        self._check_finite(logs["loss"], epoch, step)
        if hits is not None:
            logs["accuracy"] = total_hits / (self.n * self.positions)
        self._finite = _snapshot(self.model)
        return logs

    def _step(self, sums: Metrics, batch: list[Any], size: int) -> None:
        """Forward, loss, backward and one optimizer step on this rank's share."""
        *xb, yb = batch
        local = int(yb.shape[0])
        self.optimizer.zero_grad()
        if local:
            pred = self.model.forward(xb if self.multi else xb[0], train=True)
            cost = self.loss.forward(pred, yb)
            self.model.backward_params(self.loss.backward())  # no gradient for the data
        self.strategy.reduce_gradients(self.optimizer.params, local, size)
        self.optimizer.step()
        if local:
            sums.add(pred, yb, cost, local)

    def _check_finite(self, loss: float | None, epoch: int, step: int) -> None:
        if loss is None or math.isfinite(loss):
            return
        _restore(self.model, self._finite)
        raise FloatingPointError(
            f"fit: the loss became {loss} in epoch {epoch + 1}, by step {step}; training "
            f"stopped and the weights are those from before that epoch. Lower the learning "
            f"rate, check the data for NaN or inf, or clip gradients"
        )


def _snapshot(model: Layer) -> list[Any]:
    """Device copies of every array of the model (no host read)."""
    return [namespace(p.value).asarray(p.value, copy=True) for _, p in model.named_state()]


def _restore(model: Layer, values: list[Any]) -> None:
    for (_, p), v in zip(model.named_state(), values, strict=True):
        p.value = v


def evaluate(model: Layer, x: Any, y: Any, *, loss: Loss | None = None,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``, computed on its device.

    Returns ``{"loss": ..., "accuracy": ...}``: ``loss`` when a loss is given or was
    used in ``fit``; ``accuracy`` for classification targets. ``x`` and ``y`` may be
    host arrays (uploaded once here) or arrays already on the model's device; a Graph
    with several inputs takes a list of arrays as ``x``.
    """
    _args.integer(batch_size, "batch_size", "evaluate", minimum=1)
    be = model.backend
    dtype = _param_dtype(model, be)
    loss = loss if loss is not None else getattr(model, "_fit_loss", None)
    inputs = _inputs_on(model, be, dtype, x, "evaluate")
    _check_counts("evaluate", inputs, y)
    n_out = _out_width(model, inputs)
    y_dev = _labels_on(be, dtype, y, n_out, "evaluate")
    _warn_if_squashed(model, loss)
    sums = Metrics(loss)
    multi = model.multi_input
    for size, (*xb, yb) in data_mod.batches([*inputs, y_dev], batch_size):
        pred = model.forward(xb if multi else xb[0], train=False)
        sums.add(pred, yb, loss.forward(pred, yb) if loss is not None else None, size)
    return sums.means()


def predict(model: Layer, x: Any, *, batch_size: int = 1024) -> Any:
    """The model's outputs for ``x`` (inference mode), as an array on its device.

    ``x``: host or device arrays, a list of them for a Graph with several inputs."""
    _args.integer(batch_size, "batch_size", "predict", minimum=1)
    be = model.backend
    inputs = _inputs_on(model, be, _param_dtype(model, be), x, "predict")
    _check_counts("predict", inputs, None)
    multi = model.multi_input
    outs = [model.forward(xb if multi else xb[0], train=False)
            for _, xb in data_mod.batches(inputs, batch_size)]
    return outs[0] if len(outs) == 1 else be.xp.concat(outs, axis=0)


# -- checks -------------------------------------------------------------------------------
def _check_arguments(epochs: Any, batch_size: Any, seed: Any, initial_epoch: Any,
                     reports_per_epoch: Any) -> None:
    _args.integer(epochs, "epochs", "fit", minimum=0)
    _args.integer(batch_size, "batch_size", "fit", minimum=1)
    if seed is not None:
        _args.integer(seed, "seed", "fit", minimum=0)
    _args.integer(initial_epoch, "initial_epoch", "fit", minimum=0)
    _args.integer(reports_per_epoch, "reports_per_epoch", "fit", minimum=1)


def _param_dtype(model: Layer, be: Backend) -> str:
    state = model.named_state()
    return dtype_name(be.xp, state[0][1].value.dtype) if state else "float32"


def _count(a: Any) -> int:
    """Examples in ``a`` (array-api-strict arrays have no ``len``)."""
    return int(a.shape[0]) if hasattr(a, "shape") else len(a)


def _inputs_on(model: Layer, be: Backend, dtype: str, x: Any, who: str) -> list[Any]:
    """The model's input arrays on its device, as a list (one entry per Graph input)."""
    wanted = getattr(model, "input_count", 1)
    if model.multi_input:
        if not isinstance(x, (list, tuple)) or len(x) != wanted:
            got = f"{len(x)} arrays" if isinstance(x, (list, tuple)) else type(x).__name__
            raise ValueError(f"{who}: {model.label} has {wanted} inputs; give x as a list "
                             f"of {wanted} arrays, got {got}")
        return [data_mod.on_backend(be, a, dtype, f"{who} (x[{i}])") for i, a in enumerate(x)]
    # token ids for an Embedding stay integers (kept as labels are)
    return [data_mod.on_backend(be, x, dtype, f"{who} (x)", labels=_takes_ids(model))]


def _takes_ids(model: Layer) -> bool:
    """Whether the model's first layer looks its input up by integer id (Embedding)."""
    first = next((layer for layer in model.layers() if not layer.children()), None)
    return isinstance(first, Embedding)


def _check_counts(who: str, inputs: list[Any], y: Any) -> int:
    """The number of examples, the same in every input and in ``y``; at least one."""
    xs = [_count(a) for a in inputs]
    counts = xs + ([] if y is None else [_count(y)])
    if len(set(counts)) != 1:
        x_text = f"x has {xs[0]}" if len(xs) == 1 else f"the inputs x[i] have {xs}"
        y_text = f" but y has {counts[-1]}" if y is not None else ""
        raise ValueError(f"{who}: {x_text} examples{y_text}; they must agree")
    if counts[0] == 0:
        raise ValueError(f"{who}: the data has no examples (0 rows); give at least one")
    return counts[0]


def _first_rows(model: Layer, inputs: list[Any]) -> Any:
    xs = [a[0:1, ...] for a in inputs]
    return xs if model.multi_input else xs[0]


def _out_width(model: Layer, inputs: list[Any]) -> int:
    return _width(model.forward(_first_rows(model, inputs), train=False))


def _width(y: Any) -> int:
    """The model's output width: classes on the last axis, for ``(n, k)`` outputs and
    for per-position logits ``(n, ..., k)``; 1 for ``(n,)``."""
    return int(y.shape[-1]) if y.ndim >= 2 else 1


def _labels_on(be: Backend, dtype: str, y: Any, n_out: int, who: str) -> Any:
    """``y`` on the device. Integer labels still on the host are checked there first:
    free, and the error names the bad values (on a device the loss turns NaN instead)."""
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    if isinstance(y, np.ndarray):
        check_labels(who, y, max(n_out, 2), outputs=n_out)  # one output: labels 0 and 1
    return data_mod.on_backend(be, y, dtype, f"{who} (y)", labels=True)


def _validation_on(model: Layer, be: Backend, dtype: str, validation_data: Any,
                   inputs: list[Any], n_out: int) -> tuple[Any, Any]:
    """``validation_data`` checked against the training data and moved to the device
    once, before the first step."""
    who = "fit (validation_data)"
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        kind = type(validation_data).__name__
        size = f" of {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else ""
        raise ValueError(f"{who}: expected a pair (x_val, y_val), got a {kind}{size}")
    xv, yv = validation_data
    val_inputs = _inputs_on(model, be, dtype, xv, who)
    _check_counts(who, val_inputs, yv)
    for i, (a, b) in enumerate(zip(val_inputs, inputs, strict=True)):
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            raise ValueError(f"{who}: x_val{f'[{i}]' if len(inputs) > 1 else ''} has examples "
                             f"of shape {tuple(a.shape[1:])}, the training data "
                             f"{tuple(b.shape[1:])}")
    y_dev = _labels_on(be, dtype, yv, n_out, who)
    return (val_inputs if model.multi_input else val_inputs[0]), y_dev


_warned: set[int] = set()


def _warn_if_squashed(model: Layer, loss: Loss | None) -> None:
    """Warn once per model when a loss that takes logits follows a layer that already
    turned them into probabilities (the loss and the accuracy would both be wrong)."""
    takes_logits = isinstance(loss, SoftmaxCrossEntropy) or (
        isinstance(loss, BinaryCrossEntropy) and loss.from_logits)
    last = _last_layer(model)
    if not takes_logits or not isinstance(last, (Sigmoid, Softmax)) or id(model) in _warned:
        return
    _warned.add(id(model))
    fix = ("pass BinaryCrossEntropy(from_logits=False)" if isinstance(loss, BinaryCrossEntropy)
           else "end the model with its logits")
    warnings.warn(f"{type(loss).__name__} takes logits but the model ends in "
                  f"{type(last).__name__}, which outputs probabilities: drop that layer or "
                  f"{fix}", UserWarning, stacklevel=3)


def _last_layer(model: Layer) -> Layer:
    """The layer whose output is the model's output."""
    output = getattr(model, "output_layer", None)
    if output is not None:
        return _last_layer(output)
    children = model.children()
    return _last_layer(children[-1]) if children else model
