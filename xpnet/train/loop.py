"""fit(), evaluate() and predict().

Training runs where the model's parameters live. The data (:func:`xpnet.data.prepare`)
moves to that device once; each epoch is shuffled there and cut into mini-batches. Each
batch goes through the one step body (:class:`xpnet.train.step.Step`), eagerly or
compiled (:mod:`xpnet.train.compiled`): ``fit`` holds what data and how many epochs, the
step how a batch trains. The loss and metric sums stay on the device and are read back
to the host only at the reporting interval (``reports_per_epoch``) and at each epoch's
end, whether or not a progress bar shows them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import _args, backends, random
from .. import data as data_mod
from .. import distributed as distributed_mod
from ..backend import on_model_device
from ..layers import Layer, layer_config
from ..losses import Loss, loss_named
from ..optim import Optimizer, optimizer_named
from . import metrics as metrics_mod
from .callbacks import Callback, batch_end, batch_hooks, train_begin, train_end
from .compiled import TrainStep
from .history import History
from .inference import run_metrics, warn_if_squashed
from .metrics import MetricSet
from .precision import MixedPrecision
from .precision import resolve as resolve_precision
from .progress import Progress
from .step import Step
from .transforms import AllReduce


@dataclass(frozen=True)
class StepOptions:
    """How each batch trains: ``fit``'s step keywords, kept together."""

    compile: bool = False
    precision: str | int | MixedPrecision = "32"
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    steps_per_execution: int = 1
    accumulate_grad_batches: int = 1


