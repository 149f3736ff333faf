"""Element-wise activations ``a = act(z)`` and softmax.

Backward is the chain rule through the activation: ``dC/dz = dC/da * act'(z)``,
with ``act'`` written in terms of the saved output where that is cheaper.
"""

from __future__ import annotations

from typing import Any

from .._compat import namespace
from ..backends import ops
from .base import Layer


class _Activation(Layer):
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
        return dy * (1.0 - y * y)


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
