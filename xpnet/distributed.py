"""Data-parallel training over MPI (through ``mpi4py``); xpnet has no networking of its own.

Every rank holds the whole model. ``fit(..., distributed=True)`` gives each rank its
own slice of every global mini-batch, sums the ranks' gradients before each optimizer
step, and so takes the same step a single process would take on the whole batch.

A :class:`Communicator` is what ``fit`` talks to:

- :class:`SingleProcess`: one rank, every operation a no-op;
- :class:`MPICommunicator`: ``Allreduce``/``Bcast`` on array buffers. NumPy arrays go
  directly. CuPy arrays go directly when the MPI library is CUDA-aware (checked, not
  guessed: :func:`cuda_aware`), otherwise they are staged through host memory, as
  are arrays of every other device (torch, JAX, array-api-strict's devices); results
  always come back on the device they came from. Several GPUs in one machine could use
  NCCL instead (``cupyx.distributed``): a communicator with the same methods is the
  seam for it.

Run ``mpiexec -n 2 xpnet train --distributed`` or a script calling ``fit`` likewise.
"""

from __future__ import annotations

import ctypes
import os
import sys
import traceback
from typing import Any

import numpy as np

from .backend import backend_of, to_numpy


class Communicator:
    """What data-parallel training needs from a group of processes."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce_sum(self, arrays: list[Any]) -> list[Any]:
        """Element-wise sums over ranks, each on the device its input came from."""
        return arrays

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        """``root``'s arrays on every rank (same shapes, dtypes and devices as given)."""
        return arrays

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        """A small JSON-like Python value from ``root`` on every rank."""
        return value

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (after an error on this one)."""
        raise SystemExit(code)


class SingleProcess(Communicator):
    """One process: nothing to exchange."""


def cuda_aware() -> bool:
    """Whether the MPI library can read CUDA device memory directly.

    ``XPNET_MPI_CUDA_AWARE=1`` or ``0`` decides when set. Otherwise the MPI library is
    asked: Open MPI's ``MPIX_Query_cuda_support()`` or MPICH's
    ``MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &flag)``. A library that answers
    neither is taken as not CUDA-aware, so device arrays are staged through the host.
    """
    forced = os.environ.get("XPNET_MPI_CUDA_AWARE")
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    try:
        lib = ctypes.CDLL(None)
    except OSError:
        return False
    query = getattr(lib, "MPIX_Query_cuda_support", None)
    if query is not None:
        return bool(query())
    gpu_query = getattr(lib, "MPIX_GPU_query_support", None)
    if gpu_query is not None:
        flag = ctypes.c_int(0)
        if gpu_query(0, ctypes.byref(flag)) == 0:  # 0: MPIX_GPU_SUPPORT_CUDA
            return bool(flag.value)
    return False


class MPICommunicator(Communicator):
    """Ranks of an MPI communicator (``MPI.COMM_WORLD`` by default)."""

    def __init__(self, comm: Any = None, *, share_cores: bool = True):
        """``share_cores``: limit BLAS and torch threads of each rank to its share of
        this machine's cores (as ``torchrun`` does). Ranks that each start one thread
        per core fight for the cores: on 2 cores, 2 ranks ran 100x slower that way."""
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                'distributed training needs mpi4py and an MPI runtime: pip install "xpnet[mpi]"'
            ) from None
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        self.direct_cuda = cuda_aware()
        if share_cores and self.local_size > 1:
            limit_threads(max(1, (os.cpu_count() or 1) // self.local_size))

    def _direct(self, a: Any) -> bool:
        """Whether MPI can use ``a``'s memory as it is (host NumPy, or CUDA-aware CuPy)."""
        if isinstance(a, np.ndarray):
            return True
        return type(a).__module__.startswith("cupy") and self.direct_cuda

    def _flat(self, arrays: list[Any]) -> tuple[Any, bool]:
        """One contiguous buffer of every array, and whether it stayed on the device."""
        direct = all(self._direct(a) for a in arrays)
        if direct:
            xp = type(arrays[0]).__module__.split(".")[0]
            mod = np if xp == "numpy" else __import__("cupy")
            return mod.concatenate([a.reshape(-1) for a in arrays]), True
        return np.concatenate([to_numpy(a).reshape(-1) for a in arrays]), False

    def _unflat(self, buf: Any, like: list[Any], direct: bool) -> list[Any]:
        out, start = [], 0
        for a in like:
            size = int(np.prod(a.shape))
            part = buf[start:start + size].reshape(tuple(a.shape))
            start += size
            if not direct:  # staged: back to the device it came from
                be = backend_of(a)
                part = be.asarray(part, dtype=a.dtype)
            out.append(part)
        return out

    def _check_dtypes(self, arrays: list[Any]) -> None:
        kinds = {str(a.dtype) for a in arrays}
        if len(kinds) > 1:
            raise TypeError(f"MPICommunicator: arrays of one call must share a dtype, got {kinds}")

    def allreduce_sum(self, arrays: list[Any]) -> list[Any]:
        if not arrays or self.size == 1:
            return arrays
        self._check_dtypes(arrays)
        buf, direct = self._flat(arrays)
        if direct and not isinstance(buf, np.ndarray):
            __import__("cupy").cuda.get_current_stream().synchronize()  # data ready for MPI
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return self._unflat(buf, arrays, direct)

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        if not arrays or self.size == 1:
            return arrays
        self._check_dtypes(arrays)
        buf, direct = self._flat(arrays)
        self.comm.Bcast(buf, root=root)
        return self._unflat(buf, arrays, direct)

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        return self.comm.bcast(value, root=root)

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        self.comm.Abort(code)


def limit_threads(n: int) -> None:
    """At most ``n`` threads for BLAS (through threadpoolctl, when installed) and torch."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def resolve(distributed: bool | Communicator | None) -> Communicator:
    """The communicator ``fit(distributed=...)`` asks for."""
    if distributed is None or distributed is False:
        return SingleProcess()
    if distributed is True:
        return MPICommunicator()
    if isinstance(distributed, Communicator):
        return distributed
    raise TypeError(f"fit: distributed must be a bool or a Communicator, got {distributed!r}")


def fail(comm: Communicator, error: BaseException) -> None:
    """Report this rank's error and end the whole job, so no other rank waits forever."""
    if comm.size == 1:
        raise error
    print(f"[rank {comm.rank}] {type(error).__name__}: {error}", file=sys.stderr)
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    comm.abort(1)


def local_device(backend: str, device: str | None, local_rank: int) -> str | None:
    """The device a rank uses: ``cuda:<local rank mod count>`` for a GPU backend when the
    user named no index, else what was asked."""
    if backend not in ("cupy", "torch") or device not in ("cuda", "gpu"):
        return device
    if backend == "cupy":
        import cupy

        count = cupy.cuda.runtime.getDeviceCount() if cupy.is_available() else 1
    else:
        import torch

        count = max(torch.cuda.device_count(), 1)
    return f"cuda:{local_rank % count}"
