"""Linear: the fully connected layer ``z = W a + b``, one example per row.

Batched, with ``X`` of shape ``(n, in)``:

    forward   Z = X @ W.T + b                      W: (out, in), b: (out,)
    backward  dC/dW = delta.T @ X                   (the matmul sums over the batch)
              dC/db = sum(delta, axis=0)
              dC/dX = delta @ W                     with delta = dC/dZ, shape (n, out)
"""

from __future__ import annotations

from typing import Any

from .. import _args
from .._compat import namespace
from ..backend import Backend
from ..backends import ops
from .weighted import _Weighted


class Linear(_Weighted):
    """Fully connected layer with PyTorch's weight layout.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    bias : bool
        Whether to add a learned bias ``b`` of shape ``(out_features,)``.
    init : str
        ``"pytorch"`` (default), ``"he"``, ``"glorot"``, ``"lecun"`` or ``"normal"``.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str = "pytorch", dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        self.in_features = _args.integer(in_features, "in_features", "Linear", minimum=1)
        self.out_features = _args.integer(out_features, "out_features", "Linear", minimum=1)
        self._make_weights((self.out_features, self.in_features), bias, init, dtype,
                           backend, device)
        self._x: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        W = self.weight.value
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self.label}: expected input of shape (batch, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        self._check_input(x)
        self._x = x if train else None
        xp = namespace(x)
        return ops(xp).linear(xp, x, W, None if self.bias is None else self.bias.value)

    def backward(self, delta: Any) -> Any:
        self.backward_params(delta)
        return delta @ self.weight.value

    def backward_params(self, delta: Any) -> None:
        x = self._require_cache(self._x)
        self.weight.accumulate(delta.T @ x)
        if self.bias is not None:
            xp = namespace(delta)
            self.bias.accumulate(ops(xp).sum_axes(xp, delta, 0))

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init, "dtype": self.dtype}
