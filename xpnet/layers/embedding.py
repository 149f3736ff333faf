"""Embedding: a lookup table of learned vectors, one row per token id.

With integer ids ``X`` of any shape and the table ``W`` of shape ``(num, D)``:

    forward   Y[..., :] = W[X[...], :]           (a row gather: Y has shape X.shape + (D,))
    kept      the ids, flattened (training only)
    backward  dC/dW[r] = sum of dC/dY[i] over every position i whose id is r
              (repeated ids sum: a scatter-add, ``ops(xp).rows_add``)
              no input gradient: the ids are integers, so backward returns None

The standard has ``take`` for the gather but no scatter-add; ``rows_add`` is a
one-hot matmul or a sort-based segment sum in standard calls, and the library's own
scatter-add where an adapter has one (NumPy ``np.add.at``, torch ``index_add_``, JAX
``.at[].add``, CuPy ``cupyx.scatter_add``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _args, random
from .. import init as initializers
from .._compat import is_integral, namespace
from ..backend import Backend, backend_of, check_same_place, dtype_name, resolve
from ..backends import ops
from .base import Layer


class Embedding(Layer):
    """A table of ``num_embeddings`` vectors of ``embedding_dim`` values, looked up by
    integer id, as ``torch.nn.Embedding(num_embeddings, embedding_dim)``.

    Input: integer ids of any shape, e.g. ``(N, L)``, each in ``[0, num_embeddings)``.
    Output: float vectors of shape ``(*input.shape, embedding_dim)``, e.g. ``(N, L, D)``.

    Ids of any integer dtype are taken (torch's gather wants int32 or int64: others are
    converted on the device). Ids out of range (negative ones included) are refused with
    a ValueError naming them where they live in host memory: NumPy arrays given to this
    layer, and host ids given to ``fit``, ``evaluate`` and ``predict`` (checked before
    they are uploaded). On a device that check would need a host read that stalls it,
    so there an id outside ``[0, num_embeddings)`` gives a row of NaN, on every backend
    (the loss turns NaN, which ``fit`` reports), and sends no gradient back; ids are
    never wrapped around (as ``-1`` for the last row, or JAX's int32 index arithmetic).

    Parameters
    ----------
    num_embeddings : int
        Rows of the table: the number of distinct ids.
    embedding_dim : int
        Length ``D`` of each vector.
    init : str, initialiser or callable
        How the table is drawn: ``"normal"`` (default), N(0, 1) as PyTorch does; GPT-2
        uses ``xn.init.normal(0.02)`` (see :mod:`xpnet.init`).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the table lives (default: the current backend).

    Attributes
    ----------
    weight : Parameter, shape (num_embeddings, embedding_dim)
        The table.
    """

    input_dtype = "int64"  # what a Graph or a summary probes it with
    positionwise = True

    @property
    def id_count(self) -> int:  # type: ignore[override]
        """Ids this layer takes: ``[0, num_embeddings)`` (fit checks host ids against it)."""
        return self.num_embeddings

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 init: str | dict | Callable = "normal",
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        self.num_embeddings = _args.integer(num_embeddings, "num_embeddings", "Embedding",
                                            minimum=1)
        self.embedding_dim = _args.integer(embedding_dim, "embedding_dim", "Embedding",
                                           minimum=1)
        try:
            self.init = initializers.resolve(init)
        except ValueError as e:
            raise ValueError(f"Embedding: {e}") from None
        self.dtype = _args.float_dtype(dtype, "Embedding")
        shape = self.param_shapes(self.get_config())["weight"]
        rng = random.current().host
        table = (rng.standard_normal(shape) if self.init == "normal" else
                 initializers.draw(self.init, shape, False, rng)[0])
        self.weight = self._new_parameter("weight", table, dtype,
                                          backend=resolve(backend, device))
        self._ids: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        W = self.weight.value
        check_same_place(self, x, W)
        xp = namespace(x)
        if not is_integral(xp, x.dtype):
            raise TypeError(f"{self.label}: expected integer ids, got an input of dtype "
                            f"{dtype_name(backend_of(x).xp, x.dtype)}; convert it, e.g. "
                            f"xp.astype(x, xp.int64)")
        ids = xp.reshape(x, (math.prod(x.shape),))
        on_host = ops(xp).on_host
        if on_host and ids.shape[0]:
            self._check_range(xp, ids)
        if ids.dtype not in (xp.int32, xp.int64):
            ids = xp.astype(ids, xp.int64)  # torch's gather takes int32 and int64 only
        valid = None
        if not on_host:  # no host read: an out-of-range id looks up row 0, made NaN below
            valid = (ids >= 0) & (ids < self.num_embeddings)
            ids = ids * xp.astype(valid, ids.dtype)
        self._ids = (ids, valid) if train else None
        rows = xp.take(W, ids, axis=0)
        if valid is not None:
            rows = xp.where(valid[:, None], rows, xp.full_like(rows, math.nan))
        return xp.reshape(rows, (*x.shape, self.embedding_dim))

    def _check_range(self, xp: Any, ids: Any) -> None:
        """Ids within ``[0, num_embeddings)``: host memory only, where reading is free."""
        lo, hi = int(xp.min(ids)), int(xp.max(ids))
        if lo < 0 or hi >= self.num_embeddings:
            raise ValueError(f"{self.label}: ids must lie in [0, {self.num_embeddings - 1}], "
                             f"got values from {lo} to {hi}")

    def backward(self, dy: Any) -> None:
        self.backward_params(dy)
        return None

    def backward_params(self, dy: Any) -> None:
        ids, valid = self._require_cache(self._ids)
        xp = namespace(dy)
        rows = xp.reshape(dy, (ids.shape[0], self.embedding_dim))
        if valid is not None:  # a NaN row is a constant: nothing flows back through it
            rows = xp.where(valid[:, None], rows, xp.zeros_like(rows))
        self.weight.accumulate(ops(xp).rows_add(xp, self.num_embeddings, ids, rows))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"num_embeddings": self.num_embeddings,
                                  "embedding_dim": self.embedding_dim}
        if self.init != "normal":  # named only when not the default
            config["init"] = initializers.config_of(self.init)
        return {**config, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The table: ``{"weight": (num_embeddings, embedding_dim)}``."""
        return {"weight": (config["num_embeddings"], config["embedding_dim"])}
