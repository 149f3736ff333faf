"""fit(), evaluate() and predict().

Training runs where the model's parameters live. The data set, and the validation
set, move to that device once; each epoch is shuffled there and cut into
mini-batches. Running sums of the loss and of correct predictions stay on the device
(``Metrics``) and are read back to the host only to report them: at the end of each
epoch, and a few times per epoch for the progress bar.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import data as data_mod
from .. import distributed as distributed_mod
from .. import random
from ..backend import Backend, dtype_name
from ..layers.base import Layer
from ..losses import Loss, check_labels
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
        Host (NumPy) arrays or arrays already on the model's backend.
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
        that layers keep (BatchNorm) come from each rank's share, then rank 0's.
    """
    _check_counts("fit", x, y)
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, "
                         f"{epochs}")
    be = model.backend
    dtype = _param_dtype(model, be)
    x_dev = data_mod.on_backend(be, x, dtype, "fit (x)")
    n_out = _out_width(model, x_dev)
    _check_host_labels("fit", y, n_out)
    y_dev = data_mod.on_backend(be, y, dtype, "fit (y)")
    y_enc = loss.encode_targets(y_dev, n_out, be.dtype(dtype))
    val = None
    if validation_data is not None:
        xv, yv = validation_data
        _check_counts("fit (validation_data)", xv, yv)
        _check_host_labels("fit (validation_data)", yv, n_out)
        val = (data_mod.on_backend(be, xv, dtype, "fit (validation_data x)"),
               data_mod.on_backend(be, yv, dtype, "fit (validation_data y)"))
    strategy = distributed_mod.resolve(distributed)
    if seed is None:
        seed = int(random.current().host.integers(2**31))
    seed = strategy.start(model, seed)  # every rank: rank 0's parameters and seed
    model._fit_loss = loss  # evaluate() reports this loss by default
    steps = math.ceil(int(x_dev.shape[0]) / batch_size)
    run = _Run(model, loss, optimizer, x_dev, y_enc, y_enc is not y_dev, strategy,
               random.RandomStream(seed), batch_size, shuffle, "accuracy" in metrics,
               Progress(progress if strategy.rank == 0 else False, epochs, steps),
               max(1, steps // max(1, reports_per_epoch)))
    callbacks = list(callbacks or [])
    for cb in callbacks:
        cb.rank = strategy.rank
        cb.on_train_begin(model, optimizer)
    history = History()
    try:
        for epoch in range(initial_epoch, epochs):
            start = time.perf_counter()
            logs = run.epoch(epoch)
            if val is not None:
                scores = evaluate(model, *val, loss=loss, batch_size=max(batch_size, 1024))
                logs.update({"val_" + k: v for k, v in scores.items()})
            elapsed = time.perf_counter() - start
            logs["time"] = elapsed
            logs["samples_per_sec"] = run.n / elapsed if elapsed > 0 else float("inf")
            history.append(epoch, logs)
            run.progress.end(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if any(cb.stop_training for cb in callbacks):
                break
        for cb in callbacks:
            cb.on_train_end()
        strategy.finish(model)
    except Exception as error:
        strategy.fail(error)  # one process: raised as it is; several: every rank ends
    return history


@dataclass
class _Run:
    """What stays fixed over a ``fit``'s epochs; :meth:`epoch` trains one of them."""

    model: Layer
    loss: Loss
    optimizer: Optimizer
    x: Any
    y: Any
    one_hot: bool
    strategy: distributed_mod.Strategy
    stream: random.RandomStream
    batch_size: int
    shuffle: bool
    count_hits: bool
    progress: Progress
    report_every: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the data in shuffled mini-batches; the epoch's mean metrics."""
        self.progress.start(epoch)
        seed = self.stream.seed
        self.stream.restart(seed, epoch)  # dropout masks, like the order, per epoch
        order = data_mod.epoch_order(self.n, seed, epoch) if self.shuffle else None
        xs, ys = data_mod.shuffled(self.model.backend, [self.x, self.y], order)
        sums = Metrics(self.loss, self.count_hits, self.one_hot)
        with self.stream.active():
            for step, (size, batch) in enumerate(data_mod.batches([xs, ys], self.batch_size),
                                                 1):
                self._step(sums, *self.strategy.shard(batch, size), size)
                # the one host read inside the loop, at the reporting interval
                report = (self.progress.bar is not None and step % self.report_every == 0
                          and sums.seen > 0)
                self.progress.step(1, sums.means() if report else None)
        loss_sum, hits = sums.read()
        total_loss, total_hits = self.strategy.totals([loss_sum or 0.0, hits or 0.0])
        logs = {"loss": total_loss / self.n}
        if hits is not None:
            logs["accuracy"] = total_hits / self.n
        return logs

    def _step(self, sums: Metrics, xb: Any, yb: Any, size: int) -> None:
        """Forward, loss, backward and one optimizer step on this rank's ``xb``."""
        local = int(xb.shape[0])
        self.optimizer.zero_grad()
        if local:
            pred = self.model.forward(xb, train=True)
            cost = self.loss.forward(pred, yb)
            self.model.backward_params(self.loss.backward())  # no gradient for the data
        self.strategy.reduce_gradients(self.optimizer.params, local, size)
        self.optimizer.step()
        if local:
            sums.add(pred, yb, cost, local)


def evaluate(model: Layer, x: Any, y: Any, *, loss: Loss | None = None,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``, computed on its device.

    Returns ``{"loss": ..., "accuracy": ...}``: ``loss`` when a loss is given or was
    used in ``fit``; ``accuracy`` for classification targets. ``x`` and ``y`` may be
    host arrays (uploaded once here) or arrays already on the model's device.
    """
    _check_counts("evaluate", x, y)
    be = model.backend
    dtype = _param_dtype(model, be)
    loss = loss if loss is not None else getattr(model, "_fit_loss", None)
    x_dev = data_mod.on_backend(be, x, dtype, "evaluate (x)")
    y_dev = data_mod.on_backend(be, y, dtype, "evaluate (y)")
    sums = Metrics(loss)
    for size, (xb, yb) in data_mod.batches([x_dev, y_dev], batch_size):
        pred = model.forward(xb, train=False)
        sums.add(pred, yb, loss.forward(pred, yb) if loss is not None else None, size)
    return sums.means()


def predict(model: Layer, x: Any, *, batch_size: int = 1024) -> Any:
    """The model's outputs for ``x`` (inference mode), as an array on its device."""
    be = model.backend
    x_dev = data_mod.on_backend(be, x, _param_dtype(model, be), "predict (x)")
    outs = [model.forward(xb, train=False) for _, (xb,) in data_mod.batches([x_dev], batch_size)]
    return outs[0] if len(outs) == 1 else be.xp.concat(outs, axis=0)


# -- checks -------------------------------------------------------------------------------
def _param_dtype(model: Layer, be: Backend) -> str:
    state = model.named_state()
    return dtype_name(be.xp, state[0][1].value.dtype) if state else "float32"


def _count(a: Any) -> int:
    """Examples in ``a`` (array-api-strict arrays have no ``len``)."""
    return int(a.shape[0]) if hasattr(a, "shape") else len(a)


def _check_counts(who: str, x: Any, y: Any) -> None:
    if _count(x) != _count(y):
        raise ValueError(f"{who}: x has {_count(x)} examples but y has {_count(y)}")


def _check_host_labels(who: str, y: Any, n_out: int) -> None:
    """Labels still on the host are checked before training: free, and the error names
    the bad values (on a device the loss turns NaN instead)."""
    if isinstance(y, np.ndarray):
        check_labels(who, y, n_out)


def _out_width(model: Layer, x: Any) -> int:
    y = model.forward(x[0:1, ...], train=False)
    return int(y.shape[1]) if y.ndim == 2 else 1
