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
import math
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


class Lattice:
    """Where every tap of every window sits in a padded batch stored flat: the plan of
    an im2col gather done as one strided view (``as_strided``) rather than one slice
    per kernel offset. Pure integer arithmetic, no arrays.

    One channel of the whole padded batch is stored as ``flat_size`` elements: example
    after example, each padded image row-major (``P`` elements), then zeros. A window
    of the grid starts at flat element ``sum(g_i * grid_steps_i)`` (``g`` its grid
    index) and its tap ``t`` (a kernel offset) sits ``sum(t_i * tap_steps_i)`` further.

    With stride 1 along every axis and ``flat=True`` the grid is *one* axis: every
    element of the flat batch starts a window (output row ``i`` of example ``m`` starts
    ``m P + i W_p`` elements in, the next window one element on), so each tap's
    elements for the whole batch are one contiguous run of ``N P``. The price: the
    windows that start in the padding (the last ``W_p - W_out`` columns of a row, the
    last rows of an image) are computed and dropped (``crop``); ``flat_size`` leaves
    room for the very last ones to read zeros. Otherwise the grid is ``(N, *out)``,
    the output positions themselves, ``stride`` apart, and nothing is dropped.
    """

    def __init__(self, batch: int, spatial: tuple[int, ...], kernel: tuple[int, ...],
                 stride: tuple[int, ...], padding: tuple[int, ...],
                 dilation: tuple[int, ...] | None, flat: bool):
        dilation = (1,) * len(kernel) if dilation is None else tuple(dilation)
        self.batch, self.kernel, self.padding = batch, tuple(kernel), tuple(padding)
        self.spatial = tuple(spatial)
        self.padded = tuple(n + 2 * p for n, p in zip(spatial, padding, strict=True))
        reach = extent(self.kernel, dilation)
        self.outs = tuple((n - k) // s + 1
                          for n, k, s in zip(self.padded, reach, stride, strict=True))
        self.padded_size = math.prod(self.padded)
        # elements between neighbours along each padded axis, row-major
        steps = [math.prod(self.padded[i + 1:]) for i in range(len(self.padded))]
        self.tap_steps = tuple(d * st for d, st in zip(dilation, steps, strict=True))
        self.flat = bool(flat) and all(s == 1 for s in stride)
        if self.flat:
            self.grid: tuple[int, ...] = (batch * self.padded_size,)
            self.grid_steps: tuple[int, ...] = (1,)
        else:
            self.grid = (batch, *self.outs)
            self.grid_steps = (self.padded_size,
                               *(s * st for s, st in zip(stride, steps, strict=True)))
        last_tap = sum((k - 1) * t for k, t in zip(self.kernel, self.tap_steps, strict=True))
        last_start = sum((g - 1) * t for g, t in zip(self.grid, self.grid_steps, strict=True))
        self.stored = batch * self.padded_size  # the padded batch, before the tail
        self.flat_size = max(self.stored, last_tap + last_start + 1)
        self.taps = list(itertools.product(*(range(k) for k in self.kernel)))
        self.tap_offsets = [sum(t * s for t, s in zip(tap, self.tap_steps, strict=True))
                            for tap in self.taps]

    @property
    def positions(self) -> int:
        """Windows on the grid per channel, for the whole batch, dropped ones included."""
        return math.prod(self.grid)

    def waste(self) -> float:
        """The fraction of the grid's windows that ``crop`` drops."""
        return 1.0 - self.batch * math.prod(self.outs) / self.positions

    def crop(self) -> tuple[tuple[int, ...], tuple]:
        """``(shape, key)``: reshape the grid axis (or axes) to ``shape`` ``(N, ...)``
        and index with ``key`` to keep only the output positions, ``(N, *out)``."""
        if not self.flat:
            return self.grid, tuple(slice(None) for _ in self.grid)
        return (self.batch, *self.padded), (slice(None), *(slice(0, o) for o in self.outs))

    def interior(self) -> tuple:
        """The key of the unpadded input within ``(N, *padded)``."""
        return (slice(None), *(slice(p, p + n)
                               for p, n in zip(self.padding, self.spatial, strict=True)))
