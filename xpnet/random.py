"""Seeded randomness: one explicit stream object, no hidden rewinding.

A :class:`RandomStream` has a host generator (initial weights, shuffling seeds) and
a key for draws made on the device (dropout masks): the n-th array drawn under key
``k`` is seeded by ``(*k, n)`` alone, so it does not depend on what ran before.
``fit`` keys its stream by ``(seed, epoch)`` each epoch, so a resumed run draws the
same masks; ``gradcheck`` restarts its own stream before every forward pass, so each
pass sees the same mask.

``xn.seed(s)`` replaces the default stream. ``with stream.active():`` makes a stream
the one that layers draw from for a block, in this thread or task only.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import backends


class RandomStream:
    """A seeded host generator plus keyed device draws.

    Parameters
    ----------
    seed : int
        Seeds the host generator and is the key's first element.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.host = np.random.default_rng(self.seed)
        self.key: tuple[int, ...] = (self.seed,)
        self.position = 0  # arrays drawn under the current key

    def restart(self, *key: int) -> RandomStream:
        """Key the following device draws by ``key`` (default: the seed) from position 0."""
        self.key = tuple(int(k) for k in key) if key else (self.seed,)
        self.position = 0
        return self

    def next_key(self) -> tuple[int, ...]:
        """``(*key, n)`` for the n-th array drawn under the current key."""
        self.position += 1
        return (*self.key, self.position - 1)

    def uniform(self, like: Any, shape: tuple[int, ...]) -> Any:
        """Uniform [0, 1) samples of ``like``'s library, device and dtype.

        Libraries with generators of their own (torch, CuPy, JAX) draw on the device;
        the others draw on the host and copy over.
        """
        return backends.adapter_of(like).uniform(like, shape, self.next_key())

    def reserve(self, count: int) -> Callable[[Any, tuple[int, ...], int], Any]:
        """Take the next ``count`` positions of the stream at once; returns ``draw(like,
        shape, i)``, the array position ``i`` of them gives, as :meth:`uniform` would
        have drawn it there, and the same array every time it is called. A layer that
        cannot keep its masks (blockwise attention) draws them again in backward."""
        key, base = self.key, self.position
        self.position += count

        def draw(like: Any, shape: tuple[int, ...], i: int) -> Any:
            return backends.adapter_of(like).uniform(like, shape, (*key, base + i))

        return draw

    @contextlib.contextmanager
    def active(self) -> Iterator[RandomStream]:
        """Make this the stream that layers draw from, for the block."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    def __repr__(self) -> str:
        return f"RandomStream(seed={self.seed}, key={self.key}, position={self.position})"


_default = RandomStream(int(np.random.SeedSequence().entropy % 2**63))  # until seed()
_active: contextvars.ContextVar[RandomStream | None] = contextvars.ContextVar(
    "xpnet_random", default=None)


class _Compiled(threading.local):
    """The stream of the compiled call running in this thread, if any: torch.compile
    cannot trace a ContextVar, and reads a thread-local attribute as a constant."""

    stream: RandomStream | None = None


_compiled = _Compiled()


def swap_compiled(stream: RandomStream | None) -> RandomStream | None:
    """Make ``stream`` the current one for a compiled step's call, in this thread (what
    :func:`current` answers first; None: none); returns the one it replaces, to put back
    (a plain function, not a context manager: it runs every compiled step)."""
    before = _compiled.stream
    _compiled.stream = stream
    return before


def seed(value: int) -> None:
    """Seed weight initialisation, shuffling and dropout on every backend."""
    global _default
    _default = RandomStream(value)


def current() -> RandomStream:
    """The stream in force: the innermost ``stream.active()``, else the default one."""
    traced = _compiled.stream
    if traced is not None:
        return traced
    found = _active.get()
    return found if found is not None else _default
