"""What an adapter for one array library provides.

An :class:`Adapter` is everything xpnet knows about one library: how to open a device
from a device string, how to recognise the library's arrays and find their device,
host<->device copies, the devices there are, seeded uniform draws, the library's
fast-path ops, synchronising, what MPI can read directly, and thread limits. The
library itself is imported only inside these methods, so importing xpnet imports
none of them. ``xpnet.backend`` turns an adapter's :class:`Placement` into a Backend.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .._compat import device, namespace
from .standard import StandardOps, counter_uniform, fold_key

#: The dtypes mixed-precision training computes in, below float32.
LOW_PRECISION = ("bfloat16", "float16")


def tf32_allowed() -> bool:
    """Whether float32 matmuls and convolutions on a CUDA device may run in TF32
    (``XPNET_TF32=1``): 10-bit mantissas, several times the throughput on Ampere and
    later GPUs. Off by default, so a GPU gives float32 results as the CPU does."""
    return os.environ.get("XPNET_TF32", "").strip().lower() in ("1", "true", "yes", "on")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend or device cannot be used on this machine."""


class Placement(NamedTuple):
    """A library's namespace and one of its devices: what a Backend is made of."""

    xp: Any
    device: Any
    device_name: str


def mix(key: tuple[int, ...]) -> int:
    """One 63-bit integer seed from a key, for generators that take a single int."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


class Adapter:
    """One array library. Subclasses set the class attributes and override what differs.

    Attributes
    ----------
    name : str
        The backend name users pass to ``xn.use``.
    aliases : tuple of str
        Other names accepted for it.
    modules : tuple of str
        Top-level module names of the library's array types (how arrays are recognised).
    namespaces : tuple of str
        ``__name__`` of the array API namespaces whose fast ops this adapter provides.
    package : str
        The module to import for the version number.
    install : str
        The command that installs the library, for error messages.
    """

    name = ""
    aliases: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    package = ""
    install = ""

    def __init__(self) -> None:
        self._ops: StandardOps | None = None

    # -- devices ---------------------------------------------------------------------
    def open(self, device: str | None) -> Placement:
        """The namespace and device for a device string (``None``: the default device).

        Raises BackendUnavailableError naming what is missing.
        """
        raise NotImplementedError

    def devices(self) -> list[str]:
        """The device strings this machine offers (the library is importable)."""
        return ["cpu"]

    def activate(self, device: Any) -> Callable[[], None] | None:
        """Make ``device`` the library's current device in this thread, for a library
        whose new arrays and kernels go to a current device (CuPy: array-api-compat drops
        ``device=`` in ``zeros``, ``arange``, ``zeros_like``..., and a kernel refuses an
        array of another device); returns what puts the previous one back, or None when
        there is nothing to undo. Other libraries place by their arguments: nothing."""
        return None

    def before_import(self) -> None:
        """Called before the library is imported by this adapter (settings the library
        reads once, when it starts)."""

    def import_library(self, module: str | None = None) -> Any:
        """Import the library, or raise BackendUnavailableError with the install command."""
        module = module or self.package
        self.before_import()
        try:
            return importlib.import_module(module)
        except ImportError as e:
            raise BackendUnavailableError(
                f"{self.name}: {module} is not installed ({e}); install it with: {self.install}"
            ) from None

    def describe(self, device: Any) -> str:
        """The library's version and what it knows of ``device`` (name, CUDA versions),
        for ``xpnet selftest``."""
        return f"{self.name} {self.version()} on {device}"

    def forbid_host_reads(self, device: Any) -> Callable[[], Any] | None:
        """A context manager factory under which reading an array of ``device`` on the
        host (``float()``, ``.get()``, a device-wide synchronize) raises, where the
        library can detect it; None where it cannot (``xpnet selftest``)."""
        return None

    def version(self) -> str | None:
        self.before_import()
        try:
            return importlib.import_module(self.package).__version__
        except ImportError:
            return None

    # -- arrays ----------------------------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether ``x`` is an array of this library (read from its type; no import)."""
        return type(x).__module__.partition(".")[0] in self.modules

    def placement_of(self, x: Any) -> Placement:
        """The namespace and device of one of this library's arrays."""
        raise NotImplementedError

    def to_device(self, place: Placement, host: np.ndarray, dtype: Any, copy: bool) -> Any:
        """``host`` on ``place``'s device as ``dtype`` (None keeps the host dtype).

        ``copy=False`` lets the result share the host memory where the library and
        device allow it; otherwise, and always with ``copy=True``, it is a new array.
        """
        return place.xp.asarray(host, dtype=dtype, device=place.device, copy=True)

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy array with ``x``'s values (a copy unless ``x`` is already host memory)."""
        return np.asarray(x)

    # -- randomness ------------------------------------------------------------------
    def uniform(self, like: Any, shape: tuple[int, ...], key: tuple[int, ...]) -> Any:
        """Uniform [0, 1) samples of ``like``'s dtype and device, seeded by ``key`` alone.

        By default drawn on the host and copied over; libraries with a compiler draw on
        the device, the same numbers their compiled steps draw (:class:`Compiler`).
        """
        host = np.random.default_rng(list(key)).random(shape, dtype=np.float32)
        place = self.placement_of(like)
        return place.xp.astype(place.xp.asarray(host, device=place.device), like.dtype)

    # -- speed -----------------------------------------------------------------------
    @property
    def ops(self) -> StandardOps:
        """The library's fast primitives (built once, on first use)."""
        if self._ops is None:
            self._ops = self.make_ops()
        return self._ops

    def make_ops(self) -> StandardOps:
        return StandardOps()

    def compiler(self) -> Compiler | None:
        """How this library compiles a whole training step (:class:`Compiler`); None: it
        has no compiler and steps run eagerly."""
        return None

    def synchronize(self, device: Any) -> None:
        """Wait until the device has finished the work queued on it (host: nothing)."""

    # -- mixed precision -------------------------------------------------------------
    def low_precision_dtype(self, xp: Any, name: str) -> Any:
        """The library's ``"float16"`` or ``"bfloat16"`` dtype, which mixed-precision
        training runs forward and backward in (the array API standard has neither).

        Raises TypeError naming the library and the dtype it lacks.
        """
        if name not in LOW_PRECISION:
            raise ValueError(f"{self.name}: {name!r} is not a low-precision dtype; expected "
                             f"one of {', '.join(LOW_PRECISION)}")
        dtype = getattr(xp, name, None)
        if dtype is None:
            raise TypeError(
                f"{self.name}: the library has no {name} dtype, so it cannot train in "
                f"{name} mixed precision (torch and jax have bfloat16 and float16; cupy and "
                f"numpy float16); use precision=\"32\" here or another backend")
        return dtype

    def quiet_float_errors(self) -> Any:
        """A context in which overflow and invalid values in float math raise no
        warnings: mixed precision expects them in a step it then skips. Nothing for
        libraries that do not warn."""
        return contextlib.nullcontext()

    def limit_threads(self, n: int) -> None:
        """Use at most ``n`` CPU threads, where the library has a pool of its own."""

    def set_threads(self, n: int) -> Callable[[], None] | None:
        """Use at most ``n`` CPU threads in the library's own pool until the function
        returned is called (it puts the previous count back); None where there is
        nothing to set (no pool, or the library is not in use)."""
        return None

    def prefer_threads(self, n: int) -> None:
        """Ask for ``n`` CPU threads from a library that sizes its pool once, when it
        starts, and has not started yet (a program's entry point calls this first)."""

    def threads_note(self) -> str | None:
        """Why :meth:`set_threads` cannot reach this library's pool, when it cannot
        (``fit(threads=)`` warns with it); None when it can."""
        return None

    def distributions(self) -> tuple[str, ...]:
        """The pip distributions that install the library, for :meth:`installed`."""
        return (self.package,)

    def installed(self) -> str | None:
        """The installed version, read from the package metadata without importing the
        library (seconds for torch or JAX); None when it is not installed."""
        from importlib import metadata

        for name in self.distributions():
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    def communicator(self, bootstrap: Any = None) -> Communicator:
        """This library's own way for the ranks of a job to talk (torch.distributed,
        NCCL); ValueError where it has none (MPI serves every library). ``bootstrap``:
        what it starts from (NCCL: the MPI job's communicator; torch.distributed: how
        other libraries' arrays are staged through the host)."""
        raise ValueError(f"{self.name} has no communicator of its own; run the job under "
                         f"mpiexec (MPI) instead")

    # -- MPI -------------------------------------------------------------------------
    def mpi_direct(self, x: Any, cuda_aware: bool) -> bool:
        """Whether MPI can read and write ``x``'s memory as it is."""
        return False

    def flat_buffer(self, arrays: list[Any]) -> Any:
        """The arrays (all of this library, MPI-direct) as one contiguous 1-D buffer,
        ready for MPI to read (queued device work finished)."""
        raise NotImplementedError(f"{self.name}: arrays are not handed to MPI directly")


