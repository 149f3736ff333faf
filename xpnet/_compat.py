"""The one place for gaps in the array API standard and for per-backend fast paths.

Layers, losses and optimizers call these helpers instead of reaching for a library.
Each helper has a standard-only path that every backend can run; a fast path for one
library is added only beside it, with a test that the two agree.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

_namespaces: dict[type, Any] = {}


def namespace(x: Any) -> Any:
    """The array API namespace of ``x``, cached by array type.

    ``array_namespace`` inspects its argument each call (about 15 µs on
    array-api-strict); the namespace depends only on the type, so look it up once.
    """
    t = type(x)
    xp = _namespaces.get(t)
    if xp is None:
        xp = array_api_compat.array_namespace(x)
        _namespaces[t] = xp
    return xp


def device(x: Any) -> Any:
    """The device ``x`` lives on (``"cpu"`` for NumPy)."""
    if type(x) is np.ndarray:
        return "cpu"
    return array_api_compat.device(x)


def is_host(xp: Any) -> bool:
    """Whether arrays of ``xp`` already live in host memory (NumPy only).

    Checks that need a value on the host (``bool(...)``) are free there and run at
    once; elsewhere they would stall a GPU, so they are deferred.
    """
    return xp is _np_compat()


def _np_compat() -> Any:
    import array_api_compat.numpy as xnp

    return xnp


def is_jax(xp: Any) -> bool:
    return xp.__name__.startswith("jax")


def library(x: Any) -> str:
    """The short name of the library that made ``x`` (for messages)."""
    mod = type(x).__module__.split(".")[0]
    return {"jaxlib": "jax", "array_api_strict": "array_api_strict"}.get(mod, mod)


def check_same_place(who: str, x: Any, ref: Any, what: str = "input") -> None:
    """Raise a clear error when ``x`` is from another library or device than ``ref``.

    Only metadata is read (types and device objects), never array values.
    """
    if type(x) is not type(ref):
        if library(x) != library(ref):
            raise TypeError(
                f"{who}: {what} is a {library(x)} array ({type(x).__name__}) but the "
                f"parameters are {library(ref)} arrays; move the data with "
                f"backend.asarray(...) or the model with model.to(...)"
            )
        return
    if type(x) is np.ndarray:
        return
    dx, dr = device(x), device(ref)
    if dx != dr:
        raise ValueError(
            f"{who}: {what} is on device {dx} but the parameters are on {dr}; "
            f"move one of them so both are on the same device"
        )


def sub_(xp: Any, value: Any, delta: Any) -> Any:
    """``value - delta``, in place where the library allows it (not JAX).

    Returns the array to rebind, so immutable arrays work the same way.
    """
    if is_jax(xp):
        return value - delta
    value -= delta
    return value


def check_labels_on_host(who: str, labels: Any, n_classes: int) -> None:
    """Raise at once for integer labels outside ``[0, n_classes)`` held in host memory."""
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{who}: labels must lie in [0, {n_classes - 1}] for {n_classes} classes, "
            f"got values from {lo} to {hi}"
        )
