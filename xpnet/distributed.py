"""Data-parallel training: every rank holds the whole model, takes its slice of every
global mini-batch, and the ranks' gradients are summed before each optimizer step, so
the steps are those a single process takes on the whole batch. xpnet has no networking
of its own: the ranks talk through a :class:`~xpnet.backends.base.Communicator`, chosen
by how the job was started (:func:`detect`):

- **MPI** (:class:`MPICommunicator`, through ``mpi4py``) under ``mpiexec``: ``Allreduce``
  and ``Bcast`` on array buffers. NumPy arrays go directly; CuPy arrays go directly when
  the MPI library is CUDA-aware (checked, not guessed: :func:`cuda_aware`); arrays of
  other devices are staged through host memory, one copy per call (a gradient bucket),
  and come back on the device they came from.
- **torch.distributed** under ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``...): gloo for CPU arrays, NCCL for CUDA tensors (the torch adapter's).
- **NCCL** for CuPy arrays, bootstrapped over MPI (the CuPy adapter's).

``fit`` talks to a :class:`Strategy`: the plain one runs in one process and does nothing;
:class:`DataParallel` checks that the ranks were given the same run, broadcasts the
starting state, takes this rank's share of each batch, reduces the epoch's sums, keeps
decisions that change training (stop, learning rate, a checkpoint's "best") the same on
every rank, and ends every rank on an error on any. The gradient sum itself is a
gradient transform of the step (:class:`xpnet.train.transforms.AllReduce`), in buckets.

Run ``mpiexec -n 2 xpnet train --distributed``, ``torchrun --nproc_per_node=2
script.py``, or a script calling ``fit(..., distributed=True)`` under either.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import traceback
from typing import Any

import numpy as np

from . import backends
from .backend import backend_of, to_numpy
from .backends.base import Communicator, Pending


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

    name = "MPI"

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

    def _flat(self, arrays: list[Any]) -> tuple[Any, bool]:
        """One contiguous buffer of every array, and whether it stayed where the arrays
        are (host NumPy, or CuPy with a CUDA-aware MPI) rather than staged on the host:
        then the arrays are joined on their device first, so staging is one copy."""
        owner = backends.adapter_of(arrays[0])
        if all(backends.adapter_of(a) is owner and owner.mpi_direct(a, self.direct_cuda)
               for a in arrays):
            if len(arrays) == 1 and arrays[0].ndim == 1 and owner.name == "numpy":
                return np.array(arrays[0], copy=True), True  # MPI writes into it
            return owner.flat_buffer(arrays), True
        xp = backend_of(arrays[0]).xp
        joined = arrays[0] if len(arrays) == 1 and arrays[0].ndim == 1 else xp.concat(
            [xp.reshape(a, (-1,)) for a in arrays])
        return np.array(to_numpy(joined), copy=True), False

    def _unflat(self, buf: Any, like: list[Any], direct: bool) -> list[Any]:
        if not direct:  # staged: back to the device it came from, in one copy
            be = backend_of(like[0])
            buf = be.asarray(buf, dtype=like[0].dtype)
        xp = backends.adapter_of(buf).placement_of(buf).xp if direct else be.xp
        out, start = [], 0
        for a in like:
            size = int(np.prod(a.shape))
            out.append(xp.reshape(buf[start:start + size], tuple(a.shape)))
            start += size
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
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return self._unflat(buf, arrays, direct)

    def start_allreduce(self, buffer: Any) -> Pending:
        """``Iallreduce`` of one flat buffer: the sum travels while the caller packs and
        starts the next bucket."""
        if self.size == 1:
            return Pending(buffer)
        owner = backends.adapter_of(buffer)
        if owner.name == "numpy" and buffer.flags.c_contiguous and buffer.flags.writeable:
            buf, direct = buffer, True  # summed in place: no copy of the bucket
        else:
            buf, direct = self._flat([buffer])
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

        def done() -> Any:
            request.Wait()
            return self._unflat(buf, [buffer], direct)[0]

        return Pending(wait=done)

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        if not arrays or self.size == 1:
            return arrays
        self._check_dtypes(arrays)
        buf, direct = self._flat(arrays)
        self.comm.Bcast(buf, root=root)
        return self._unflat(buf, arrays, direct)

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        return self.comm.bcast(value, root=root)

    def allgather_object(self, value: Any) -> list[Any]:
        return self.comm.allgather(value)

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        self.comm.Abort(code)


def limit_threads(n: int) -> None:
    """At most ``n`` CPU threads in every array library's own pool (BLAS, torch)."""
    backends.limit_threads(n)


