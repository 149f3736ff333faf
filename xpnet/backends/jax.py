"""JAX: immutable arrays, so every update rebinds instead of writing in place."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BackendUnavailableError, Placement, mix
from .cupy import cuda_index
from .standard import StandardOps


class JaxOps(StandardOps):
    """JAX arrays cannot be written: the updates return new arrays."""

    def sub_scaled_(self, xp, value, lr, g):
        return value - lr * g

    def scale_add_(self, xp, a, beta, g, alpha=1.0):
        return beta * a + (g if alpha == 1.0 else alpha * g)

    def add_at(self, xp, target, key, value):
        return target.at[key].add(value)

    def set_at(self, xp, target, key, value):
        return target.at[key].set(value)

    def erf(self, xp, x):
        import jax

        return jax.lax.erf(x)

    def rows_add(self, xp, n_rows, index, values):
        out = xp.zeros((n_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return out.at[index].add(values)  # a scatter-add: repeated indices sum


class JaxAdapter(Adapter):
    name = "jax"
    modules = ("jax", "jaxlib")
    namespaces = ("jax.numpy",)
    package = "jax"
    install = 'pip install "xpnet[jax]"'

    def open(self, device: str | None) -> Placement:
        jax = self.import_library()
        # float64 parameters must really be float64 (gradcheck, astype("float64")).
        # Every array xpnet makes names its dtype, so the float32 default is unaffected.
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as xp

        if device in (None, "cpu"):
            return Placement(xp, jax.devices("cpu")[0], "cpu")
        index = cuda_index(device, "jax")
        gpus = self._gpus()
        if index >= len(gpus):
            raise BackendUnavailableError(
                f"jax: no device cuda:{index} (jax sees {len(gpus)} GPU(s); "
                f'install a CUDA build: pip install "jax[cuda12]")'
            )
        return Placement(xp, gpus[index], f"cuda:{index}")

    @staticmethod
    def _gpus() -> list[Any]:
        import jax

        try:
            return jax.devices("gpu")
        except RuntimeError:
            return []

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(len(self._gpus()))]

    def placement_of(self, x: Any) -> Placement:
        import jax.numpy as xp

        dev = x.device
        return Placement(xp, dev, "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}")

    def to_device(self, place, host, dtype, copy):
        import jax

        return jax.device_put(place.xp.asarray(host, dtype=dtype, copy=True), place.device)

    def to_host(self, x):
        import numpy as np

        return np.asarray(x)

    def uniform(self, like, shape, key):
        import jax

        with jax.default_device(like.device):
            return jax.random.uniform(jax.random.key(mix(key) % 2**32), shape, dtype=like.dtype)

    def make_ops(self) -> StandardOps:
        return JaxOps()

    def synchronize(self, device):
        """Nothing to wait on: JAX has no device-wide barrier, and reading a result
        (or ``block_until_ready``) waits for the work that makes it."""
