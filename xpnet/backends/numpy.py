"""NumPy: the host backend, always available.

NumPy >= 2.1 implements the standard itself, and its own namespace skips a layer of
Python calls that array-api-compat's wrapper adds, so that is the namespace used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _compat
from .base import Adapter, BackendUnavailableError, Placement
from .standard import StandardOps


def numpy_namespace() -> Any:
    """NumPy's own namespace where it implements the standard, else the wrapper."""
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 1):
        return np
    import array_api_compat.numpy as xnp

    return xnp


class NumpyOps(StandardOps):
    """NumPy: reuse each fresh result in place instead of allocating temporaries."""

    on_host = True

    def linear(self, xp, x, W, b):
        y = x @ W.T
        if b is not None:
            y += b
        return y

    def keep(self, xp, dy, mask):
        return dy * mask  # bool * float32 stays float32, with no astype pass

    def sigmoid(self, xp, x):
        y = np.multiply(x, 0.5)
        np.tanh(y, out=y)
        y *= 0.5
        y += 0.5
        return y

    def sigmoid_grad(self, xp, dy, y):
        g = 1.0 - y
        g *= y
        g *= dy
        return g

    def sum_axes(self, xp, a, axes):
        return np.add.reduce(a, axis=axes)  # skips np.sum's Python wrapper


class NumpyAdapter(Adapter):
    name = "numpy"
    aliases = ("np",)
    modules = ("numpy",)
    namespaces = ("numpy", "array_api_compat.numpy")
    package = "numpy"
    install = "pip install numpy"

    def __init__(self) -> None:
        super().__init__()
        self.xp = numpy_namespace()
        _compat.prefer_namespace(np.ndarray, self.xp)

    def open(self, device: str | None) -> Placement:
        if device not in (None, "cpu"):
            raise BackendUnavailableError(
                f"numpy runs only on the CPU, not on {device!r}; for a GPU use "
                f"xn.use('cupy', device={device!r}) (pip install \"xpnet[cuda12]\")"
            )
        return Placement(self.xp, "cpu", "cpu")

    def placement_of(self, x: Any) -> Placement:
        return Placement(self.xp, "cpu", "cpu")

    def to_device(self, place, host, dtype, copy):
        return np.array(host, dtype=dtype, copy=True) if copy else np.asarray(host, dtype=dtype)

    def to_host(self, x):
        return np.asarray(x)

    def make_ops(self) -> StandardOps:
        return NumpyOps()

    def limit_threads(self, n: int) -> None:
        try:  # NumPy's BLAS pool, through threadpoolctl when installed
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=n)

    def mpi_direct(self, x, cuda_aware):
        return True

    def flat_buffer(self, arrays):
        return np.concatenate([a.reshape(-1) for a in arrays])