# -- what fit does with several processes ----------------------------------------------
class Strategy:
    """How ``fit`` spreads a run over processes. This one is a single process: every
    step is a no-op, and an error is raised as it is."""

    rank = 0
    size = 1
    #: The processes' communicator (None for one process): ``fit``'s step sums the
    #: gradients over it (:class:`xpnet.train.transforms.AllReduce`).
    comm: Communicator | None = None

    def agree(self, facts: dict[str, Any]) -> None:
        """Raise ValueError on every rank unless all ranks passed equal ``facts`` (a small
        JSON-like dict: model description, data size, batch size, epochs...)."""

    def start(self, model: Any, seed: int) -> int:
        """Make every rank start alike; returns the shuffling seed to use."""
        return seed

    def shard(self, arrays: list[Any], size: int) -> list[Any]:
        """This rank's rows of a global batch of ``size`` examples."""
        return arrays

    def reduce_sums(self, arrays: list[Any]) -> list[Any]:
        """Device sums (the epoch's loss and metric sums) summed over ranks."""
        return arrays

    def totals(self, values: list[float]) -> list[float]:
        """Host numbers summed over ranks."""
        return values

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank must ask)."""
        return flag

    def share_rate(self, optimizer: Any) -> None:
        """Give every rank rank 0's learning rate (a callback may have lowered it)."""

    def finish(self, model: Any) -> None:
        """Make the ranks' models agree at the end of training (rank 0's)."""

    def fail(self, error: BaseException) -> None:
        """Deal with an error raised in ``fit`` on this rank (never returns)."""
        raise error


class DataParallel(Strategy):
    """Every rank holds the whole model and takes its slice of every global batch; the
    gradients are summed across ranks before each step (see the module docstring)."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size

    def agree(self, facts: dict[str, Any]) -> None:
        # Ranks that disagree would run different numbers of collective calls and hang
        # or mix up buffers mid-training; every rank sees all facts, so all raise alike.
        every = self.comm.allgather_object(facts)
        keys = list(dict.fromkeys(k for f in every for k in f))
        differ = [k for k in keys if any(f.get(k, _MISSING) != every[0].get(k, _MISSING)
                                         for f in every[1:])]
        if differ:
            raise ValueError("fit: the ranks disagree on " + "; ".join(
                f"{k}: " + _by_rank([f.get(k, _MISSING) for f in every]) for k in differ))

    def start(self, model: Any, seed: int) -> int:
        model.bind(self.comm.broadcast(model.arrays()))
        return self.comm.bcast_object(seed)

    def shard(self, arrays: list[Any], size: int) -> list[Any]:
        lo, hi = size * self.rank // self.size, size * (self.rank + 1) // self.size
        return [a[lo:hi, ...] for a in arrays]

    def reduce_sums(self, arrays: list[Any]) -> list[Any]:
        return [self.comm.allreduce_sum([a])[0] for a in arrays]  # dtypes differ: one each

    def totals(self, values: list[float]) -> list[float]:
        return [float(v) for v in self.comm.allreduce_sum([np.array(values)])[0]]

    def any(self, flag: bool) -> bool:
        return self.totals([float(bool(flag))])[0] > 0

    def share_rate(self, optimizer: Any) -> None:
        fixed = [g for g in optimizer.param_groups if not callable(g["lr"])]
        if fixed:  # rank 0's rates (a ReduceLROnPlateau may have lowered them)
            rates = self.comm.bcast_object([float(g["lr"]) for g in fixed])
            for g, rate in zip(fixed, rates):
                g["lr"] = rate

    def finish(self, model: Any) -> None:
        # rank 0's model everywhere: statistics such as BatchNorm's (each rank's come
        # from its share), and weights a callback put back on one rank only (EarlyStopping)
        model.bind(self.comm.broadcast(model.arrays()))

    def fail(self, error: BaseException) -> None:
        """Show this rank's error and end the whole job, so no other rank waits forever."""
        print(f"[rank {self.rank}] {type(error).__name__}: {error}", file=sys.stderr)
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        self.comm.abort(1)
        # Some MPICH builds return from MPI_Abort: fit must not go on as if it had trained.
        raise error


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()


