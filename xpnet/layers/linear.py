"""Linear: the fully connected layer ``z = W a + b``, one example per row.

Batched, with ``X`` of shape ``(n, in)``:

    forward   Z = X @ W.T + b                      W: (out, in), b: (out,)
    kept      X (training only)
    backward  dC/dW = delta.T @ X                   (the matmul sums over the batch)
              dC/db = sum(delta, axis=0)
              dC/dX = delta @ W                     with delta = dC/dZ, shape (n, out)

Any leading shape works, as in PyTorch: ``(..., in)`` is flattened to ``(n, in)``
with ``n`` the product of the leading axes (``(N, L, E)`` sequences: every position
is a row), the same two matmuls run, and the results get the leading axes back, so
the weight and bias gradients sum over all leading axes. 2-D input takes the direct
path, with no reshape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _args
from .. import init as initializers
from .._compat import namespace
from ..backend import Backend, backend_of, dtype_name
from ..backends import ops
from .base import Layer, Parameter
from .weighted import _Weighted


class Linear(_Weighted):
    """Fully connected layer with PyTorch's weight layout.

    Input ``(..., in_features)``, output ``(..., out_features)``: any leading axes
    (``(N, in)``, ``(N, L, in)``, or one example ``(in,)``).

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    bias : bool
        Whether to add a learned bias ``b`` of shape ``(out_features,)``.
    init : str, initialiser or callable
        ``"pytorch"`` (default), ``"he"``, ``"glorot"``, ``"lecun"`` or ``"normal"``, an
        initialiser of :mod:`xpnet.init` (``xn.init.normal(0.02)``) or a callable
        ``(shape, rng) -> array`` (which checkpoints cannot describe: see xpnet.init).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str | dict | Callable = "pytorch",
                 dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        self.in_features = _args.integer(in_features, "in_features", "Linear", minimum=1)
        self.out_features = _args.integer(out_features, "out_features", "Linear", minimum=1)
        self._make_weights(bias, init, dtype, backend, device)
        self._x: Any = None
        self._lead: tuple[int, ...] | None = None  # leading axes of an input that is not 2-D

    positionwise = True

    @classmethod
    def tied_to(cls, embedding: Layer, *, bias: bool = False, name: str | None = None
                ) -> Linear:
        """An output head that shares ``embedding``'s table: ``logits = x @ W.T`` (``+ b``
        with ``bias``), ``W`` the embedding's ``(num_embeddings, embedding_dim)`` weight,
        which is a Linear's ``(out, in)`` layout already (weight tying, as GPT-2 and
        PyTorch's ``head.weight = embedding.weight``).

        The weight is one Parameter in both layers: listed once in ``parameters()`` and
        ``state_dict()`` (under the embedding's name, which comes first in a model), its
        gradient the sum of both uses, updated once. Checkpoints record the tie
        (``Layer.ties``) and ``xn.load`` makes it again. Input ``(..., embedding_dim)``,
        output ``(..., num_embeddings)``.
        """
        weight = getattr(embedding, "weight", None)
        if not isinstance(weight, Parameter) or len(weight.shape) != 2:
            raise TypeError(f"Linear.tied_to: expected an Embedding (a layer with a 2-D "
                            f"weight), got {embedding!r}")
        num, dim = weight.shape
        w = weight.value
        be = backend_of(w)
        head = cls(dim, num, bias=bias, dtype=dtype_name(be.xp, w.dtype), backend=be,
                   name=name)
        head._params[0] = head.weight = weight
        return head

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            return self._forward_any(x, train)
        self._check_input(x)
        self._x = x if train else None
        self._lead = None
        xp = namespace(x)
        return ops(xp).linear(xp, x, self.weight.value,
                              None if self.bias is None else self.bias.value)

    def _forward_any(self, x: Any, train: bool) -> Any:
        """``(..., in)``: as rows of one ``(n, in)`` matrix, then the leading axes back."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self.label}: expected input of shape (batch, {self.in_features}), "
                f"got {tuple(x.shape)}; any leading axes may come before the "
                f"{self.in_features} features: (..., {self.in_features})"
            )
        self._check_input(x)
        xp = namespace(x)
        lead = tuple(x.shape[:-1])
        x2 = xp.reshape(x, (math.prod(lead), self.in_features))
        y = ops(xp).linear(xp, x2, self.weight.value,
                           None if self.bias is None else self.bias.value)
        self._x = x2 if train else None
        self._lead = lead
        return xp.reshape(y, (*lead, self.out_features))

    def _rows(self, delta: Any) -> Any:
        """``delta`` as the ``(n, out)`` rows forward multiplied (a view)."""
        if delta.ndim == 2:
            return delta
        return namespace(delta).reshape(delta, (math.prod(self._lead or ()), self.out_features))

    def backward(self, delta: Any) -> Any:
        delta = self._rows(delta)
        self.backward_params(delta)
        dx = delta @ self.weight.value
        if self._lead is None:
            return dx
        return namespace(dx).reshape(dx, (*self._lead, self.in_features))

    def backward_params(self, delta: Any) -> None:
        x = self._require_cache(self._x)
        delta = self._rows(delta)
        self.weight.accumulate(delta.T @ x)
        if self.bias is not None:
            xp = namespace(delta)
            self.bias.accumulate(ops(xp).sum_axes(xp, delta, 0))

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": initializers.config_of(self.init),
                "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``weight (out_features, in_features)`` and, with ``bias``, ``bias
        (out_features,)``."""
        return cls._weight_and_bias((config["out_features"], config["in_features"]), config)
