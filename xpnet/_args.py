"""Checks for arguments, where they are given: each raises at once, naming the argument,
what it must be and what came."""

from __future__ import annotations

import math
import numbers
from typing import Any


def integer(value: Any, what: str, who: str, *, minimum: int | None = None) -> int:
    """``value`` as an int: a real integer (not a bool, not 3.7), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{who}: {what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{who}: {what} must be >= {minimum}, got {value}")
    return int(value)


def real(value: Any, what: str, who: str, *, low: float | None = None,
         high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (open or closed at each end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: {what} must be a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        raise ValueError(f"{who}: {what} must be a finite number {where}, got {value!r}")
    return v


FLOAT_DTYPES = ("float32", "float64")


def float_dtype(value: Any, who: str) -> str:
    """A parameter dtype name: ``"float32"`` or ``"float64"``."""
    if value not in FLOAT_DTYPES:
        raise ValueError(f"{who}: dtype must be one of {', '.join(FLOAT_DTYPES)}, "
                         f"got {value!r}")
    return value
