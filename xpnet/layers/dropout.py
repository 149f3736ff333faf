"""Dropout: zero each input with probability ``p`` while training.

Kept inputs are scaled by ``1 / (1 - p)`` ("inverted dropout"), so inference is the
identity. The mask is drawn on the input's device, by the library's own generator where it
has one, from the random stream in force (``xpnet.random``: ``xn.seed``, or the
``(seed, epoch)`` stream of ``fit``); backward multiplies by the same mask.
"""

from __future__ import annotations

from typing import Any

from .. import _args, random
from .._compat import namespace
from .base import Layer


class Dropout(Layer):
    """Randomly zero inputs with probability ``p`` in training; identity in inference."""

    positionwise = True

    def __init__(self, p: float = 0.5, *, name: str | None = None):
        super().__init__(name=name)
        self.p = _args.real(p, "p", "Dropout", low=0.0, high=1.0, high_open=True)
        self._mask: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if not train or self.p == 0.0:
            self._mask = None
            return x
        xp = namespace(x)
        keep = random.current().uniform(x, tuple(x.shape)) >= self.p
        self._mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dy: Any) -> Any:
        if self.p == 0.0:
            return dy
        return dy * self._require_cache(self._mask)

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}
