"""Callbacks: hooks that ``fit`` calls at the start, before and after each epoch,
after each batch, and at the end.

``on_batch_end`` runs only for callbacks that define it: ``fit`` skips the per-batch
call entirely when none does, and what it passes (:class:`BatchLogs`) holds device
values that are read on the host only when a callback asks for them.

A callback written for Keras works as it is: ``fit`` sets ``self.model`` (and
``self.optimizer``) before the first hook and reads once, from its signatures, which
form each hook takes: ``on_train_begin(self, logs=None)`` or xpnet's
``on_train_begin(self, model, optimizer)``, ``on_train_end(self, logs=None)`` (the last
epoch's logs) or ``on_train_end(self)``. ``on_epoch_begin``, ``on_epoch_end`` and
``on_batch_end`` (or Keras's ``on_train_batch_end``) take ``(epoch or batch, logs)`` in
both.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import _args
from ..backend import to_numpy
from ..checkpoint import check_describable, check_suffix, save
from ..layers.base import Layer
from ..optim import Optimizer, schedule_config


class Callback:
    """Hooks called by ``fit``. Set ``self.stop_training = True`` to end training."""

    stop_training = False
    #: This process's rank in a data-parallel ``fit`` (0 otherwise), set by ``fit``
    #: before ``on_train_begin``: callbacks that write files or print do it on rank 0.
    rank = 0

    def check(self, logged: set[str]) -> None:
        """Called by ``fit`` before the first step with the metric names it will log:
        raise here for a mistake that would otherwise surface only after an epoch."""

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Called before each epoch (0-based ``epoch``; ``logs`` empty, as Keras's)."""

    def on_batch_end(self, step: int, logs: BatchLogs) -> None:
        """Called after each optimizer step, only for callbacks that override it.

        ``step`` is the batch's index in the epoch (0-based, Keras's ``batch``; the
        optimizer's own count is ``self.optimizer.steps``). ``logs`` holds device values:
        ``logs.loss`` is the batch's mean loss as a 0-d device array (no host read);
        ``logs["loss"]`` reads it as a float (one device sync). Setting
        ``self.stop_training`` here ends training after this batch.
        """

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self) -> None:
        pass


class BatchLogs(Mapping):
    """What ``on_batch_end`` receives: the batch's values, read only on request.

    Attributes
    ----------
    loss : array, shape (), or None
        The batch's mean loss on the device (this process's share of the batch in a
        distributed fit; None on a process that got no examples of it).
    size : int
        Examples in the batch (all processes together).
    epoch : int
        The epoch, 0-based.

    As a mapping (Keras's ``logs``): ``logs["loss"]`` is ``float(loss)``, read from
    the device on first access (one sync) and kept; ``"size"`` and ``"epoch"``.
    """

    __slots__ = ("loss", "size", "epoch", "_value")

    def __init__(self, loss: Any, size: int, epoch: int):
        self.loss, self.size, self.epoch = loss, size, epoch
        self._value: float | None = None

    def __getitem__(self, key: str) -> float | int:
        if key == "loss" and self.loss is not None:
            if self._value is None:
                self._value = float(to_numpy(self.loss))
            return self._value
        if key in ("size", "epoch"):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("loss", "size", "epoch") if self.loss is not None else ("size", "epoch"))

    def __len__(self) -> int:
        return 3 if self.loss is not None else 2

    def __repr__(self) -> str:
        return f"BatchLogs(loss={self.loss!r}, size={self.size}, epoch={self.epoch})"