@on_model_device
def fit(model: Layer, x: Any, y: Any = None, *, loss: Loss | str,
        optimizer: Optimizer | str, epochs: int = 1,
        batch_size: int = 32, validation_data: tuple[Any, Any] | None = None,
        validation_split: float | None = None, shuffle: bool | str = True,
        progress: Any = None, callbacks: list[Callback] | None = None,
        seed: int | None = None, initial_epoch: int = 0, reports_per_epoch: int = 10,
        metrics: Any = ("accuracy",), steps_per_epoch: int | None = None,
        distributed: bool | Any = False, compile: bool = False,
        precision: str | int | MixedPrecision = "32", clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None, steps_per_execution: int = 1,
        accumulate_grad_batches: int = 1, threads: int | None = None) -> History:
    """Train ``model`` with mini-batch gradient descent and return its History.

    Parameters
    ----------
    x, y : arrays, ``(n, ...)`` and ``(n,)`` integer labels or ``(n, k)`` targets
        Host (NumPy) arrays, lists, or arrays already on the model's backend. Inputs
        become the model's float dtype, except integer token ids for a model that
        starts with an Embedding. A Graph with several inputs takes a list of arrays
        as ``x``. A model with logits ``(n, ..., k)`` (a language model's
        ``(n, L, vocab)``) takes labels ``(n, ...)``; its accuracy is per position.
        ``np.memmap`` arrays, and other objects with ``len`` and slice indexing (h5py,
        zarr), are streamed: a background thread reads a few batches ahead, never the
        whole (:mod:`xpnet.data`). ``x`` may also be an iterable of ``(x, y)`` batches
        (a generator, a PyTorch DataLoader) with no ``y``: its batches are used as they
        come (``batch_size`` and ``shuffle`` do not apply).
    loss, optimizer : Loss and Optimizer, or their names
        ``fit`` records the loss as ``model.loss``: ``evaluate`` reports it by default,
        and ``xn.save`` saves it. Names as Keras takes them: a loss of
        ``xpnet.losses.LOSSES`` (``"cross_entropy"``, ``"mse"``, ``"bce"``...) and an
        optimizer of ``xpnet.optim.OPTIMIZER_NAMES`` (``"adam"``, ``"adamw"``, ``"sgd"``,
        ``"momentum"``), made with their defaults over the model's parameters: a new
        optimizer each call, so pass an Optimizer to keep its state across ``fit`` calls.
    epochs, batch_size : int
        Train epochs ``initial_epoch .. epochs - 1`` in batches of ``batch_size``
        (the last batch of an epoch may be smaller).
    validation_data : (x_val, y_val), optional
        Uploaded once, evaluated after each epoch: ``val_loss`` and ``val_`` each metric.
    validation_split : float in (0, 1), optional
        Hold out this fraction of ``x, y`` as the validation data instead (Keras's
        option): drawn at random, per class for integer labels or one-hot rows, seeded
        by ``seed`` (0 when not given), so the same seed holds out the same rows
        (:func:`xpnet.data.holdout`). Arrays in memory only, not with
        ``validation_data``.
    shuffle : bool or "blocks"
        Reorder the examples each epoch, by a permutation seeded with ``(seed, epoch)``;
        ``"blocks"`` shuffles blocks of ``batch_size / 4`` consecutive rows instead
        (long reads from streamed data). The same seed gives the same batches in
        memory and streamed.
    progress : None, bool, "bar" or "lines"
        None: a tqdm bar on a terminal, else one line per epoch. False: silent.
    callbacks : list of Callback, e.g. EarlyStopping, ModelCheckpoint
    seed : int, optional
        Seeds shuffling and dropout (a ``RandomStream`` keyed ``(seed, epoch)`` each
        epoch); drawn from the ``xn.seed`` stream when not given. Pass the same seed
        and ``initial_epoch`` to resume a run exactly.
    reports_per_epoch : int
        How often per epoch the running loss and metrics are read from the device: to
        check that the loss is finite and to show them. The same with or without a
        progress bar, so a NaN is caught at the same step either way.
    metrics : names or Metric objects
        What ``evaluate(metrics=)`` takes (``"accuracy"``, ``"top_k_accuracy"``,
        ``"mae"``, ``xn.metrics.TopKAccuracy(3)``...), summed on the device with the
        loss and logged per epoch (and for the validation data, ``val_`` + name). The
        default ``("accuracy",)`` counts correct predictions where the targets are
        classes, and is left out for regression; ``()`` logs only the loss.
    steps_per_epoch : int, optional
        Batches per epoch for ``x`` an iterable of batches: needed for a generator (it
        goes on where it stopped); a re-iterable (a DataLoader) starts again each epoch,
        for ``len(x)`` batches by default.
    distributed : bool or Communicator
        ``True``: data-parallel over the MPI ranks of this job (``mpiexec -n R``).
        ``batch_size`` stays the global batch: each rank takes its share of every batch
        and gradients are summed across ranks before each step, so the steps are those
        of one process. Only rank 0 shows progress and writes checkpoints. Statistics
        that layers keep (BatchNorm) come from each rank's share, then rank 0's. The
        ranks check that they agree (model, data size, batch size, epochs) first, and an
        error on any rank ends every rank.
    compile : bool
        Run each step as one compiled call (:func:`xpnet.compile_step`): ``jax.jit`` on
        JAX, ``torch.compile`` on PyTorch, a CUDA graph on CuPy; NumPy and
        array-api-strict run eagerly and say so. The steps taken are the eager ones. A
        compiled step is kept for the next ``fit`` with the same optimizer, loss and
        step settings while the model stays where it is, so calling ``fit`` an epoch at
        a time compiles once.
    precision : "32", "bf16-mixed", "fp16-mixed" ("16-mixed"), or MixedPrecision
        Lightning's names. The mixed ones run forward and backward in bfloat16 or
        float16 on float32 master parameters, with the loss, softmax and normalisation
        statistics in float32; fp16 scales the loss dynamically and skips steps with
        inf/NaN gradients (:mod:`xpnet.train.precision`). Pass
        ``xn.MixedPrecision("fp16-mixed", growth_interval=...)`` to set the scaling.
        Evaluation runs in float32. TypeError where the backend has no such dtype.
    clip_grad_norm, clip_grad_value : float, optional
        Clip the gradients after backward (and after the distributed sum and fp16's
        unscaling), before each optimizer step: :func:`xpnet.clip_grad_norm` (total
        2-norm at most this, as ``torch.nn.utils.clip_grad_norm_``) and/or
        :func:`xpnet.clip_grad_value` (elements into ``[-v, v]``; value first when both
        are given). On the device, no host read.
    steps_per_execution : int
        Run this many consecutive steps (batches of one shape) as one call, as Keras's
        option: with ``compile=True`` on JAX one compiled call, the Python between them
        paid once; elsewhere the steps run one by one. The steps are the same either way.
        Callbacks' ``on_batch_end`` runs for each batch after its call (a stop takes
        effect at the call's end).
    accumulate_grad_batches : int
        Sum the gradients of this many consecutive batches into one optimizer step
        (Lightning's name): the step a batch this many times larger takes (each batch's
        gradient weighted by its examples; the epoch's last group may be shorter).
        Layers that keep statistics (BatchNorm) see each batch on its own, as in
        Lightning and PyTorch, so they are not those of the larger batch.
    threads : int, optional
        At most this many CPU threads while the epochs run (BLAS and OpenMP pools
        through threadpoolctl, and torch's ``set_num_threads``), put back as they were
        when fit ends, by an error too. None (the default) leaves them as they are: a
        program that calls ``fit`` may have set them itself. Small models train faster
        on 1 thread, as ``xpnet train`` does by default: their matrix products are too
        small to share. JAX fixes its CPU threads when it starts; there ``fit`` warns
        and XLA_FLAGS decides.

    Notes
    -----
    Callbacks that define ``on_batch_end`` are called after every batch (with the batch
    loss on the device, read only if they ask); none is, when none does.

    Raises
    ------
    FloatingPointError
        When the loss read at a report is NaN or infinite; the weights are then those
        of the last epoch whose loss was finite (or the starting ones).
        ``TerminateOnNaN`` reads every batch's loss and stops at the first bad one.
    """
    strategy = distributed_mod.resolve(distributed, model.backend.name)
    options = StepOptions(compile, precision, clip_grad_norm, clip_grad_value,
                          steps_per_execution, accumulate_grad_batches)
    try:  # an error anywhere, on any rank, ends every rank: none may wait forever
        _check_arguments(epochs, batch_size, seed, initial_epoch, reports_per_epoch)
        loss = loss_named(loss, "fit")
        optimizer = optimizer_named(optimizer, model, "fit")
        if validation_split is not None:
            if validation_data is not None:
                raise ValueError("fit: give validation_data or validation_split, not both")
            x, y, validation_data = data_mod.holdout(
                x, y, validation_split, 0 if seed is None else seed, model.multi_input)
        source = data_mod.prepare(model, x, y, who="fit", batch_size=batch_size,
                                  shuffle=shuffle, steps_per_epoch=steps_per_epoch,
                                  precision=precision)
        return _fit(model, source, loss, optimizer, options, strategy, metrics,
                    _validation(model, source, validation_data), list(callbacks or []),
                    _Schedule(epochs, initial_epoch, seed, reports_per_epoch, progress,
                              threads))
    except BaseException as error:
        strategy.fail(error)  # one process: raised as it is
        raise  # a strategy that could not end the job must not look like a finished fit


