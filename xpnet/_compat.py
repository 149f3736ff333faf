"""Gaps in the array API standard, filled with standard calls only.

Nothing here knows any particular array library: per-library fast paths are the
adapters' ops (``xpnet.backends``). An adapter may tell :func:`namespace` which
namespace its array type should get (NumPy's own, where it implements the standard).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

_namespaces: dict[type, Any] = {}


def prefer_namespace(array_type: type, xp: Any) -> None:
    """Make :func:`namespace` answer ``xp`` for arrays of ``array_type``."""
    _namespaces[array_type] = xp


def namespace(x: Any) -> Any:
    """The array API namespace of ``x``, cached by array type.

    ``array_namespace`` inspects its argument each call (about 15 µs on
    array-api-strict); the namespace depends only on the type, so look it up once.
    """
    t = type(x)
    xp = _namespaces.get(t)
    if xp is None:
        xp = _namespaces[t] = array_api_compat.array_namespace(x)
    return xp


def device(x: Any) -> Any:
    """The device ``x`` lives on.

    The standard's ``x.device`` attribute first (NumPy >= 2, torch, CuPy,
    JAX >= 0.4.27 and array-api-strict have it); array-api-compat's helper otherwise.
    """
    d = getattr(x, "device", None)
    if d is None or callable(d):
        return array_api_compat.device(x)
    return d


_integral: dict[Any, bool] = {}


def is_integral(xp: Any, dtype: Any) -> bool:
    """``xp.isdtype(dtype, "integral")``, remembered (NumPy's takes ~5 us a call)."""
    key = (xp, dtype)
    found = _integral.get(key)
    if found is None:
        found = _integral[key] = bool(xp.isdtype(dtype, "integral"))
    return found


def pad_axes(xp: Any, x: Any, pads: tuple[int, ...], first: int | None = None) -> Any:
    """Zero-pad ``len(pads)`` consecutive axes of ``x``, from axis ``first`` (default: the
    trailing ones), by ``pads[i]`` on both sides.

    The standard has no ``pad``; concatenating zero blocks works on every backend.
    """
    first = x.ndim - len(pads) if first is None else first
    for i, p in enumerate(pads):
        if p == 0:
            continue
        shape = list(x.shape)
        shape[first + i] = p
        z = xp.zeros(tuple(shape), dtype=x.dtype, device=device(x))
        x = xp.concat([z, x, z], axis=first + i)
    return x
