"""Weight initialisers, drawn on the host from a seeded generator.

Drawing on the host and then copying to the device means one seed gives the same
initial weights on every backend. Each initialiser takes the weight shape
``(out, in, *kernel)`` (PyTorch's layout) and a NumPy generator, and returns a
float64 NumPy array. :func:`draw` makes a layer's weight and bias together.

A layer's ``init`` is one of three things:

- a name in :data:`INITIALIZERS` (``"pytorch"``, ``"he"``, ``"glorot"``...; your own
  with :func:`register`), saved in checkpoints as that name;
- an :class:`Initializer` made here, ``normal(0.02)`` or ``scaled(normal(0.02),
  1 / math.sqrt(2 * n_layers))`` (GPT-2's residual projections), saved as its config
  (``{"init": "normal", "std": 0.02, "mean": 0.0}``) and rebuilt from it;
- any other callable ``(shape, rng) -> array``: the layer uses it, but a checkpoint
  cannot describe it, so ``xn.save`` refuses the model with a message naming the
  layer (register it by name, or set the layer's ``init`` to a name: the weights are
  saved as they are either way; ``init`` only matters to ``reset()``).

Names other than ``"pytorch"``, initialisers and callables start a bias at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
            f"unknown init {name!r}; expected one of {', '.join(sorted(INITIALIZERS))}, "
            f"an initialiser of xpnet.init (normal(std), scaled(init, factor)) or a "
            f"callable (shape, rng) -> array"
        ) from None


def register(name: str, fn: Callable[[tuple[int, ...], np.random.Generator], Any]) -> None:
    """Make ``fn(shape, rng) -> array`` an initialiser by ``name``, so layers given
    ``init=name`` can be saved (register it again before loading such a file)."""
    if not isinstance(name, str) or not callable(fn):
        raise TypeError(f"register: expected a name and a callable, got {name!r}, {fn!r}")
    INITIALIZERS[name] = fn


class Initializer:
    """A weight initialiser that checkpoints can describe: ``init(shape, rng)`` draws a
    float64 array; ``get_config()`` is ``{"init": kind, ...arguments}``, which
    :func:`resolve` turns back into an equal initialiser."""

    kind = ""

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def arguments(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        return {"init": self.kind, **self.arguments()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Initializer) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"xn.init.{self.kind}({args})"


class _Normal(Initializer):
    kind = "normal"

    def __init__(self, std: float, mean: float):
        self.std, self.mean = _number(std, "std", positive=True), _number(mean, "mean")

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return rng.normal(self.mean, self.std, size=shape)

    def arguments(self) -> dict[str, Any]:
        return {"std": self.std, "mean": self.mean}


class _Uniform(Initializer):
    kind = "uniform"

    def __init__(self, bound: float):
        self.bound = _number(bound, "bound", positive=True)

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-self.bound, self.bound, size=shape)

    def arguments(self) -> dict[str, Any]:
        return {"bound": self.bound}


class _Scaled(Initializer):
    kind = "scaled"

    def __init__(self, base: Any, factor: float):
        self.base = resolve(base)
        if not isinstance(self.base, (str, Initializer)):
            raise TypeError(f"scaled: init must be a name or an initialiser of xpnet.init, "
                            f"got {base!r}")
        self.factor = _number(factor, "factor")

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return self.factor * function(self.base)(shape, rng)

    def arguments(self) -> dict[str, Any]:
        return {"base": config_of(self.base), "factor": self.factor}

    def __repr__(self) -> str:
        return f"xn.init.scaled({self.base!r}, factor={self.factor!r})"


def _number(value: Any, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or (positive and value <= 0):
        raise ValueError(f"xpnet.init: {what} must be a finite{' positive' if positive else ''}"
                         f" number, got {value!r}")
    return float(value)


def normal(std: float = 1.0, mean: float = 0.0) -> Initializer:
    """N(mean, std^2) for every weight: GPT-2's ``normal(0.02)``."""
    return _Normal(std, mean)


def uniform(bound: float) -> Initializer:
    """U(-bound, bound) for every weight."""
    return _Uniform(bound)


def scaled(init: Any, factor: float) -> Initializer:
    """``init``'s draw times ``factor``: GPT-2 scales its residual projections by
    ``1 / sqrt(2 * n_layers)``, ``scaled(normal(0.02), 1 / math.sqrt(2 * n_layers))``.
    ``init`` is a name or an initialiser of this module."""
    return _Scaled(init, factor)


#: How a config (``{"init": kind, ...}``) names each kind of :class:`Initializer`.
KINDS: dict[str, type[Initializer]] = {"normal": _Normal, "uniform": _Uniform,
                                       "scaled": _Scaled}


def resolve(init: Any) -> Any:
    """What a layer keeps as its ``init``: a known name, an :class:`Initializer` (a config
    from a file made into one), or a callable; ValueError for anything else."""
    if isinstance(init, str):
        get(init)
        return init
    if isinstance(init, Initializer):
        return init
    if isinstance(init, dict):
        config = dict(init)
        kind = KINDS.get(config.pop("init", None))
        if kind is None:
            raise ValueError(f"unknown init config {init!r}; expected 'init' to be one of "
                             f"{', '.join(KINDS)}")
        try:
            return kind(**config)
        except TypeError as e:
            raise ValueError(f"init config {init!r}: {e}") from None
    if callable(init):
        return init
    raise ValueError(f"init must be a name ({', '.join(sorted(INITIALIZERS))}), an "
                     f"initialiser of xpnet.init or a callable (shape, rng) -> array, got "
                     f"{init!r}")


def config_of(init: Any) -> Any:
    """``init`` as a layer's config holds it: a name, an Initializer's config, or (for a
    callable of your own, which no file can describe) the callable itself."""
    return init.get_config() if isinstance(init, Initializer) else init


def describable(init: Any) -> bool:
    """Whether a checkpoint can record ``init`` (a name or an Initializer)."""
    return isinstance(init, (str, Initializer))


def function(init: Any) -> Callable[[tuple[int, ...], np.random.Generator], Any]:
    """The drawing function of a resolved ``init``."""
    return get(init) if isinstance(init, str) else init


def draw(init: Any, shape: tuple[int, ...], bias: bool,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight of ``shape`` and, with ``bias``, a bias of ``(shape[0],)``.

    ``"pytorch"`` is PyTorch's default: weight and bias both U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), weight first. Every other ``init`` (a name, an initialiser, a
    callable) draws the weight and starts the bias at zero (Keras's default).
    """
    weight = np.asarray(function(init)(shape, rng), dtype=np.float64)
    if tuple(weight.shape) != tuple(shape):
        raise ValueError(f"init {init!r} drew an array of shape {tuple(weight.shape)} for a "
                         f"weight of shape {tuple(shape)}")
    if not bias:
        return weight, None
    if init == "pytorch":
        a = 1.0 / math.sqrt(fans(shape)[0])
        return weight, rng.uniform(-a, a, size=shape[0])
    return weight, np.zeros(shape[0])