class Compiler:
    """How one library compiles a whole training step; :mod:`xpnet.train.compiled` drives
    it with the one step body (:class:`xpnet.train.step.Step`).

    Two kinds: :class:`TracingCompiler` (``jax.jit``, ``torch.compile``) traces the body
    into a function of every array the step changes; :class:`CapturingCompiler` (CUDA
    graphs) records the body's kernels once and replays them on the same arrays.

    Random draws inside a compiled step (Dropout) come from :meth:`uniform` at a stream
    position that is an argument of the call, not a constant of the trace, so each step
    draws new numbers and they are the ones an eager step draws. By default that is the
    counter-based generator of ``backends.standard`` (torch and CuPy draw eagerly with it
    too); JAX uses its own.
    """

    name = ""
    #: "jit" (traced) or "graph" (captured): what ``TrainStep.kind`` reports.
    kind = ""

    def accepts(self, transform: Any) -> bool:
        """Whether a gradient transform can run inside this compiler's steps."""
        raise NotImplementedError

    def key(self, prefix: tuple[int, ...], like: Any) -> Any:
        """A random stream's key (seed, epoch) as the compiled step takes it."""
        xp = namespace(like)
        return xp.asarray(fold_key(tuple(prefix)), dtype=xp.int64, device=device(like))

    def position(self, position: int, like: Any) -> Any:
        """A stream position as the compiled step takes it."""
        xp = namespace(like)
        return xp.asarray(position, dtype=xp.int64, device=device(like))

    def scalars(self, values: tuple[Any, ...], like: Any) -> tuple[Any, ...]:
        """A step's host numbers (the optimizer's coefficients) as the compiled call takes
        them: 0-d arrays of ``like``'s dtype and device, since a Python number would be
        baked into the trace as a constant."""
        xp = namespace(like)
        return tuple(xp.asarray(v, dtype=like.dtype, device=device(like)) for v in values)

    def uniform(self, like: Any, shape: tuple[int, ...], key: Any, position: Any) -> Any:
        """Uniform [0, 1) draws of ``like``'s dtype and device for ``position`` under
        ``key`` (both from the methods above, or traced)."""
        return counter_uniform(namespace(like), shape, like.dtype, device(like), key, position)


