"""fit(), evaluate(), predict(), History and callbacks.

Training runs where the model's parameters live. The data set moves to that device
once; each epoch is shuffled there and cut into mini-batches. Running sums of the
loss and of correct predictions stay on the device and are read back to the host
only to report them: at the end of each epoch, and a few times per epoch for the
progress bar.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from . import distributed as distributed_mod
from . import random
from ._compat import namespace
from .backend import Backend, dtype_name, to_numpy
from .layers.base import Layer
from .losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy
from .optim import Optimizer


class History:
    """Per-epoch metrics of a ``fit``: ``history["loss"]``, ``history["val_accuracy"]``...

    Keys: ``loss``, ``accuracy`` (classification only), ``val_loss``,
    ``val_accuracy`` (with validation data), ``time`` (seconds per epoch) and
    ``samples_per_sec``; ``epochs`` lists the epoch numbers (0-based).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def keys(self):
        return self.history.keys()

    def to_json(self, path: str | Path) -> None:
        """Write ``{"epochs": [...], "loss": [...], ...}`` to ``path``."""
        Path(path).write_text(json.dumps({"epochs": self.epochs, **self.history}, indent=1))

    def plot(self, path: str | Path) -> None:
        """Write a PNG of the loss and accuracy curves (needs matplotlib)."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError('History.plot needs matplotlib: pip install "xpnet[plot]"') from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [k for k in ("loss", "accuracy") if k in self.history]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, key in zip(axes[0], panels, strict=True):
            for name in (key, "val_" + key):
                if name in self.history:
                    ax.plot([e + 1 for e in self.epochs], self.history[name], label=name)
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History({len(self.epochs)} epochs, last={last})"


# -- callbacks ---------------------------------------------------------------------------
class Callback:
    """Hooks called by ``fit``. Set ``self.stop_training = True`` to end training."""

    stop_training = False

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self) -> None:
        pass


class _Monitor(Callback):
    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be auto, min or max, not {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best: float | None = None

    def _improved(self, logs: dict[str, float]) -> bool:
        if self.monitor not in logs:
            raise KeyError(
                f"{type(self).__name__}: metric {self.monitor!r} is not logged; "
                f"available: {', '.join(logs)} (val_* needs validation_data)"
            )
        value = logs[self.monitor]
        better = (self.best is None or
                  (value < self.best - self.min_delta if self.mode == "min"
                   else value > self.best + self.min_delta))
        if better:
            self.best = value
        return better


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    With ``restore_best_weights`` the parameters of the best epoch are put back at
    the end (kept as device copies, never moved to the host).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.restore_best_weights = patience, restore_best_weights
        self.wait, self.best_epoch, self._best_state = 0, None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self._improved(logs):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self._best_state = [_copy(p.value) for _, p in self.model.named_state()]
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True

    def on_train_end(self) -> None:
        if self._best_state is not None:
            for (_, p), v in zip(self.model.named_state(), self._best_state, strict=True):
                p.value = v


def _copy(a: Any) -> Any:
    return namespace(a).asarray(a, copy=True)


class ModelCheckpoint(_Monitor):
    """Save the model (and optimizer) to ``path`` after an epoch that improves
    ``monitor``; with ``save_best_only=False`` after every epoch."""

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, save_optimizer: bool = True):
        super().__init__(monitor, mode)
        self.path, self.save_best_only, self.save_optimizer = path, save_best_only, save_optimizer

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        from .checkpoint import save

        if (self._improved(logs) or not self.save_best_only) and getattr(self, "rank", 0) == 0:
            save(self.path, self.model, optimizer=self.optimizer if self.save_optimizer else None,
                 epoch=epoch + 1, **{k: v for k, v in logs.items() if isinstance(v, float)})


# -- helpers -------------------------------------------------------------------------------
def _param_dtype(model: Layer, be: Backend) -> str:
    state = model.named_state()
    return dtype_name(be.xp, state[0][1].value.dtype) if state else "float32"


def _count(a: Any) -> int:
    """Examples in ``a`` (array-api-strict arrays have no ``len``)."""
    return int(a.shape[0]) if hasattr(a, "shape") else len(a)


def _hits(xp: Any, pred: Any, y: Any, loss: Loss | None, one_hot: bool = False) -> Any:
    """Number of correct predictions as a device scalar, or None for regression.

    ``one_hot``: ``y`` holds labels that fit encoded as one-hot rows.
    """
    integral = xp.isdtype(y.dtype, "integral")
    if pred.ndim == 2 and pred.shape[1] > 1:
        if integral:
            right = xp.argmax(pred, axis=1) == y
        elif one_hot or isinstance(loss, SoftmaxCrossEntropy):
            right = xp.argmax(pred, axis=1) == xp.argmax(y, axis=1)
        else:
            return None
    elif integral or isinstance(loss, BinaryCrossEntropy):
        threshold = 0.0 if isinstance(loss, BinaryCrossEntropy) else 0.5
        p = xp.reshape(pred, (-1,))
        right = (p > threshold) == (xp.reshape(y, (-1,)) > 0.5)
    else:
        return None
    return xp.sum(xp.astype(right, pred.dtype))


def _check_labels(y: Any, n_out: int, who: str) -> None:
    """Host-side label check before training: free, and it names the bad values."""
    if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.integer) and y.size:
        lo, hi = int(y.min()), int(y.max())
        limit = n_out if n_out > 1 else 2  # one output: binary labels 0/1
        if lo < 0 or hi >= limit:
            raise ValueError(
                f"{who}: labels must lie in [0, {limit - 1}] for a model with {n_out} "
                f"output(s), got values from {lo} to {hi}"
            )


def _out_width(model: Layer, be: Backend, x: Any) -> int:
    y = model.forward(x[0:1, ...], train=False)
    return int(y.shape[1]) if y.ndim == 2 else 1


class _Reporter:
    """A tqdm bar on a terminal, one line per epoch otherwise, or nothing."""

    def __init__(self, progress: Any, epochs: int, steps: int):
        if progress is None or progress is True:
            progress = "bar" if sys.stderr.isatty() else "lines"
        if progress == "bar":
            try:
                import tqdm  # noqa: F401
            except ImportError:
                progress = "lines"
        self.mode, self.epochs, self.steps, self.bar = progress, epochs, steps, None

    def start(self, epoch: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                            leave=True, dynamic_ncols=True, unit="step")

    def step(self, n: int, postfix: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def end(self, epoch: int, logs: dict[str, float]) -> None:
        text = "  ".join(f"{k} {v:.4f}" if k != "samples_per_sec" else f"{k} {v:,.0f}"
                         for k, v in logs.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
        elif self.mode == "lines":
            print(f"epoch {epoch + 1}/{self.epochs}  {text}", flush=True)


# -- fit / evaluate / predict ---------------------------------------------------------------
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
        Evaluated after each epoch: ``val_loss``, ``val_accuracy``.
    shuffle : bool
        Reorder the examples each epoch, by a permutation seeded with ``(seed, epoch)``.
    progress : None, bool, "bar" or "lines"
        None: a tqdm bar on a terminal, else one line per epoch. False: silent.
    callbacks : list of Callback, e.g. EarlyStopping, ModelCheckpoint
    seed : int, optional
        Shuffling seed; drawn from the ``xn.seed`` generator when not given. Pass the
        same seed and ``initial_epoch`` to resume a run exactly.
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
    be = model.backend
    dtype = _param_dtype(model, be)
    if _count(x) != _count(y):
        raise ValueError(f"fit: x has {_count(x)} examples but y has {_count(y)}")
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, "
                         f"{epochs}")
    x_dev = data_mod.on_backend(be, x, dtype, "fit (x)")
    n_out = _out_width(model, be, x_dev)
    _check_labels(y, n_out, "fit")
    y_dev = data_mod.on_backend(be, y, dtype, "fit (y)")
    y_enc = loss.encode_targets(y_dev, n_out, be.dtype(dtype))
    one_hot = y_enc is not y_dev
    if validation_data is not None:
        _check_labels(validation_data[1], n_out, "fit (validation_data)")
    if seed is None:
        seed = int(random.current().host.integers(2**31))
    comm = distributed_mod.resolve(distributed)
    if comm.size > 1:  # every rank starts from rank 0's parameters and shuffling seed
        _set_state(model, comm.broadcast([p.value for _, p in model.named_state()]))
        seed = comm.bcast_object(seed)
    model._fit_loss = loss  # evaluate() reports this loss by default
    xp, n = be.xp, int(x_dev.shape[0])
    steps = math.ceil(n / batch_size)
    every = max(1, steps // max(1, reports_per_epoch))
    callbacks = list(callbacks or [])
    for cb in callbacks:
        cb.rank = comm.rank
        cb.on_train_begin(model, optimizer)
    history = History()
    reporter = _Reporter(progress if comm.rank == 0 else False, epochs, steps)
    count_hits = "accuracy" in metrics
    stream = random.RandomStream(seed)
    try:
        for epoch in range(initial_epoch, epochs):
            start = time.perf_counter()
            reporter.start(epoch)
            stream.restart(seed, epoch)  # dropout masks, like the order, per epoch
            order = data_mod.epoch_order(n, seed, epoch) if shuffle else None
            xs, ys = data_mod.shuffled(be, [x_dev, y_enc], order)
            loss_sum = hits = None
            seen = 0
            with stream.active():  # what Dropout draws from
                for step, (size, (xb, yb)) in enumerate(data_mod.batches([xs, ys], batch_size), 1):
                    if comm.size > 1:  # this rank's share of the global batch
                        lo, hi = size * comm.rank // comm.size, size * (comm.rank + 1) // comm.size
                        xb, yb = xb[lo:hi, ...], yb[lo:hi, ...]
                    local = int(xb.shape[0])
                    optimizer.zero_grad()
                    if local:
                        pred = model.forward(xb, train=True)
                        c = loss.forward(pred, yb)
                        model.backward_params(loss.backward())  # no gradient for the data itself
                    if comm.size > 1:
                        _average_gradients(comm, optimizer.params, local, size)
                    optimizer.step()
                    if local:
                        c = c * local
                        loss_sum = c if loss_sum is None else loss_sum + c
                        if count_hits:
                            h = _hits(xp, pred, yb, loss, one_hot)
                            if h is not None:
                                hits = h if hits is None else hits + h
                    seen += local
                    # the one host read inside the loop, at the reporting interval
                    postfix = None
                    if reporter.bar is not None and step % every == 0 and loss_sum is not None:
                        postfix = {"loss": float(to_numpy(loss_sum)) / seen}
                        if hits is not None:
                            postfix["accuracy"] = float(to_numpy(hits)) / seen
                    reporter.step(1, postfix)
            total_loss, total_hits = _epoch_sums(comm, loss_sum, hits)
            logs = {"loss": total_loss / n}
            if total_hits is not None:
                logs["accuracy"] = total_hits / n
            if validation_data is not None:
                val = evaluate(model, *validation_data, loss=loss,
                               batch_size=max(batch_size, 1024))
                logs.update({"val_" + k: v for k, v in val.items()})
            elapsed = time.perf_counter() - start
            logs["time"] = elapsed
            logs["samples_per_sec"] = n / elapsed if elapsed > 0 else float("inf")
            history.append(epoch, logs)
            reporter.end(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if any(cb.stop_training for cb in callbacks):
                break
        for cb in callbacks:
            cb.on_train_end()
        if comm.size > 1:  # statistics such as BatchNorm's: rank 0's copy everywhere
            frozen = [(k, p) for k, p in model.named_state() if not p.trainable]
            for (_, p), v in zip(frozen, comm.broadcast([p.value for _, p in frozen]),
                                 strict=True):
                p.value = v
    except Exception as error:
        if comm.size == 1:
            raise
        distributed_mod.fail(comm, error)  # show it, and end every rank: none may hang
    return history


def _set_state(model: Layer, values: list[Any]) -> None:
    for (_, p), v in zip(model.named_state(), values, strict=True):
        p.value = v


def _average_gradients(comm: Any, params: list[Any], local: int, size: int) -> None:
    """Replace each rank's mean gradient over its ``local`` examples by the mean over
    all ``size`` examples of the global batch: sum of (local mean * local) / size."""
    grads = []
    for p in params:
        if p.grad is None or not local:
            grads.append(p.value * 0.0)
        else:
            grads.append(p.grad * float(local))
    for p, g in zip(params, comm.allreduce_sum(grads), strict=True):
        p.grad = g / float(size)


def _epoch_sums(comm: Any, loss_sum: Any, hits: Any) -> tuple[float, float | None]:
    """The epoch's summed loss and correct count over every rank, read to the host."""
    loss_host = float(to_numpy(loss_sum)) if loss_sum is not None else 0.0
    hits_host = float(to_numpy(hits)) if hits is not None else None
    if comm.size == 1:
        return loss_host, hits_host
    both = np.array([loss_host, hits_host if hits_host is not None else 0.0])
    total = comm.allreduce_sum([both])[0]
    return float(total[0]), (float(total[1]) if hits_host is not None else None)


