"""CuPy: NumPy's interface on CUDA GPUs."""

from __future__ import annotations

import re
from typing import Any

from .base import Adapter, BackendUnavailableError, Placement, mix
from .standard import StandardOps


def cuda_index(device: str | None, who: str) -> int:
    """N of ``"cuda:N"`` (``None``, ``"cuda"`` and ``"gpu"`` mean 0)."""
    if device in (None, "cuda", "gpu"):
        return 0
    m = re.fullmatch(r"(?:cuda|gpu):(\d+)", device)
    if not m:
        raise BackendUnavailableError(
            f"{who}: unknown device {device!r}; expected 'cuda' or 'cuda:N'"
        )
    return int(m.group(1))


class CupyOps(StandardOps):
    """CuPy: its own erf and scatter-add kernels."""

    def erf(self, xp, x):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)

    def rows_add(self, xp, n_rows, index, values):
        import cupy
        import cupyx

        with values.device:
            out = cupy.zeros((n_rows, values.shape[1]), dtype=values.dtype)
        cupyx.scatter_add(out, index, values)  # repeated indices sum
        return out


class CupyAdapter(Adapter):
    name = "cupy"
    aliases = ("cp",)
    modules = ("cupy",)
    namespaces = ("array_api_compat.cupy",)
    package = "cupy"
    install = 'pip install "xpnet[cuda12]"  (or "xpnet[cuda13]" for CUDA 13)'

    def open(self, device: str | None) -> Placement:
        cupy = self.import_library()
        # On a machine with CuPy and no driver, asking CUDA for the device count raises;
        # cupy.is_available() answers instead.
        if not cupy.is_available():
            raise BackendUnavailableError(
                "cupy: no CUDA device (cupy.is_available() is False: no GPU or no driver)"
            )
        index = cuda_index(device, "cupy")
        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            raise BackendUnavailableError(
                f"cupy: no device cuda:{index}; this machine has {count} CUDA device(s)"
            )
        import array_api_compat.cupy as xp

        return Placement(xp, cupy.cuda.Device(index), f"cuda:{index}")

    def devices(self) -> list[str]:
        import cupy

        if not cupy.is_available():
            return []
        return [f"cuda:{i}" for i in range(cupy.cuda.runtime.getDeviceCount())]

    def placement_of(self, x: Any) -> Placement:
        import array_api_compat.cupy as xp

        return Placement(xp, x.device, f"cuda:{x.device.id}")

    def to_device(self, place, host, dtype, copy):
        with place.device:
            return place.xp.asarray(host, dtype=dtype)

    def to_host(self, x):
        return x.get()

    def uniform(self, like, shape, key):
        import cupy

        with like.device:
            return cupy.random.default_rng(mix(key)).random(shape, dtype=like.dtype)

    def make_ops(self) -> StandardOps:
        return CupyOps()

    def synchronize(self, device):
        device.synchronize()

    def mpi_direct(self, x, cuda_aware):
        return cuda_aware

    def flat_buffer(self, arrays):
        import cupy

        buf = cupy.concatenate([a.reshape(-1) for a in arrays])
        cupy.cuda.get_current_stream().synchronize()  # the data is ready before MPI reads it
        return buf
