"""Sliding windows over the spatial axes, by strided slices (shared by conv and pooling).

For each kernel offset ``o`` along an axis, the slice ``o d : o d + s (n_out - 1) + 1 : s``
(``d`` the dilation, 1 unless a convolution asks) picks the input element that offset
meets at every output position, so one strided
view per offset holds every window's element at that offset, with standard calls
only. The backward pass writes each offset's gradient back into its slice. A slice
names every element once, so no scatter-add is needed; when windows do not overlap
the slices are disjoint and a plain assignment is enough.
"""

from __future__ import annotations

import itertools
from typing import Any

from . import _args
from ._compat import device


def as_tuple(value: int | tuple[int, ...], dims: int, what: str, who: str,
             minimum: int | None = None) -> tuple[int, ...]:
    """``value`` as ``dims`` integers (one int means the same along every axis), each at
    least ``minimum`` when given."""
    items = (value,) * dims if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != dims:
        raise ValueError(f"{who}: {what} needs {dims} value(s), got {value!r}")
    return tuple(_args.integer(v, what, who, minimum=minimum) for v in items)


def extent(kernel: tuple[int, ...], dilation: tuple[int, ...] | None) -> tuple[int, ...]:
    """How far a kernel reaches along each axis: ``d (k - 1) + 1`` with dilation ``d``."""
    if dilation is None:
        return kernel
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))


def check_fits(spatial: tuple[int, ...], kernel: tuple[int, ...], who: Any,
               padding: tuple[int, ...] | None = None,
               dilation: tuple[int, ...] | None = None) -> None:
    """Raise when the kernel (its dilated extent) does not fit in the (padded) spatial size."""
    reach = extent(kernel, dilation)
    for n, k in zip(spatial, reach, strict=True):
        if k > n:
            pad = f" (after padding {padding})" if padding and any(padding) else ""
            what = (f"kernel {kernel}" if reach == kernel
                    else f"kernel {kernel} with dilation {dilation} (extent {reach})")
            raise ValueError(
                f"{getattr(who, 'label', who)}: {what} is larger than the input's "
                f"spatial size {tuple(spatial)}{pad}"
            )


def plan(spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
         who: Any, padding: tuple[int, ...] | None = None, channels_last: bool = False,
         dilation: tuple[int, ...] | None = None,
         ) -> tuple[tuple[int, ...], list[tuple]]:
    """Output sizes and, per kernel offset (row-major), the key of its input slice.

    Keys index ``(N, C, *spatial)``, or ``(N, *spatial, C)`` with ``channels_last``.
    With ``dilation`` ``d`` the offsets are ``0, d, 2d, ...`` and the output size is
    ``(n - d (k - 1) - 1) // s + 1``.
    """
    check_fits(spatial, kernel, who, padding, dilation)
    reach = extent(kernel, dilation)
    steps = (1,) * len(kernel) if dilation is None else dilation
    outs = tuple((n - k) // s + 1 for n, k, s in zip(spatial, reach, stride, strict=True))
    keys = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        inner = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                      for o, d, s, m in zip(offsets, steps, stride, outs, strict=True))
        keys.append((slice(None), *inner, slice(None)) if channels_last
                    else (slice(None), slice(None), *inner))
    return outs, keys


def overlapping(kernel: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...] | None = None) -> bool:
    """Whether two offsets' slices may name the same element: some window reaches past
    the next one's start (with dilation this may be a false alarm, which only costs an
    add where a plain assignment would do)."""
    return any(s < k for k, s in zip(extent(kernel, dilation), stride, strict=True))


def scatter(xp: Any, ops: Any, parts: Any, shape: tuple[int, ...], keys: list[tuple],
            overlap: bool) -> Any:
    """The adjoint of slicing: put ``parts[i]`` into ``keys[i]`` of zeros(``shape``),
    summing where slices overlap. ``parts`` may be a generator, so each part can be
    made just before it is put and freed right after. ``ops`` writes into slices
    (in place, or by rebinding where arrays are immutable)."""
    dx = None
    for key, part in zip(keys, parts, strict=True):
        if dx is None:
            dx = xp.zeros(shape, dtype=part.dtype, device=device(part))
        dx = ops.add_at(xp, dx, key, part) if overlap else ops.set_at(xp, dx, key, part)
    return dx
