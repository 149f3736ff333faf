"""What the parts of the checkpoint package share: its error, the dtypes a checkpoint's
arrays may have, and how messages name a dtype."""

from __future__ import annotations

import numpy as np

#: The dtypes of the arrays a checkpoint holds (model state and optimizer state).
PARAM_DTYPES = ("float32", "float64")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read: the message says what is wrong."""


def dtype_text(dtype: np.dtype) -> str:
    """``float32`` for a plain number type, ``<U1``, ``|O`` or ``>f4`` for the others."""
    return dtype.name if dtype.isnative and dtype.kind in "biufc" else dtype.str
