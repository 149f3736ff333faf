"""Element-wise activations ``a = act(z)`` and softmax.

Backward is the chain rule through the activation: ``dC/dz = dC/da * act'(z)``,
with ``act'`` written in terms of the saved output where that is cheaper. Training
keeps what ``act'`` needs: the output (Sigmoid, Tanh, ReLU, Softmax), or the input
and a shared intermediate (GELU, SiLU), or the input (LeakyReLU):

    GELU       a = z Phi(z),  Phi(z) = (1 + erf(z / sqrt 2)) / 2
               a' = Phi(z) + z phi(z),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
    GELU tanh  a = z (1 + t) / 2,  t = tanh(u),  u = sqrt(2/pi) (z + 0.044715 z^3)
               a' = (1 + t) / 2 + z (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 z^2) / 2
    SiLU       a = z s,  s = sigmoid(z);  a' = s (1 + z (1 - s))
    LeakyReLU  a = z if z > 0 else slope * z;  a' = 1 if z > 0 else slope
"""

from __future__ import annotations

import math
from typing import Any

from .. import _args
from .._compat import namespace
from ..backends import ops
from .base import Layer


class _Activation(Layer):
    positionwise = True  # element-wise, or along the last axis (Softmax)

    def __init__(self, *, name: str | None = None):
        super().__init__(name=name)
        self._y: Any = None

    def get_config(self) -> dict[str, Any]:
        return {}


class Sigmoid(_Activation):
    """``sigma(z) = 1 / (1 + exp(-z))``; ``sigma'(z) = sigma(z) (1 - sigma(z))``.

    Computed as ``0.5 * tanh(0.5 z) + 0.5``, which is the same function but never
    overflows: at ``|z| = 1000`` it gives exactly 0 or 1, with no warning.
    """


    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        y = ops(xp).sigmoid(xp, x)
        self._y = y if train else None
        return y

    def backward(self, dy: Any) -> Any:
        y = self._require_cache(self._y)
        xp = namespace(y)
        return ops(xp).sigmoid_grad(xp, dy, y)


class Tanh(_Activation):
    """``tanh(z)``; ``tanh'(z) = 1 - tanh(z)^2``."""


    def forward(self, x: Any, *, train: bool = True) -> Any:
        y = namespace(x).tanh(x)
        self._y = y if train else None
        return y

    def backward(self, dy: Any) -> Any:
        y = self._require_cache(self._y)
        xp = namespace(y)
        return ops(xp).tanh_grad(xp, dy, y)


class ReLU(_Activation):
    """``max(z, 0)``; the derivative is 1 where ``z > 0`` and 0 elsewhere."""


    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        y = ops(xp).relu(xp, x)
        self._y = y if train else None
        return y

    def backward(self, dy: Any) -> Any:
        y = self._require_cache(self._y)
        xp = namespace(y)
        return ops(xp).relu_grad(xp, dy, y)


class Softmax(_Activation):
    """Softmax over the last axis: ``y_i = exp(z_i) / sum_j exp(z_j)``.

    The row maximum is subtracted first so ``exp`` never overflows. Backward is the
    Jacobian-vector product ``dz = y * (dy - sum(dy * y))``. For classification,
    prefer ``SoftmaxCrossEntropy`` on logits, which fuses the two.
    """


    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
        y = e / xp.sum(e, axis=-1, keepdims=True)
        self._y = y if train else None
        return y

    def backward(self, dy: Any) -> Any:
        y = self._require_cache(self._y)
        xp = namespace(y)
        return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


class GELU(_Activation):
    """Gaussian error linear unit, as ``torch.nn.GELU(approximate)``, element-wise on any
    shape.

    ``approximate="none"`` (default): ``z * Phi(z)`` with ``Phi`` the standard normal
    CDF, through ``erf`` (the library's own where it has one, else xpnet's standard-only
    one, accurate to about 1e-15). ``approximate="tanh"``:
    ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))``.

    Parameters
    ----------
    approximate : {"none", "tanh"}
        Which form, as PyTorch's argument of that name.
    """

    def __init__(self, approximate: str = "none", *, name: str | None = None):
        super().__init__(name=name)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        if self.approximate == "tanh":
            t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * (x * x * x)))
            y = 0.5 * x * (1.0 + t)
            self._cache = (x, t) if train else None
        else:  # x Phi(x); the ctx holds Phi(x) (and exp(-x^2/2) where ops computed it)
            y, ctx = ops(xp).gelu(xp, x)
            self._cache = ctx if train else None
        return y

    def backward(self, dy: Any) -> Any:
        cache = self._require_cache(self._cache)
        xp = namespace(dy)
        if self.approximate == "tanh":
            x, t = cache
            du = _SQRT_2_OVER_PI * (1.0 + (3.0 * _GELU_CUBIC) * (x * x))
            return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
        return ops(xp).gelu_grad(xp, dy, cache)

    def get_config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}


class SiLU(_Activation):
    """Sigmoid linear unit (swish), as ``torch.nn.SiLU()``: ``z * sigmoid(z)``,
    element-wise on any shape; ``a' = s (1 + z (1 - s))`` with ``s = sigmoid(z)``."""

    def __init__(self, *, name: str | None = None):
        super().__init__(name=name)
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        y, ctx = ops(xp).silu(xp, x)  # the ctx holds x (and sigmoid(x) where ops kept it)
        self._cache = ctx if train else None
        return y

    def backward(self, dy: Any) -> Any:
        ctx = self._require_cache(self._cache)
        xp = namespace(dy)
        return ops(xp).silu_grad(xp, dy, ctx)


class LeakyReLU(_Activation):
    """``z`` where ``z > 0``, else ``negative_slope * z``, as ``torch.nn.LeakyReLU``,
    element-wise on any shape. The derivative is 1 where ``z > 0`` and
    ``negative_slope`` elsewhere (at 0 too, as PyTorch).

    Parameters
    ----------
    negative_slope : float
        The slope for ``z <= 0`` (default 0.01).
    """

    def __init__(self, negative_slope: float = 0.01, *, name: str | None = None):
        super().__init__(name=name)
        self.negative_slope = _args.real(negative_slope, "negative_slope", "LeakyReLU")
        self._x: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        self._x = x if train else None
        return xp.maximum(x, 0.0) + self.negative_slope * xp.minimum(x, 0.0)

    def backward(self, dy: Any) -> Any:
        x = self._require_cache(self._x)
        xp = namespace(x)
        slope = self.negative_slope
        return dy * (slope + (1.0 - slope) * xp.astype(x > 0, dy.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}