def batch_hooks(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks that define ``on_batch_end`` or Keras's ``on_train_batch_end`` (fit
    calls none when there are none)."""
    return [cb for cb in callbacks
            if _defines_batch_end(cb) or callable(getattr(cb, "on_train_batch_end", None))]


def _defines_batch_end(cb: Any) -> bool:
    method = getattr(type(cb), "on_batch_end", None)
    return method is not None and method is not Callback.on_batch_end


def batch_end(hooks: list[Callback], step: int, loss: Any, size: int, epoch: int) -> bool:
    """Call ``on_batch_end`` (and ``on_train_batch_end``) of each of ``hooks``; whether
    one asked to stop training."""
    logs = BatchLogs(loss, size, epoch)
    for cb in hooks:
        if _defines_batch_end(cb):
            cb.on_batch_end(step, logs)
        if callable(getattr(cb, "on_train_batch_end", None)):
            cb.on_train_batch_end(step, logs)
    return any(getattr(cb, "stop_training", False) for cb in hooks)


def _positional(method: Any) -> int | None:
    """How many positional arguments a bound method takes (None: any, ``*args``)."""
    count = 0
    for p in inspect.signature(method).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def train_begin(cb: Any, model: Layer, optimizer: Optimizer, rank: int) -> None:
    """Start ``cb``: ``model``, ``optimizer`` and ``rank`` set on it, then its
    ``on_train_begin`` in xpnet's form ``(model, optimizer)`` or Keras's ``(logs)``."""
    cb.model, cb.optimizer, cb.rank = model, optimizer, rank
    if not hasattr(cb, "on_train_begin"):
        return
    takes = _positional(cb.on_train_begin)
    if takes is None or takes >= 2:
        cb.on_train_begin(model, optimizer)
    else:
        cb.on_train_begin(*([{}] if takes else []))


def train_end(cb: Any, logs: dict[str, Any]) -> None:
    """``cb.on_train_end()``, or Keras's ``on_train_end(logs)`` with the last epoch's."""
    if not hasattr(cb, "on_train_end"):
        return
    takes = _positional(cb.on_train_end)
    cb.on_train_end(*([dict(logs)] if takes is None or takes >= 1 else []))


class _Monitor(Callback):
    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be auto, min or max, not {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best: float | None = None

    def check(self, logged: set[str]) -> None:
        if self.monitor not in logged:
            raise KeyError(
                f"{type(self).__name__}: metric {self.monitor!r} is never logged by this fit; "
                f"it logs: {', '.join(sorted(logged))} (val_* needs validation_data)"
            )

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
    the end (kept as device copies, never moved to the host), whether or not it
    stopped training. Unlike Keras, whose default is False, that is the default here:
    after an early stop the weights are those the monitor found best, not those of
    ``patience`` epochs later. Pass ``restore_best_weights=False`` for Keras's
    behaviour (the last epoch's weights).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.restore_best_weights = patience, restore_best_weights
        self.wait, self.best_epoch, self._best_state = 0, None, None

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        super().on_train_begin(model, optimizer)
        # each fit starts afresh (as Keras's): a callback reused from a fit that it
        # stopped would otherwise stop the next one after its first epoch
        self.stop_training, self.wait, self.best = False, 0, None
        self.best_epoch, self._best_state = None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self._improved(logs):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self._best_state = self.model.arrays(copy=True)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True

    def on_train_end(self) -> None:
        if self._best_state is not None:
            self.model.bind(self._best_state)


class ModelCheckpoint(_Monitor):
    """Save the model (and optimizer) to ``path`` after an epoch that improves
    ``monitor``; with ``save_best_only=False`` after every epoch."""

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, save_optimizer: bool = True):
        super().__init__(monitor, mode)
        self.path, self.save_best_only, self.save_optimizer = path, save_best_only, save_optimizer

    def check(self, logged: set[str]) -> None:
        super().check(logged)
        check_writable("ModelCheckpoint", Path(self.path))
        check_suffix(Path(self.path), "ModelCheckpoint")

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        super().on_train_begin(model, optimizer)
        check_describable(model, "ModelCheckpoint")  # now, not after the first epoch
        if self.save_optimizer:
            for group in optimizer.param_groups:
                if callable(group["lr"]):
                    schedule_config(group["lr"])  # TypeError now, not after the first epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if (self._improved(logs) or not self.save_best_only) and self.rank == 0:
            save(self.path, self.model, optimizer=self.optimizer if self.save_optimizer else None,
                 epoch=epoch + 1, **{k: v for k, v in logs.items() if isinstance(v, float)})


def check_writable(who: str, path: Path) -> None:
    """Raise before training when ``path`` cannot be written after an epoch: it is a
    folder, its folder does not exist, or that folder takes no new file (``os.access``,
    then a temp file made and removed there, as the atomic save will make one)."""
    folder = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"{who}: the path {str(path)!r} is a folder; name a file in "
                                f"it, such as {str(path / 'model.xpnet')!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{who}: folder {str(folder)!r} of {str(path)!r} does not "
                                f"exist; create it first")
    problem = None
    if not os.access(folder, os.W_OK):
        problem = "is not writable"
    else:
        probe = folder / f".xpnet-probe-{os.getpid()}-{uuid.uuid4().hex}.tmp"
        try:
            with open(probe, "x"):
                pass
            probe.unlink()
        except OSError as e:
            problem = f"takes no new file ({e.strerror or e})"
    if problem is not None:
        raise PermissionError(f"{who}: cannot write {str(path)!r}: the folder {str(folder)!r} "
                              f"{problem}; make it writable or choose another path")


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss is NaN or infinite (Keras's
    ``TerminateOnNaN``); ``fit`` then raises FloatingPointError, with the weights of
    the last epoch whose loss was finite.

    It reads one value per batch from the device (the batch's loss): a sync each step,
    which slows training on a GPU. Without it ``fit`` already stops with the same error
    at its first read of a non-finite loss: a progress-bar report, or the epoch's end.
    ``stopped`` is ``(epoch, batch)`` where it stopped, or None.
    """

    stopped: tuple[int, int] | None = None

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        super().on_train_begin(model, optimizer)
        self.stop_training, self.stopped = False, None

    def on_batch_end(self, step: int, logs: BatchLogs) -> None:
        if "loss" in logs and not math.isfinite(logs["loss"]):
            self.stop_training, self.stopped = True, (logs.epoch, step)


