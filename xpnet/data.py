"""Putting data on the model's device once, and taking mini-batches there.

Shuffling draws a permutation on the host from a generator seeded by
``(seed, epoch)``, so epoch ``k`` sees the same order whether training ran straight
through or was resumed from a checkpoint; the permutation moves to the device and
one gather reorders the whole data set there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import Backend, backend_of


def on_backend(be: Backend, a: Any, dtype: Any, who: str, labels: bool = False) -> Any:
    """``a`` on ``be``: host data is copied there once; arrays already there pass.

    Inputs (``labels=False``) become ``dtype``, the model's float dtype, whatever they
    were (integers and bools too). Labels keep an integer or bool dtype; float targets
    become ``dtype``. Where the backend can use host memory as it is (NumPy, torch on
    the CPU) nothing is copied: training never writes into its data.
    """
    if isinstance(a, (np.ndarray, list, tuple)):
        a = np.asarray(a)
        keep = labels and (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_)
        return be.asarray(a, dtype=None if keep else dtype, copy=False)
    where = backend_of(a)
    if where != be:
        raise TypeError(
            f"{who}: data is on {where} but the model's parameters are on {be}; pass host "
            f"(NumPy) arrays or move the model with model.to(...)"
        )
    keep = labels and be.xp.isdtype(a.dtype, ("integral", "bool"))
    if not keep and a.dtype != be.dtype(dtype):
        a = be.xp.astype(a, be.dtype(dtype))
    return a


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` examples in ``epoch`` (depends only on its args)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def shuffled(be: Backend, arrays: list[Any], order: np.ndarray | None) -> list[Any]:
    """Reorder every array along axis 0 by ``order`` on the device (one gather each)."""
    if order is None:
        return arrays
    idx = be.asarray(order.astype(np.int64))
    return [be.xp.take(a, idx, axis=0) for a in arrays]


def batches(arrays: list[Any], batch_size: int) -> Iterator[tuple[int, list[Any]]]:
    """``(size, [a[s:e] for a in arrays])`` for consecutive batches along axis 0.

    The end is clamped (``min(s + bs, n)``): array-api-strict rejects a slice past it.
    """
    n = arrays[0].shape[0]
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        yield e - s, [a[s:e, ...] for a in arrays]
