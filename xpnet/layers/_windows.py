"""Sliding windows over the spatial axes, by strided slices (shared by conv and pooling).

For each kernel offset ``o`` along an axis, the slice ``o : o + s (n_out - 1) + 1 : s``
picks the input element that offset meets at every output position. Stacking those
slices gives every window at once (im2col) with standard calls only; the backward pass
adds each offset's gradient back into its slice, which names every element once, so
no scatter-add is needed.
"""

from __future__ import annotations

import itertools
from typing import Any

from .._compat import add_into, device


def as_tuple(value: int | tuple[int, ...], dims: int, what: str, who: str) -> tuple[int, ...]:
    t = (value,) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != dims:
        raise ValueError(f"{who}: {what} needs {dims} value(s), got {value!r}")
    return t


def plan(spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
         who: str, padding: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], list[tuple]]:
    """Output sizes and, per kernel offset, the key selecting its input elements."""
    for n, k in zip(spatial, kernel, strict=True):
        if k > n:
            pad = f" (after padding {padding})" if padding and any(padding) else ""
            raise ValueError(
                f"{who}: kernel {kernel} is larger than the input's spatial size "
                f"{tuple(spatial)}{pad}"
            )
    outs = tuple((n - k) // s + 1 for n, k, s in zip(spatial, kernel, stride, strict=True))
    keys = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        keys.append((slice(None), slice(None)) + tuple(
            slice(o, o + s * (m - 1) + 1, s)
            for o, s, m in zip(offsets, stride, outs, strict=True)))
    return outs, keys


def gather(xp: Any, x: Any, keys: list[tuple]) -> Any:
    """Every window: ``(N, C, *out, K)`` with K = prod(kernel), offsets row-major."""
    return xp.stack([x[k] for k in keys], axis=-1)


def scatter(xp: Any, dwin: Any, shape: tuple[int, ...], keys: list[tuple]) -> Any:
    """The adjoint of ``gather``: sum window gradients ``(N, C, *out, K)`` into ``shape``."""
    dx = xp.zeros(shape, dtype=dwin.dtype, device=device(dwin))
    for i, key in enumerate(keys):
        dx = add_into(xp, dx, key, dwin[..., i])
    return dx
