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
from ..clip import clip_grad_norm, clip_grad_value
from ..compile import TrainStep
from ..layers import Embedding, Layer, Sigmoid, Softmax, layer_config
from ..losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy, check_labels
from ..optim import Optimizer
from . import metrics as metrics_mod
from .callbacks import Callback, batch_end, batch_hooks
from .history import History
from .metrics import Metrics
from .precision import MixedPrecision
from .precision import resolve as resolve_precision
from .progress import Progress


def fit(model: Layer, x: Any, y: Any = None, *, loss: Loss, optimizer: Optimizer, epochs: int = 1,
        batch_size: int = 32, validation_data: tuple[Any, Any] | None = None,
        shuffle: bool | str = True, progress: Any = None, callbacks: list[Callback] | None = None,
        seed: int | None = None, initial_epoch: int = 0, reports_per_epoch: int = 10,
        metrics: tuple[str, ...] = ("accuracy",), steps_per_epoch: int | None = None,
        distributed: bool | Any = False, compile: bool = False,
        precision: str | int | MixedPrecision = "32", clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None, steps_per_execution: int = 1) -> History:
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
    loss, optimizer : Loss and Optimizer
    epochs, batch_size : int
        Train epochs ``initial_epoch .. epochs - 1`` in batches of ``batch_size``
        (the last batch of an epoch may be smaller).
    validation_data : (x_val, y_val), optional
        Uploaded once, evaluated after each epoch: ``val_loss``, ``val_accuracy``.
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
        How often per epoch the progress bar reads the running loss from the device.
    metrics : tuple of str
        ``("accuracy",)`` (default) also counts correct predictions; ``()`` only the loss.
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
        array-api-strict run eagerly and say so. The steps taken are the eager ones.
    precision : "32", "bf16-mixed", "fp16-mixed" ("16-mixed"), or MixedPrecision
        Lightning's names. The mixed ones run forward and backward in bfloat16 or
        float16 on float32 master parameters, with the loss, softmax and normalisation
        statistics in float32; fp16 scales the loss dynamically and skips steps with
        inf/NaN gradients (:mod:`xpnet.train.precision`). Pass
        ``xn.MixedPrecision("fp16-mixed", growth_interval=...)`` to set the scaling.
        Evaluation runs in float32. TypeError where the backend has no such dtype.
    clip_grad_norm, clip_grad_value : float, optional
        Clip the gradients after backward (and after the distributed sum), before each
        optimizer step: :func:`xpnet.clip_grad_norm` (total 2-norm at most this, as
        ``torch.nn.utils.clip_grad_norm_``) and/or :func:`xpnet.clip_grad_value`
        (elements into ``[-v, v]``; value first when both are given). On the device,
        no host read. ``compile=True`` takes ``clip_grad_norm`` only.
    steps_per_execution : int
        With ``compile=True``, run this many consecutive steps (batches of one shape) as
        one compiled call, as Keras's option: the same steps, with the Python between
        them paid once per call (JAX; elsewhere the steps run one by one). Callbacks
        with ``on_batch_end`` see every batch, so with one of them steps run singly.

    Callbacks that define ``on_batch_end`` are called after every optimizer step (with
    the batch loss on the device, read only if they ask); none is, when none does.

    Raises
    ------
    FloatingPointError
        When the loss read at a report is NaN or infinite; the weights are then those
        of the last epoch whose loss was finite (or the starting ones). Without a
        progress bar the first read is at the epoch's end; ``TerminateOnNaN`` reads
        every batch's loss and stops at the first bad one.
    """
    strategy = distributed_mod.resolve(distributed)
    try:  # an error anywhere, on any rank, ends every rank: none may wait forever
        x, y = data_mod.fit_data(x, y, shuffle, steps_per_epoch)  # checked; iterables read
        return _fit(model, x, y, loss, optimizer, epochs, batch_size, validation_data, shuffle,
                    progress, list(callbacks or []), seed, initial_epoch, reports_per_epoch,
                    metrics, strategy, compile=compile, precision=precision,
                    clip=(clip_grad_norm, clip_grad_value),
                    steps_per_execution=steps_per_execution)
    except Exception as error:
        strategy.fail(error)  # one process: raised as it is
        raise  # a strategy that could not end the job must not look like a finished fit


def _fit(model, x, y, loss, optimizer, epochs, batch_size, validation_data, shuffle, progress,
         callbacks, seed, initial_epoch, reports_per_epoch, metrics, strategy,
         compile=False, precision="32", clip=(None, None), steps_per_execution=1) -> History:
    _check_arguments(epochs, batch_size, seed, initial_epoch, reports_per_epoch)
    _args.integer(steps_per_execution, "steps_per_execution", "fit", minimum=1)
    if steps_per_execution > 1 and not compile:
        raise ValueError(f"fit: steps_per_execution={steps_per_execution} groups compiled "
                         f"steps; pass compile=True with it")
    clip = _check_clip(clip, compile)
    mixed = resolve_precision(precision)
    if mixed is not None:
        if compile:
            raise ValueError(f"fit: compile=True does not combine with precision="
                             f"{mixed.precision!r} yet; pass one of them")
        mixed.check(model)  # the backend has the dtype: before any work
    be = model.backend
    dtype = _param_dtype(model, be)
    inputs = _inputs_on(model, be, dtype, x, "fit")
    n = _check_counts("fit", inputs, y)
    first = model.forward(_first_rows(model, inputs), train=False)
    n_out = _width(first)
    y_dev = _labels_on(be, dtype, y, n_out, "fit")
    y_enc = data_mod.encode_targets(loss, y_dev, n_out, be.dtype(dtype))
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
    steps = data_mod.steps(y_enc, n, batch_size)
    run = _Run(model, loss, optimizer, inputs, y_enc, one_hot, strategy,
               random.RandomStream(seed), batch_size, shuffle, count_hits,
               Progress(progress if strategy.rank == 0 else False, epochs, steps),
               max(1, steps // max(1, reports_per_epoch)), loss.positions(first))
    if compile:
        if strategy.size > 1:
            raise ValueError("fit: compile=True does not combine with distributed training "
                             "yet (gradients are summed across ranks between backward and "
                             "the update); pass compile=False")
        run.compiled = _train_step(model, loss, optimizer, count_hits, one_hot, clip[0])
        run.steps_per_execution = steps_per_execution
    run.precision = mixed
    run.clip, run.hooks = clip, batch_hooks(callbacks)
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
    compiled: TrainStep | None = None  # fit(compile=True): the whole step in one call
    precision: MixedPrecision | None = None  # fit(precision="bf16-mixed"...): see precision.py
    clip: tuple[float | None, float | None] = (None, None)  # fit(clip_grad_norm/_value=)
    hooks: tuple[Callback, ...] | list[Callback] = ()  # callbacks with on_batch_end
    steps_per_execution: int = 1  # fit(steps_per_execution=): compiled steps per call

    def __post_init__(self) -> None:
        self.n = int(self.y.shape[0])
        self.multi = self.model.multi_input
        self._finite = _snapshot(self.model)  # what a non-finite loss restores

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the data in shuffled mini-batches; the epoch's mean metrics."""
        self.progress.start(epoch)
        seed = self.stream.seed
        self.stream.restart(seed, epoch)  # dropout masks, like the order, per epoch
        batches = data_mod.epoch_batches(self.model.backend, [*self.inputs, self.y],
                                         self.batch_size, self.shuffle, seed, epoch)
        sums = Metrics(self.loss, self.count_hits, self.one_hot)
        step = 0
        with self.stream.active(), batches:  # leaving it ends a reader thread
            grouped = self.steps_per_execution > 1 and not self.hooks
            done = self._grouped_steps(sums, batches, epoch) if grouped else 0
            step = done  # the loop below takes what is left: nothing after grouping
            for step, (size, batch) in enumerate(batches, done + 1):
                cost = self._step(sums, self.strategy.shard(batch, size), size)
                if self.hooks and self._batch_end(epoch, step - 1, cost, size):
                    break  # a callback stopped training (TerminateOnNaN...)
                # the one host read inside the loop, at the reporting interval
                if (self.progress.bar is not None and step % self.report_every == 0
                        and sums.seen > 0):
                    means = sums.means()
                    self._check_finite(means.get("loss"), epoch, step)
                    self.progress.step(1, means)
                else:
                    self.progress.step(1, None)
        self.n = batches.seen  # an iterable's epoch may be shorter than estimated
        loss_sum, hits = sums.read()
        total_loss, total_hits = self.strategy.totals([loss_sum or 0.0, hits or 0.0])
        logs = {"loss": total_loss / self.n}
        self._check_finite(logs["loss"], epoch, step)
        if hits is not None:
            logs["accuracy"] = total_hits / (self.n * self.positions)
        self._finite = _snapshot(self.model)
        return logs

    def _grouped_steps(self, sums: Metrics, batches: Any, epoch: int) -> int:
        """The epoch's batches, ``steps_per_execution`` of one shape per compiled call
        (:meth:`TrainStep.run_many`); the number of steps taken."""
        step, group = 0, []

        def flush() -> None:
            nonlocal step
            totals = sums.totals if sums.totals is not None else self.compiled.zero_totals()
            xs = [b[:-1] if self.multi else b[0] for _, b in group]
            totals = self.compiled.run_many(xs, [b[-1] for _, b in group], totals)
            sums.set_totals(*totals, sum(n for n, _ in group), self.positions)
            first, step = step + 1, step + len(group)
            # a report falls in this group: the one host read, as in the single-step loop
            if (self.progress.bar is not None and sums.seen > 0
                    and step // self.report_every > (first - 1) // self.report_every):
                means = sums.means()
                self._check_finite(means.get("loss"), epoch, step)
                self.progress.step(len(group), means)
            else:
                self.progress.step(len(group), None)
            group.clear()

        for size, batch in batches:
            if group and int(batch[-1].shape[0]) != int(group[0][1][-1].shape[0]):
                flush()  # another shape (the last, smaller batch): its own call
            group.append((size, batch))
            if len(group) == self.steps_per_execution:
                flush()
        if group:
            flush()
        return step

    def _step(self, sums: Metrics, batch: list[Any], size: int) -> Any:
        """Forward, loss, backward and one optimizer step on this rank's share; the
        batch's mean loss on the device (None for a share without examples)."""
        *xb, yb = batch
        local = int(yb.shape[0])
        cost = None
        if self.compiled is not None:
            before = sums.loss_sum
            totals = sums.totals if sums.totals is not None else self.compiled.zero_totals()
            sums.set_totals(*self.compiled.run(xb if self.multi else xb[0], yb, totals),
                            local, self.positions)
            if self.hooks and local:  # the batch's loss, for on_batch_end: on the device
                cost = (sums.loss_sum if before is None else sums.loss_sum - before) / local
            return cost
        self.optimizer.zero_grad()
        if local and self.precision is not None:  # low-precision passes, float32 grads
            pred, cost = self.precision.forward_backward(
                self.model, self.loss, xb if self.multi else xb[0], yb)
        elif local:
            pred = self.model.forward(xb if self.multi else xb[0], train=True)
            cost = self.loss.forward(pred, yb)
            self.model.backward_params(self.loss.backward())  # no gradient for the data
        self.strategy.reduce_gradients(self.optimizer.params, local, size)
        _clip(self.optimizer.params, self.clip)
        if self.precision is not None:
            self.precision.step(self.optimizer)  # fp16: skips a step with inf/NaN grads
        else:
            self.optimizer.step()
        if local:
            sums.add(pred, yb, cost, local)
        return cost

    def _batch_end(self, epoch: int, index: int, cost: Any, size: int) -> bool:
        """Call the per-batch callbacks; whether one stopped training (on any rank)."""
        stop = batch_end(self.hooks, index, cost, size, epoch)
        return self.strategy.totals([float(stop)])[0] > 0 if self.strategy.size > 1 else stop

    def _check_finite(self, loss: float | None, epoch: int, step: int) -> None:
        if loss is None or math.isfinite(loss):
            return
        _restore(self.model, self._finite)
        raise FloatingPointError(
            f"fit: the loss became {loss} in epoch {epoch + 1}, by step {step}; training "
            f"stopped and the weights are those from before that epoch. Lower the learning "
            f"rate, check the data for NaN or inf, or clip gradients"
        )


def _check_clip(clip: tuple[Any, Any], compiled: bool) -> tuple[Any, Any]:
    norm, value = clip
    if norm is not None:
        norm = _args.real(norm, "clip_grad_norm", "fit", low=0.0)
    if value is not None:
        value = _args.real(value, "clip_grad_value", "fit", low=0.0, low_open=True)
        if compiled:
            raise ValueError("fit: compile=True does not combine with clip_grad_value yet; "
                             "pass clip_grad_norm, or compile=False")
    return norm, value


def _clip(params: list[Any], clip: tuple[Any, Any]) -> None:
    """fit's gradient clipping, on the device (no host read)."""
    if clip[1] is not None:
        clip_grad_value(params, clip[1])
    if clip[0] is not None:
        clip_grad_norm(params, clip[0])


def _train_step(model: Layer, loss: Loss, optimizer: Optimizer, count_hits: bool,
                one_hot: bool, clip_grad_norm: float | None) -> TrainStep:
    """The model's compiled step for this loss, optimizer and settings, kept on the
    model so that calling ``fit`` again (an epoch at a time) does not compile again."""
    steps = model.__dict__.setdefault("_train_steps", {})
    key = (id(loss), id(optimizer), count_hits, one_hot, clip_grad_norm)
    found = steps.get(key)
    if found is None or found.loss is not loss or found.optimizer is not optimizer:
        found = steps[key] = TrainStep(model, loss, optimizer, count_hits=count_hits,
                                       one_hot=one_hot, clip_grad_norm=clip_grad_norm)
    return found


def _snapshot(model: Layer) -> list[Any]:
    """Device copies of every array of the model (no host read)."""
    return [namespace(p.value).asarray(p.value, copy=True) for _, p in model.named_state()]


def _restore(model: Layer, values: list[Any]) -> None:
    for (_, p), v in zip(model.named_state(), values, strict=True):
        p.value = v


def evaluate(model: Layer, x: Any, y: Any, *, loss: Loss | None = None,
             batch_size: int = 1024, metrics: Any = None) -> dict[str, Any]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``, computed on its device.

    Returns ``{"loss": ..., "accuracy": ...}``: ``loss`` when a loss is given or was
    used in ``fit``; ``accuracy`` for classification targets. ``x`` and ``y`` may be
    host arrays (uploaded once here) or arrays already on the model's device; a Graph
    with several inputs takes a list of arrays as ``x``.

    ``metrics``: names (``"accuracy"``, ``"top_k_accuracy"`` (k=5), ``"mae"``,
    ``"confusion_matrix"``) or :class:`xpnet.metrics.Metric` objects
    (``xn.metrics.TopKAccuracy(k=3)``): then the result has ``loss`` (when known) and
    exactly those, each summed on the device batch by batch and read once at the end;
    a confusion matrix is a ``(k, k)`` NumPy int64 array (rows: true class).
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
    extra = metrics_mod.resolve(metrics, loss, n_out)  # None: loss and accuracy
    sums = Metrics(loss, count_hits=extra is None)
    multi = model.multi_input
    with data_mod.epoch_batches(be, [*inputs, y_dev], batch_size) as batches:
        for size, (*xb, yb) in batches:
            pred = model.forward(xb if multi else xb[0], train=False)
            sums.add(pred, yb, loss.forward(pred, yb) if loss is not None else None, size)
            for m in extra or ():
                m.update(pred, yb)
    return {**sums.means(), **metrics_mod.results(extra or [])}


def predict(model: Layer, x: Any, *, batch_size: int = 1024) -> Any:
    """The model's outputs for ``x`` (inference mode), as an array on its device.

    ``x``: host or device arrays, a list of them for a Graph with several inputs."""
    _args.integer(batch_size, "batch_size", "predict", minimum=1)
    be = model.backend
    inputs = _inputs_on(model, be, _param_dtype(model, be), x, "predict")
    _check_counts("predict", inputs, None)
    multi = model.multi_input
    with data_mod.epoch_batches(be, inputs, batch_size) as batches:
        outs = [model.forward(xb if multi else xb[0], train=False) for _, xb in batches]
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