@dataclass
class _Schedule:
    """fit's epochs, seed and reporting, as given."""

    epochs: int
    initial_epoch: int
    seed: int | None
    reports_per_epoch: int
    progress: Any
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None:
            _args.integer(self.threads, "threads", "fit", minimum=1)


def _fit(model: Layer, source: data_mod.Source, loss: Loss, optimizer: Optimizer,
         options: StepOptions, strategy: distributed_mod.Strategy, metrics: Any,
         val: data_mod.Source | None, callbacks: list[Callback], plan: _Schedule) -> History:
    source.encode(loss)
    warn_if_squashed(model, loss)
    chosen = _fit_metrics(metrics, loss, source)
    driver = _driver(model, loss, optimizer, options, strategy, chosen)
    logged = {"loss", "time", "samples_per_sec", *driver.metrics.names}
    logged |= {"val_" + k for k in driver.metrics.names} if val is not None else set()
    for cb in callbacks:
        if hasattr(cb, "check"):  # a Keras-style class of its own may have none
            cb.check(logged)
    seed = plan.seed if plan.seed is not None else int(random.current().host.integers(2**31))
    strategy.agree({"model": json.dumps(layer_config(model), sort_keys=True,  # a callable
                                        default=lambda f: getattr(f, "__qualname__", "?")),  # init
                    **source.facts(), "batch_size": source.batch_size,
                    "epochs": plan.epochs, "initial_epoch": plan.initial_epoch,
                    "validation_data": val is not None, "metrics": driver.metrics.names})
    seed = strategy.start(model, seed)  # every rank: rank 0's parameters and seed
    model.loss = loss  # evaluate() reports this loss by default; save() records it
    run = _Run(model, source, driver, strategy, random.RandomStream(seed), callbacks,
               Progress(plan.progress if strategy.rank == 0 else False, plan.epochs,
                        source.steps),
               max(1, source.steps // plan.reports_per_epoch), options.steps_per_execution,
               val)
    with _cpu_threads(model, plan.threads):
        return run.train(plan.initial_epoch, plan.epochs)


#: Compiled steps kept for the next fit with the same optimizer (weakly: they go with it).
_compiled: weakref.WeakKeyDictionary[Optimizer, dict[tuple, TrainStep]] = \
    weakref.WeakKeyDictionary()


def _driver(model: Layer, loss: Loss, optimizer: Optimizer, options: StepOptions,
            strategy: distributed_mod.Strategy, metrics: list[metrics_mod.Metric]
            ) -> TrainStep:
    """The step each batch runs: eager, or compiled (reused from an earlier fit with the
    same optimizer, loss, settings and model placement)."""
    _args.integer(options.steps_per_execution, "steps_per_execution", "fit", minimum=1)
    mixed = resolve_precision(options.precision)
    if mixed is not None:
        mixed.check(model)  # the backend has the dtype: before any work
    comm = getattr(strategy, "comm", None)

    def make() -> TrainStep:
        step = Step(model, loss, optimizer, clip_grad_norm=options.clip_grad_norm,
                    clip_grad_value=options.clip_grad_value, precision=mixed,
                    accumulate=options.accumulate_grad_batches,
                    reduce=AllReduce(comm) if strategy.size > 1 else None,
                    metrics=MetricSet(metrics), who="fit")
        return TrainStep(step, compiler=None if options.compile else False)

    if not options.compile:
        return make()
    key = (loss, mixed, options, tuple(metrics), strategy.size,
           tuple((type(v), str(v.dtype), str(getattr(v, "device", ""))) for v in model.arrays()))
    kept = _compiled.setdefault(optimizer, {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _fit_metrics(metrics: Any, loss: Loss, source: data_mod.Source) -> list[metrics_mod.Metric]:
    """fit's metrics, prepared; an accuracy the targets cannot give (regression) is left
    out, as Keras leaves it out."""
    chosen = metrics_mod.resolve(metrics, loss, source.outputs, "fit", source.one_hot)
    first_y = source.first_target()
    return [m for m in chosen
            if not isinstance(m, metrics_mod.Accuracy) or m.applies(source.first, first_y)]


def _validation(model: Layer, source: data_mod.Source, validation_data: Any
                ) -> data_mod.Source | None:
    """``validation_data`` checked against the training data and moved to the device
    once, before the first step."""
    if validation_data is None:
        return None
    who = "fit (validation_data)"
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        kind = type(validation_data).__name__
        size = f" of {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else ""
        raise ValueError(f"{who}: expected a pair (x_val, y_val), got a {kind}{size}")
    xv, yv = validation_data
    return data_mod.prepare(model, xv, yv, who=who, batch_size=max(source.batch_size, 1024),
                            like=source)


class _Run:
    """One ``fit``: the epochs, the reporting, the callbacks; :meth:`epoch` trains one."""

    def __init__(self, model: Layer, source: data_mod.Source, driver: TrainStep,
                 strategy: distributed_mod.Strategy, stream: random.RandomStream,
                 callbacks: list[Callback], progress: Progress, report_every: int,
                 group: int, val: data_mod.Source | None):
        self.model, self.source, self.driver, self.strategy = model, source, driver, strategy
        self.stream, self.callbacks, self.progress = stream, callbacks, progress
        self.report_every, self.group, self.val = report_every, group, val
        self.hooks = batch_hooks(callbacks)
        self.metrics = driver.metrics
        self._finite = model.arrays(copy=True)  # what a non-finite loss restores

    def train(self, initial_epoch: int, epochs: int) -> History:
        for cb in self.callbacks:
            train_begin(cb, self.model, self.driver.optimizer, self.strategy.rank)
        # every rank joins a per-batch stop vote if any rank has a per-batch callback, so
        # callbacks on one rank cannot put the ranks' collective calls out of step
        self.vote_per_batch = self.strategy.any(bool(self.hooks))
        history = History()
        logs: dict[str, Any] = {}
        for epoch in range(initial_epoch, epochs):
            start = time.perf_counter()
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_begin"):
                    cb.on_epoch_begin(epoch, {})
            logs = self.epoch(epoch)
            if self.val is not None:  # summed over the ranks' validation data
                scores = run_metrics(self.model, self.val, self.driver.loss,
                                     [copy.copy(m) for m in self.metrics.metrics],
                                     reduce=self.strategy.reduce_sums)
                logs.update({"val_" + k: v for k, v in scores.items()})
            elapsed = time.perf_counter() - start
            logs["time"] = elapsed
            logs["samples_per_sec"] = self.source.n / elapsed if elapsed > 0 else float("inf")
            history.append(epoch, logs)
            self.progress.end(epoch, logs)
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(epoch, logs)
            # decisions that change training are the same on every rank: rank 0's rate,
            # and a stop on any rank stops all
            self.strategy.share_rate(self.driver.optimizer)
            if self.strategy.any(any(getattr(cb, "stop_training", False)
                                     for cb in self.callbacks)):
                break
        for cb in self.callbacks:
            train_end(cb, logs)
        self.strategy.finish(self.model)
        return history

    def epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the data in shuffled mini-batches; the epoch's mean metrics."""
        self.progress.start(epoch)
        seed = self.stream.seed
        self.stream.restart(seed, epoch)  # dropout masks, like the order, per epoch
        self.metrics.start(self.source.first, self.source.first_target())
        done = 0
        with self.stream.active(), self.source.batches(epoch, seed) as batches:
            for group in _groups(batches, self.group, self.strategy):
                costs = self.driver.run_many(group)
                stop = self._batches_end(epoch, done, group, costs)
                done += len(group)
                self._report(epoch, done, len(group))
                if stop:
                    break  # a callback stopped training (TerminateOnNaN...)
        self.metrics.bind(self.strategy.reduce_sums(self.metrics.arrays()))
        logs = self.metrics.results()
        self._check_finite(logs.get("loss"), epoch, done)
        self._finite = self.model.arrays(copy=True)
        return logs

    def _batches_end(self, epoch: int, done: int, group: list[tuple], costs: list[Any]
                     ) -> bool:
        """Call the per-batch callbacks for each batch of a group; whether one stopped
        training (on any rank)."""
        if not self.vote_per_batch:
            return False
        stop = False
        for i, ((_, y, size, _), cost) in enumerate(zip(group, costs, strict=True)):
            local = int(y.shape[0])
            if self.hooks:
                stop = batch_end(self.hooks, done + i, cost if local else None, size,
                                 epoch) or stop
        return self.strategy.any(stop)

    def _report(self, epoch: int, done: int, n: int) -> None:
        """The one host read inside the loop, at the reporting interval: the running
        loss is checked and shown (the same steps with or without a bar)."""
        if done // self.report_every > (done - n) // self.report_every:
            means = self.metrics.results()
            self._check_finite(means.get("loss"), epoch, done)
            self.progress.step(n, {k: v for k, v in means.items() if isinstance(v, float)})
        else:
            self.progress.step(n, None)

    def _check_finite(self, loss: float | None, epoch: int, step: int) -> None:
        if loss is None or math.isfinite(loss):
            return
        self.model.bind(self._finite)
        raise FloatingPointError(
            f"fit: the loss became {loss} in epoch {epoch + 1}, by step {step}; training "
            f"stopped and the weights are those from before that epoch. Lower the learning "
            f"rate, check the data for NaN or inf, or clip gradients"
        )


def _groups(batches: Iterator[tuple[int, list[Any]]], size: int,
            strategy: distributed_mod.Strategy) -> Iterator[list[tuple]]:
    """The epoch's batches as ``(x, y, examples, final)`` for this rank, in groups of up
    to ``size`` of one shape; ``final`` marks the epoch's last batch (an accumulation
    group ends there). One batch is read ahead to know which is last."""
    group: list[tuple] = []
    ahead = next(batches, None)
    while ahead is not None:
        examples, batch = ahead
        ahead = next(batches, None)
        *xs, y = strategy.shard(batch, examples)
        item = (xs if len(xs) > 1 else xs[0], y, examples, True if ahead is None else None)
        if group and tuple(y.shape) != tuple(group[0][1].shape):
            yield group  # another shape (the last, smaller batch): its own call
            group = []
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _cpu_threads(model: Layer, threads: Any) -> contextlib.AbstractContextManager:
    """fit's ``threads``: every library's CPU pool limited for the fit, or left alone."""
    if threads is None:
        return contextlib.nullcontext()
    note = backends.adapter(model.backend.name).threads_note()
    if note is not None:
        warnings.warn(note, stacklevel=5)  # the caller of fit
    return backends.threads(threads)


# -- checks -------------------------------------------------------------------------------
def _check_arguments(epochs: Any, batch_size: Any, seed: Any, initial_epoch: Any,
                     reports_per_epoch: Any) -> None:
    _args.integer(epochs, "epochs", "fit", minimum=0)
    _args.integer(batch_size, "batch_size", "fit", minimum=1)
    if seed is not None:
        _args.integer(seed, "seed", "fit", minimum=0)
    _args.integer(initial_epoch, "initial_epoch", "fit", minimum=0)
    _args.integer(reports_per_epoch, "reports_per_epoch", "fit", minimum=1)
