"""One adapter per array library, and the registry that finds them.

Adding a library is one file here with an :class:`Adapter` subclass, plus one line
below that registers it. Nothing outside this package imports an optional array
library; everything else asks the registry: :func:`adapter` by name,
:func:`adapter_of` for an array, :func:`ops` for a namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .base import Adapter, BackendUnavailableError, Communicator, Placement
from .cupy import CupyAdapter
from .jax import JaxAdapter
from .numpy import NumpyAdapter
from .standard import StandardOps
from .strict import StrictAdapter
from .torch import TorchAdapter

ADAPTERS: dict[str, Adapter] = {}
_ALIASES: dict[str, str] = {}


def register(a: Adapter) -> Adapter:
    """Make ``a`` usable by name (and its aliases) and for its arrays."""
    ADAPTERS[a.name] = a
    for alias in a.aliases:
        _ALIASES[alias] = a.name
    _by_type.clear()
    _by_namespace.clear()
    return a


_by_type: dict[type, Adapter] = {}
_by_namespace: dict[Any, StandardOps] = {}

for _adapter in (NumpyAdapter(), CupyAdapter(), TorchAdapter(), JaxAdapter(), StrictAdapter()):
    register(_adapter)


def canonical(name: str) -> str:
    """The registered name for ``name`` or one of its aliases (case and spaces ignored)."""
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string such as 'numpy' or 'auto' (or a "
                        f"Backend), got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in ADAPTERS:
        raise ValueError(f"unknown backend {name!r}; expected one of: auto, "
                         f"{', '.join(ADAPTERS)}")
    return key


def adapter(name: str) -> Adapter:
    """The adapter registered as ``name`` (or an alias of it)."""
    return ADAPTERS[canonical(name)]


def adapter_of(x: Any) -> Adapter:
    """The adapter of the library that made array ``x``; TypeError for anything else."""
    t = type(x)
    found = _by_type.get(t)
    if found is None:
        found = next((a for a in ADAPTERS.values() if a.owns(x)), None)
        if found is None:
            raise TypeError(f"not an array of a supported backend: {t.__name__}")
        _by_type[t] = found
    return found


def ops(xp: Any) -> StandardOps:
    """The fastest primitives for namespace ``xp`` (the standard ones by default)."""
    # keyed by the namespace's name: torch.compile traces a lookup by string, not by module
    name = getattr(xp, "__name__", "")
    found = _by_namespace.get(name or id(xp))
    if found is None:
        owner = next((a for a in ADAPTERS.values() if name in a.namespaces), None) or next(
            (a for a in ADAPTERS.values() if name.partition(".")[0] in a.modules), None)
        found = _by_namespace[name or id(xp)] = (owner.ops if owner is not None
                                                  else StandardOps())
    return found


def limit_threads(n: int) -> None:
    """At most ``n`` CPU threads in every library's own pool (BLAS, torch)."""
    for a in ADAPTERS.values():
        a.limit_threads(n)


def prefer_threads(n: int) -> None:
    """Ask the libraries that size their CPU pool once, at start (JAX), for ``n``
    threads, before they start; for an entry point such as ``xpnet train``."""
    for a in ADAPTERS.values():
        a.prefer_threads(n)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """At most ``n`` CPU threads in every library's own pool (BLAS and OpenMP through
    threadpoolctl, torch's intra-op pool) inside the block; the counts found are put
    back when it ends, error or not."""
    restores = []
    try:
        for a in ADAPTERS.values():
            restore = a.set_threads(n)
            if restore is not None:
                restores.append(restore)
        yield
    finally:
        for restore in reversed(restores):
            restore()


__all__ = ["ADAPTERS", "Adapter", "BackendUnavailableError", "Communicator", "Placement",
           "StandardOps",
           "adapter", "adapter_of", "canonical", "limit_threads", "ops", "prefer_threads",
           "register", "threads"]