def evaluate(model: Layer, x: Any, y: Any, *, loss: Loss | None = None,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``, computed on its device.

    Returns ``{"loss": ..., "accuracy": ...}``: ``loss`` when a loss is given or was
    used in ``fit``; ``accuracy`` for classification targets.
    """
    be = model.backend
    dtype = _param_dtype(model, be)
    if _count(x) != _count(y):
        raise ValueError(f"evaluate: x has {_count(x)} examples but y has {_count(y)}")
    loss = loss if loss is not None else getattr(model, "_fit_loss", None)
    x_dev = data_mod.on_backend(be, x, dtype, "evaluate (x)")
    y_dev = data_mod.on_backend(be, y, dtype, "evaluate (y)")
    loss_sum = hits = None
    for size, (xb, yb) in data_mod.batches([x_dev, y_dev], batch_size):
        pred = model.forward(xb, train=False)
        if loss is not None:
            c = loss.forward(pred, yb) * size
            loss_sum = c if loss_sum is None else loss_sum + c
        h = _hits(be.xp, pred, yb, loss)
        if h is not None:
            hits = h if hits is None else hits + h
    n = int(x_dev.shape[0])
    out = {}
    if loss_sum is not None:
        out["loss"] = float(to_numpy(loss_sum)) / n
    if hits is not None:
        out["accuracy"] = float(to_numpy(hits)) / n
    return out


def predict(model: Layer, x: Any, *, batch_size: int = 1024) -> Any:
    """The model's outputs for ``x`` (inference mode), as an array on its device."""
    be = model.backend
    x_dev = data_mod.on_backend(be, x, _param_dtype(model, be), "predict (x)")
    outs = [model.forward(xb, train=False) for _, (xb,) in data_mod.batches([x_dev], batch_size)]
    return outs[0] if len(outs) == 1 else be.xp.concat(outs, axis=0)
