"""Training: ``fit``/``evaluate``/``predict`` (loop), the one step body (step, its
gradient transforms, the precision policy), compiled steps, ``History``, callbacks,
metrics kept on the device, and progress reporting."""

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
from .compiled import TrainStep, compile_step
from .history import History
from .inference import evaluate, predict
from .loop import fit
from .metrics import Metric, MetricSet
from .precision import MixedPrecision
from .progress import Progress
from .step import Step

__all__ = ["Callback", "EarlyStopping", "History", "Metric", "MetricSet", "MixedPrecision",
           "ModelCheckpoint", "Progress", "Step", "TrainStep", "compile_step",
           "BatchLogs", "CSVLogger", "ReduceLROnPlateau", "TerminateOnNaN", "metrics",
           "evaluate", "fit", "predict"]