class CSVLogger(Callback):
    """Write one row per epoch to a CSV file: ``epoch`` (0-based) and every log
    (``loss``, ``accuracy``, ``val_*``, ``time``...), as Keras's ``CSVLogger``.

    The header (``epoch`` then the log names, sorted) is written once, with the first
    row; the file is flushed and closed after each row. ``append=False`` starts the file
    afresh when training begins; ``append=True`` adds rows to it, under its existing
    header when it has one (resuming a run). A log missing from an epoch is written
    ``NA``. Only rank 0 of a distributed fit writes.
    """

    def __init__(self, path: str | Path, separator: str = ",", append: bool = False):
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.path, self.separator, self.append = Path(path), separator, bool(append)
        self._columns: list[str] | None = None

    def check(self, logged: set[str]) -> None:
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"CSVLogger: folder {str(self.path.parent)!r} of "
                                    f"{str(self.path)!r} does not exist; create it first")
        if self.append and self.path.is_file():
            self._header()  # a file it cannot append to fails before training

    def _header(self) -> list[str] | None:
        """The header row of the file appended to (None when it is empty)."""
        try:
            with self.path.open(newline="", encoding="utf-8") as f:
                return next(csv.reader(f, delimiter=self.separator), None) or None
        except UnicodeDecodeError as e:
            raise ValueError(f"CSVLogger: {str(self.path)!r} is not UTF-8 text (byte "
                             f"{e.start}: {e.object[e.start:e.start + 1]!r}), so no CSV "
                             f"rows can be added to it; pass append=False to start it "
                             f"afresh, or another path") from None

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        super().on_train_begin(model, optimizer)
        self._columns = None
        if self.rank != 0:
            return
        if self.append and self.path.is_file():
            self._columns = self._header()
        elif not self.append:
            self.path.write_text("", encoding="utf-8")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        header = self._columns is None
        if header:
            self._columns = ["epoch", *sorted(logs)]
        row = [epoch] + [logs.get(k, "NA") for k in self._columns[1:]]
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if header:
                writer.writerow(self._columns)
            writer.writerow(row)


class ReduceLROnPlateau(_Monitor):
    """Multiply the optimizer's learning rate by ``factor`` when ``monitor`` stops
    improving; checked once per epoch (after validation).

    The rule and the numbers are PyTorch's ``ReduceLROnPlateau(mode, factor, patience,
    threshold=min_delta, threshold_mode="abs", cooldown, min_lr)``: an epoch improves
    when the value beats the best by more than ``min_delta``; once more than
    ``patience`` epochs in a row have not, the rate becomes ``max(lr * factor, min_lr)``
    (unless that changes it by less than 1e-8), and the next ``cooldown`` epochs count
    no bad epochs. (Keras counts ``patience`` one epoch earlier: its ``patience=p`` is
    ``patience=p - 1`` here.)

    It changes a fixed rate (each parameter group's ``lr``, a float, as PyTorch's):
    an optimizer whose ``lr`` is a schedule already decides each step's rate, and
    raises TypeError at the start of ``fit``. ``lr`` holds the lowered rate afterwards,
    and checkpoints save it.

    Parameters
    ----------
    monitor : str
        A logged metric: ``"val_loss"`` (default; needs validation data), ``"loss"``...
    factor : float in (0, 1)
    patience, cooldown : int >= 0
    min_lr : float >= 0
    mode : "auto", "min" or "max"
        ``auto``: max for names containing "acc", min otherwise.
    min_delta : float >= 0
    verbose : bool
        Print a line when the rate is lowered.
    """

    eps = 1e-8  # PyTorch's: a smaller change is not made

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_lr: float = 0.0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, verbose: bool = False):
        who = "ReduceLROnPlateau"
        super().__init__(monitor, mode, _args.real(min_delta, "min_delta", who, low=0.0))
        self.factor = _args.real(factor, "factor", who, low=0.0, high=1.0, low_open=True,
                                 high_open=True)
        self.patience = _args.integer(patience, "patience", who, minimum=0)
        self.cooldown = _args.integer(cooldown, "cooldown", who, minimum=0)
        self.min_lr = _args.real(min_lr, "min_lr", who, low=0.0)
        self.verbose = bool(verbose)
        self.wait, self.cooldown_left = 0, 0

    def on_train_begin(self, model: Layer, optimizer: Optimizer) -> None:
        super().on_train_begin(model, optimizer)
        for group in optimizer.param_groups:
            if callable(group["lr"]):
                raise TypeError(f"ReduceLROnPlateau: the optimizer's lr is the schedule "
                                f"{group['lr']!r}, which already sets each step's rate; "
                                f"give the optimizer a fixed lr (a float) to lower on "
                                f"plateaus, or drop one of the two")
        self.best, self.wait, self.cooldown_left = None, 0, 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self._improved(logs):
            self.wait = 0
        else:
            self.wait += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self.wait > self.patience:
            for i, group in enumerate(self.optimizer.param_groups):  # each, as PyTorch
                old = float(group["lr"])
                new = max(old * self.factor, self.min_lr)
                if old - new > self.eps:
                    group["lr"] = new
                    if self.verbose and self.rank == 0:
                        which = (f" of parameter group {i}"
                                 if len(self.optimizer.param_groups) > 1 else "")
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau lowered the learning "
                              f"rate{which} to {new:.4g}")
            self.cooldown_left, self.wait = self.cooldown, 0