def _by_rank(values: list[Any], width: int = 80) -> str:
    """``rank 0 has 32, ranks 1, 2 have 16``: ranks grouped by value; a long value is cut
    and tagged with its hash, as two model descriptions may differ only past the cut."""
    groups: list[tuple[Any, list[int]]] = []
    for rank, v in enumerate(values):
        for seen, ranks in groups:
            if seen == v:
                ranks.append(rank)
                break
        else:
            groups.append((v, [rank]))
    parts = []
    for v, ranks in groups:
        text = repr(v)
        if len(text) > width:
            text = f"{text[:width]}... (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"
        who = (f"rank {ranks[0]} has" if len(ranks) == 1
               else f"ranks {', '.join(map(str, ranks))} have")
        parts.append(f"{who} {text}")
    return ", ".join(parts)


class _Stage:
    """Arrays of any library to host memory and back to where another array lives."""

    @staticmethod
    def to_host(a: Any) -> np.ndarray:
        return to_numpy(a)

    @staticmethod
    def to_device(host: np.ndarray, like: Any) -> Any:
        return backend_of(like).asarray(host, dtype=like.dtype)


#: what torchrun sets for each worker (torch.distributed's env:// rendezvous reads them)
TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def detect(backend: str | None = None) -> Communicator:
    """The communicator of how this job was started: ``torch.distributed`` when
    ``torchrun`` set its variables, else MPI (one rank when not under ``mpiexec``), with
    NCCL for a model on CuPy (``backend``)."""
    if all(v in os.environ for v in TORCHRUN):
        return backends.adapter("torch").communicator(_Stage())
    comm = MPICommunicator()
    if backend == "cupy" and comm.size > 1:
        return backends.adapter("cupy").communicator(comm)
    return comm


def resolve(distributed: bool | Communicator | None, backend: str | None = None
            ) -> Strategy:
    """The strategy ``fit(distributed=...)`` asks for: ``True`` for this job's ranks (as
    :func:`detect` finds them for a model on ``backend``), a Communicator for its ranks,
    ``False`` for one process."""
    if distributed is None or distributed is False:
        return Strategy()
    if distributed is True:
        distributed = detect(backend)
    if isinstance(distributed, Communicator):
        return DataParallel(distributed) if distributed.size > 1 else Strategy()
    raise TypeError(f"fit: distributed must be a bool or a Communicator, got {distributed!r}")


def local_device(backend: str, device: str | None, local_rank: int) -> str | None:
    """The device a rank uses: ``cuda:<local rank mod count>`` for a GPU backend when the
    user named no index, else what was asked."""
    name = backends.canonical(backend)
    if device not in ("cuda", "gpu") or name == "auto":
        return device
    try:
        count = sum(d.startswith("cuda") for d in backends.ADAPTERS[name].devices())
    except ImportError:
        count = 0
    return f"cuda:{local_rank % max(count, 1)}"
