"""Training: ``fit``/``evaluate``/``predict`` (loop), ``History``, callbacks, metrics
kept on the device, and progress reporting."""

from __future__ import annotations

from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .history import History
from .loop import evaluate, fit, predict
from .metrics import Metrics
from .progress import Progress

__all__ = ["Callback", "EarlyStopping", "History", "Metrics", "ModelCheckpoint", "Progress",
           "evaluate", "fit", "predict"]