class TracingCompiler(Compiler):
    """Traces a pure function of arrays once per input signature (``jax.jit``,
    ``torch.compile``); a gradient transform that calls out of the library (MPI) cannot
    run inside it."""

    kind = "jit"

    def accepts(self, transform: Any) -> bool:
        return transform.traceable

    def compile(self, fn: Any, donate_argnums: tuple[int, ...]) -> Any:
        """``fn`` compiled; the arguments at ``donate_argnums`` may be reused for the
        results (their arrays are not read again)."""
        raise NotImplementedError


class CapturingCompiler(Compiler):
    """Records a step's kernels once (a CUDA graph) and replays them on the same arrays."""

    kind = "graph"

    def accepts(self, transform: Any) -> bool:
        return transform.capturable

    def eager(self, fn: Any) -> Any:
        """Run ``fn`` eagerly as a capture will see it (its memory pool): the warm-up."""
        return fn()

    def capture(self, fn: Any) -> Any:
        """Record ``fn``'s device work as a graph, without running it. If ``fn`` raises,
        the capture is ended and ``fn``'s error raised."""
        raise NotImplementedError

    def refusal(self, error: BaseException) -> str | None:
        """Why the library refused to capture, when ``error`` (raised by :meth:`capture`)
        is such a refusal (work it cannot record, such as CuPy's cuBLAS calls); None when
        it is an error of the step itself. A refused step runs eagerly from then on."""
        return None

    #: what still speeds up a step that runs eagerly after a refusal (for the note)
    eager_note = ""

    def launch(self, graph: Any) -> None:
        """Replay a captured graph."""
        raise NotImplementedError


class Communicator:
    """What data-parallel training needs from a group of processes: sums of device
    arrays, broadcasts, small Python values, and ending the whole job. This default is
    one process, every operation a no-op.

    Implementations: MPI (``xpnet.distributed.MPICommunicator``, under ``mpiexec``),
    ``torch.distributed`` (the torch adapter's, under ``torchrun``: gloo on CPU, NCCL for
    CUDA tensors) and NCCL for CuPy arrays (the CuPy adapter's).
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    #: how messages name it
    name = "one process"

    def allreduce_sum(self, arrays: list[Any]) -> list[Any]:
        """Element-wise sums over ranks, each on the device its input came from (arrays of
        one call share a dtype)."""
        return arrays

    def start_allreduce(self, buffer: Any) -> Pending:
        """Begin summing one flat 1-D buffer over ranks (it may be summed in place);
        ``.wait()`` gives the sum. Where the transport allows it the sum runs while the
        caller goes on (MPI's ``Iallreduce``, NCCL on its own stream); by default it is
        done at once."""
        return Pending(self.allreduce_sum([buffer])[0])

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        """``root``'s arrays on every rank (same shapes, dtypes and devices as given)."""
        return arrays

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        """A small JSON-like Python value from ``root`` on every rank."""
        return value

    def allgather_object(self, value: Any) -> list[Any]:
        """Every rank's small JSON-like value, in rank order, on every rank."""
        return [value]

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (after an error on this one)."""
        raise SystemExit(code)


class Pending:
    """A collective under way: :meth:`wait` gives its result."""

    def __init__(self, result: Any = None, wait: Any = None):
        self._result, self._wait = result, wait

    def wait(self) -> Any:
        if self._wait is not None:
            self._result, self._wait = self._wait(), None
        return self._result
