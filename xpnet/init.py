"""Weight initialisers, drawn on the host from the seeded generator.

Drawing on the host and then copying to the device means one seed gives the same
initial weights on every backend. Each initialiser takes the weight shape
``(out, in, *kernel)`` (PyTorch's layout) and returns a float64 NumPy array.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import host_rng


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def glorot_uniform(shape: tuple[int, ...]) -> np.ndarray:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)): keeps variance for sigmoid/tanh."""
    fan_in, fan_out = _fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return host_rng().uniform(-a, a, size=shape)


def he_normal(shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 2 / fan_in): keeps variance through ReLU."""
    fan_in, _ = _fans(shape)
    return host_rng().normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def lecun_uniform(shape: tuple[int, ...]) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear and Conv."""
    fan_in, _ = _fans(shape)
    a = 1.0 / math.sqrt(fan_in)
    return host_rng().uniform(-a, a, size=shape)


def standard_normal(shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1): the source notes' (Nielsen's) initialisation."""
    return host_rng().normal(0.0, 1.0, size=shape)


INITIALIZERS = {
    "glorot": glorot_uniform,
    "xavier": glorot_uniform,
    "he": he_normal,
    "kaiming": he_normal,
    "lecun": lecun_uniform,
    "pytorch": lecun_uniform,
    "normal": standard_normal,
}


def get(name: str):
    """The initialiser called ``name`` (see ``INITIALIZERS``)."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown init {name!r}; expected one of {', '.join(sorted(INITIALIZERS))}"
        ) from None
