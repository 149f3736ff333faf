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

    def erf(self, xp, x):
        special = _scipy_special()
        return super().erf(xp, x) if special is None else special.erf(x)

    def gelu(self, xp, x):
        # float32: erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, about two
        # float32 ulps near 1) in place. SciPy's erf runs in float64 and takes about six
        # times as long, and the rational form shares exp(-x^2/2) with the backward pass.
        if x.dtype != np.float32:
            return super().gelu(xp, x)
        z = np.abs(x)
        z *= _SQRT_HALF                        # |x| / sqrt 2
        gauss = np.square(z)
        np.negative(gauss, out=gauss)
        np.exp(gauss, out=gauss)               # exp(-x^2 / 2)
        t = z                                  # z is not needed again
        t *= _AS_P
        t += 1.0
        np.reciprocal(t, out=t)                # t = 1 / (1 + p z)
        poly = t * _AS_A[4]
        for a in _AS_A[3::-1]:
            poly += a
            poly *= t                          # (a1 t + ... + a5 t^5): erfc(z) / exp(-z^2)
        poly *= gauss                          # erfc(|x| / sqrt 2)
        poly *= -0.5
        poly += 0.5                            # (1 - erfc) / 2 = erf(|x| / sqrt 2) / 2
        np.copysign(poly, x, out=poly)
        poly += 0.5                            # Phi(x)
        return x * poly, (x, poly, gauss)

    def gelu_grad(self, xp, dy, ctx):
        x, phi, gauss = ctx
        if gauss is None:
            return super().gelu_grad(xp, dy, ctx)
        g = x * gauss
        g *= _INV_SQRT_2PI
        g += phi
        g *= dy
        return g

    def rows_add(self, xp, n_rows, index, values):
        if n_rows * index.shape[0] <= self.rows_add_onehot_limit:
            return self.rows_add_onehot(xp, n_rows, index, values)  # BLAS beats add.at here
        out = np.zeros((n_rows, values.shape[1]), dtype=values.dtype)
        np.add.at(out, index, values)  # unbuffered: repeated indices sum
        return out


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
#: Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) exp(-z^2), t = 1/(1 + p z)
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

_special: list[Any] = []


def _scipy_special() -> Any:
    """``scipy.special`` when SciPy is installed, else None (imported on first use)."""
    if not _special:
        try:
            import scipy.special as special
        except ImportError:
            special = None
        _special.append(special)
    return _special[0]


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
