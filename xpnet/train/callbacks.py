"""Callbacks: hooks that ``fit`` calls at the start, after each epoch, and at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._compat import namespace
from ..checkpoint import save
from ..layers.base import Layer
from ..optim import Optimizer


class Callback:
    """Hooks called by ``fit``. Set ``self.stop_training = True`` to end training."""

    stop_training = False

    def check(self, logged: set[str]) -> None:
        """Called by ``fit`` before the first step with the metric names it will log:
        raise here for a mistake that would otherwise surface only after an epoch."""

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

    def check(self, logged: set[str]) -> None:
        super().check(logged)
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"ModelCheckpoint: folder {str(folder)!r} of "
                                    f"{str(self.path)!r} does not exist; create it first")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if (self._improved(logs) or not self.save_best_only) and getattr(self, "rank", 0) == 0:
            save(self.path, self.model, optimizer=self.optimizer if self.save_optimizer else None,
                 epoch=epoch + 1, **{k: v for k, v in logs.items() if isinstance(v, float)})
