"""Training: ``fit``/``evaluate``/``predict`` (loop), ``History``, callbacks, metrics
kept on the device, and progress reporting."""

from __future__ import annotations

from . import metrics
from .callbacks import (
    BatchLogs,
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from .history import History
from .loop import evaluate, fit, predict
from .metrics import Metrics
from .precision import MixedPrecision
from .progress import Progress

__all__ = ["Callback", "EarlyStopping", "History", "Metrics", "MixedPrecision",
           "ModelCheckpoint", "Progress",
           "BatchLogs", "CSVLogger", "ReduceLROnPlateau", "TerminateOnNaN", "metrics",
           "evaluate", "fit", "predict"]
