"""Weight initialisers, drawn on the host from a seeded generator.

Drawing on the host and then copying to the device means one seed gives the same
initial weights on every backend. Each initialiser takes the weight shape
``(out, in, *kernel)`` (PyTorch's layout) and a NumPy generator, and returns a
float64 NumPy array. :func:`draw` makes a layer's weight and bias together.
"""

from __future__ import annotations

import math

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight ``(out, in, *kernel)``."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def glorot_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)): keeps variance for sigmoid/tanh."""
    fan_in, fan_out = fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)


def he_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """N(0, 2 / fan_in): keeps variance through ReLU."""
    fan_in, _ = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def lecun_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear and Conv."""
    fan_in, _ = fans(shape)
    a = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-a, a, size=shape)


def standard_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """N(0, 1): the source notes' (Nielsen's) initialisation."""
    return rng.normal(0.0, 1.0, size=shape)


INITIALIZERS = {
    "pytorch": lecun_uniform,
    "lecun": lecun_uniform,
    "glorot": glorot_uniform,
    "xavier": glorot_uniform,
    "he": he_normal,
    "kaiming": he_normal,
    "normal": standard_normal,
}


def get(name: str):
    """The initialiser called ``name`` (see ``INITIALIZERS``)."""
    if name == "auto":
        raise ValueError(
            "init='auto' is gone: a layer's weights are drawn once, when it is made, and "
            "never change when it is composed; pass init='he' for a layer a ReLU follows, "
            "'glorot' before sigmoid or tanh, or keep the default 'pytorch'"
        )
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown init {name!r}; expected one of {', '.join(sorted(INITIALIZERS))}"
        ) from None


def draw(init: str, shape: tuple[int, ...], bias: bool,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight of ``shape`` and, with ``bias``, a bias of ``(shape[0],)``.

    ``"pytorch"`` is PyTorch's default: weight and bias both U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), weight first. Every other ``init`` draws the weight and starts
    the bias at zero (Keras's default).
    """
    weight = get(init)(shape, rng)
    if not bias:
        return weight, None
    if init == "pytorch":
        a = 1.0 / math.sqrt(fans(shape)[0])
        return weight, rng.uniform(-a, a, size=shape[0])
    return weight, np.zeros(shape[0])
