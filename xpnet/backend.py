"""Backends: which array library and which device xpnet computes on.

A :class:`Backend` is an immutable value: an array API namespace (``xp``), a device,
and the adapter (``xpnet.backends``) that knows that library. This module is the
one parser of backend names and device strings, and it keeps the selection.

The selection lives in a :class:`contextvars.ContextVar`, so each thread and asyncio
task has its own. :func:`use` sets it; ``with backend:`` selects a backend for a
block and restores the previous selection on exit (``with xn.use(...)`` too). With
nothing selected, ``XPNET_BACKEND``/``XPNET_DEVICE`` decide, else ``"auto"``: CuPy
when it sees a CUDA device, else NumPy. An explicit request that cannot be met
raises :class:`BackendUnavailableError`; only ``"auto"`` falls back, and it says so.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backends
from ._compat import device
from .backends import BackendUnavailableError, Placement

log = logging.getLogger("xpnet")

#: Tried in order by "auto" before NumPy: libraries that need a GPU.
AUTO_GPU = ("cupy",)


class Backend:
    """An array library on one device. Immutable: compare, hash and share it freely.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"`` or ``"array_api_strict"``.
    xp : module
        The array API namespace (array-api-compat's wrapper where the library needs one).
    device : object
        The library's own device object (``"cpu"`` for NumPy).
    device_name : str
        The canonical device string, e.g. ``"cpu"``, ``"cuda:0"``, ``"device1"``.
    note : str
        Why this backend was chosen, when ``"auto"`` chose it.
    """

    __slots__ = ("adapter", "name", "xp", "device", "device_name", "note")

    def __init__(self, adapter: backends.Adapter, place: Placement, note: str = ""):
        for key, value in (("adapter", adapter), ("name", adapter.name), ("xp", place.xp),
                           ("device", place.device), ("device_name", place.device_name),
                           ("note", note)):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Backend is immutable: cannot set {key!r}")

    def __copy__(self) -> Backend:
        return self

    def __deepcopy__(self, memo: dict) -> Backend:
        return self

    # -- data crossing the host/device boundary ---------------------------------
    def asarray(self, host: Any, dtype: Any = None, copy: bool = True) -> Any:
        """Host data (NumPy array, list, scalar) on this backend and device.

        ``dtype`` is a name (``"float32"``) or a dtype of this namespace; ``None``
        keeps the host dtype. With ``copy=True`` (the default) the result is always a
        new array, so updating it never changes the caller's data; ``copy=False`` lets
        it share the host memory where the library and device allow (NumPy, torch on
        the CPU). Arrays of other backends are brought over through the host.
        """
        if not isinstance(host, np.ndarray):
            host = to_numpy(host) if _is_array(host) else np.asarray(host)
        if dtype is not None:
            dt = self.dtype(dtype)
            self.check_dtype(dt, who="asarray")
            return self.adapter.to_device(self._place(), host, dt, copy)
        if host.dtype.name in STANDARD_DTYPES:  # others: the library accepts them or says no
            self.check_dtype(host.dtype.name, who="asarray")
        return self.adapter.to_device(self._place(), host, None, copy)

    def _place(self) -> Placement:
        return Placement(self.xp, self.device, self.device_name)

    def synchronize(self) -> None:
        """Wait until this device has finished its queued work (for timing)."""
        self.adapter.synchronize(self.device)

    # -- dtypes ------------------------------------------------------------------
    def dtype(self, name: Any) -> Any:
        """Resolve a dtype name (``"float32"``) in this namespace; dtypes pass through."""
        if isinstance(name, str):
            try:
                return getattr(self.xp, name)
            except AttributeError:
                raise TypeError(f"{self}: unknown dtype {name!r}") from None
        return name

    def supports(self, dtype: Any) -> bool:
        """Whether this device can hold arrays of ``dtype`` (a name or a dtype)."""
        try:
            kinds = self.xp.__array_namespace_info__().dtypes(device=self.device)
        except (AttributeError, TypeError, ValueError):
            return True
        dt = self.dtype(dtype)
        return any(dt == d for d in kinds.values())

    def check_dtype(self, dtype: Any, who: str) -> None:
        if not self.supports(dtype):
            raise TypeError(
                f"{who}: device {self.device_name!r} of backend {self.name!r} has no "
                f"{dtype_name(self.xp, self.dtype(dtype))}; use float32 there"
            )

    # -- `with backend:` selects it for the block (and makes its device current) --------
    def __enter__(self) -> Backend:
        _enter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _exit()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device_name!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Backend)
                and (self.name, self.device_name) == (other.name, other.device_name))

    def __hash__(self) -> int:
        return hash((self.name, self.device_name))


STANDARD_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16",
                   "uint32", "uint64", "bool", "complex64", "complex128")


def dtype_name(xp: Any, dtype: Any) -> str:
    """The standard name of a dtype (``"float32"``), for messages and checkpoints."""
    for n in (*STANDARD_DTYPES, "float16", "bfloat16"):
        if getattr(xp, n, None) is not None and dtype == getattr(xp, n):
            return n
    return str(dtype)


# ---------------------------------------------------------------------------
# Construction: the one parser of backend names and device strings.
#: Devices that may be named alone, without a library: ``use("cuda")``, ``model.to("cpu")``.
DEVICE_WORDS = ("cpu", "cuda", "mps")
#: The libraries tried, in this order, for a GPU named alone when the preferred one
#: (the model's, or the selected one) cannot use it.
GPU_LIBRARIES = ("cupy", "torch", "jax")


def is_device_word(name: Any) -> bool:
    """Whether ``name`` is a device that can stand alone: cpu, mps, cuda, cuda:N."""
    if not isinstance(name, str):
        return False
    key = name.strip().lower()
    return key in DEVICE_WORDS or (key.startswith("cuda:") and key[5:].isdigit())


def for_device(device: str, like: Backend | None = None, call: str = "use") -> Backend:
    """The Backend a device named alone means, given the library in use (``like``: the
    model's, or the selected one; None: none preferred).

    ``"cpu"``: ``like``'s library on its CPU, NumPy for CuPy (or when none is
    preferred). A GPU (``"cuda"``, ``"cuda:N"``, ``"mps"``): ``like``'s library when it
    can use it, else the first of :data:`GPU_LIBRARIES` installed that can (``mps``:
    torch only). BackendUnavailableError when none can, saying what to write:
    ``call("cupy", "cuda")`` or ``call("torch", "cuda")``.
    """
    device = device.strip().lower()
    if device == "cpu":
        name = like.name if like is not None and like.name != "cupy" else "numpy"
        return make(name, "cpu")
    candidates = ("torch",) if device == "mps" else GPU_LIBRARIES
    if like is not None and like.name in candidates:
        candidates = (like.name, *(c for c in candidates if c != like.name))
    why = []
    for name in candidates:
        try:
            return make(name, device)
        except BackendUnavailableError as e:
            why.append(str(e).split("; install")[0])  # each says which library
    examples = " or ".join(f"{call}({n!r}, {device!r})" for n in candidates[:2])
    raise BackendUnavailableError(
        f"{call}({device!r}): no installed library can use {device!r} here ("
        f"{'; '.join(why)}); name the library with the device, {examples}, on a machine "
        f"with that device and the library installed")


def make(name: str = "auto", device: str | None = None) -> Backend:
    """Build a Backend without selecting it (see :func:`use`). A device named alone
    (``make("cuda")``) picks its library as :func:`for_device` does."""
    if is_device_word(name) and device is None:
        return for_device(name, _selected.get() or _default_backend)
    key = backends.canonical(name)
    if device is not None:
        device = str(device).strip().lower() or None
    if key != "auto":
        a = backends.ADAPTERS[key]
        return Backend(a, a.open(device))
    numpy = backends.ADAPTERS["numpy"]
    if device == "cpu":
        return Backend(numpy, numpy.open("cpu"))
    why = ""
    for gpu in AUTO_GPU:
        a = backends.ADAPTERS[gpu]
        try:
            be = Backend(a, a.open(device), f"auto: chose {gpu} (a CUDA device is present)")
            break
        except BackendUnavailableError as e:
            if device is not None:
                raise
            why = str(e).split(";")[0]
    else:
        be = Backend(numpy, numpy.open(None), f"auto: chose numpy on the CPU; {why}")
    log.info(be.note)
    return be


def resolve(backend: str | Backend | None = None, device: str | None = None,
            like: Backend | None = None, call: str = "use") -> Backend:
    """What a ``backend=``/``device=`` pair names: a Backend as given, a name (with
    the device), a device of the current backend (or of ``like``, a model's), or the
    current backend. A device alone that another library would serve (``"cuda"`` on
    NumPy, ``"cpu"`` on CuPy) picks it as :func:`for_device` does."""
    if isinstance(backend, Backend):
        if device is not None and str(device) != backend.device_name:
            return make(backend.name, device)
        return backend
    if backend is not None:
        if is_device_word(backend) and device is None:
            return for_device(backend, like or _selected.get() or _default_backend, call)
        return make(backend, device)
    if device is not None:
        if is_device_word(device):
            return for_device(str(device), like or current(), call)
        return make((like or current()).name, device)
    return current()


# ---------------------------------------------------------------------------
# Selection: one ContextVar, so threads and asyncio tasks each have their own.
_selected: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "xpnet_backend", default=None)
# What each `with` block restores on exit, innermost last: the selection, and what puts
# the library's current device back (None: nothing to put back).
_restore: contextvars.ContextVar[tuple[tuple[Backend | None, Callable[[], None] | None], ...]] \
    = contextvars.ContextVar("xpnet_backend_restore", default=())
_from_environment: Backend | None = None
#: The process-wide default (``use(..., scope="process")``): what every thread and task
#: without a selection of its own gets.
_default_backend: Backend | None = None
#: The values ``use``'s ``scope`` takes.
SCOPES = ("context", "process")


class _Used(Backend):
    """What :func:`use` returns: equal to the backend it selected in every way, and
    also the context manager of that ``use`` call. The first ``with`` on it ends that
    use: the selection from before the call comes back when the block ends (as with
    ``torch.set_grad_enabled``). Entered again, or once the selection has moved on, it
    restores what was selected when the block began, like any Backend."""

    __slots__ = ("_selected_backend", "_replaced")

    def __init__(self, be: Backend, replaced: Backend | None,
                 undo: Callable[[], None] | None = None):
        super().__init__(be.adapter, be._place(), be.note)
        object.__setattr__(self, "_selected_backend", be)
        object.__setattr__(self, "_replaced", [(replaced, undo)])

    def __enter__(self) -> Backend:
        be, pending = self._selected_backend, self._replaced
        if pending and _selected.get() is be:
            _push(be, *pending.pop())
        else:
            _enter(be)
        return be


def use(name: str | Backend = "auto", device: str | None = None, *,
        scope: str = "context") -> Backend:
    """Select the backend that new parameters and data go to, and return it.

    The selection holds in this thread (or asyncio task) until the next ``use``.
    As a context manager it holds for the block, and what was selected before the
    ``use`` call comes back at the end::

        with xn.use("array_api_strict", device="device1") as be:
            x = be.asarray(host_array)

    ``scope="process"`` sets the default of the whole process as well: every thread
    (a ``threading.Thread``, a ``ThreadPoolExecutor``'s workers) and asyncio task
    that has no selection of its own uses it; one made with ``use`` or ``with`` in a
    thread or task still wins there. What a notebook wants (its cells may run in
    contexts of their own). A device alone, ``use("cuda")`` or ``use("cpu")``, picks
    its library as :func:`for_device` says.
    """
    if scope not in SCOPES:
        raise ValueError(f"use: scope must be 'context' or 'process', got {scope!r}")
    be = resolve(name, device) if isinstance(name, Backend) or is_device_word(name) \
        else make(name, device)
    if scope == "process":
        global _default_backend
        _default_backend = be
    replaced = _selected.get()
    _selected.set(be)
    undo = be.adapter.activate(be.device)  # CuPy: this device is current from now on
    return _Used(be, replaced, undo)


def selection_state() -> tuple[Any, Any]:
    """This context's whole selection (what is selected, and what open ``with`` blocks
    will restore), for :func:`restore_selection`: how a test harness gives every test
    the selection the one before it found."""
    return _selected.get(), _restore.get(), _default_backend


def restore_selection(state: tuple[Any, ...]) -> None:
    """Put back a :func:`selection_state` (the process default too)."""
    global _default_backend
    _selected.set(state[0])
    _restore.set(state[1])
    if len(state) > 2:
        _default_backend = state[2]


def _push(be: Backend, restore: Backend | None, undo: Callable[[], None] | None) -> None:
    _restore.set(_restore.get() + ((restore, undo),))
    _selected.set(be)


def _enter(be: Backend) -> None:
    _push(be, _selected.get(), be.adapter.activate(be.device))


def _exit() -> None:
    stack = _restore.get()
    restore, undo = stack[-1]
    _restore.set(stack[:-1])
    _selected.set(restore)
    if undo is not None:
        undo()


def on_model_device(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(model, ...)`` (fit, evaluate, predict) run with the model's device current,
    without changing the selection: on CuPy every array and kernel goes to the current
    device, so a model on ``cuda:1`` must be trained with ``cuda:1`` current, whatever
    ``use`` or the user's code made current. The device current before comes back."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        undo = _activate_for(args[0] if args else kwargs.get("model"))
        try:
            return fn(*args, **kwargs)
        finally:
            if undo is not None:
                undo()

    return run


def _activate_for(model: Any) -> Callable[[], None] | None:
    """Make ``model``'s device current (:meth:`Adapter.activate`); the undo, or None."""
    try:
        be = model.backend
    except Exception:  # noqa: BLE001 - not a usable model: the function itself says why
        return None
    return be.adapter.activate(be.device) if isinstance(be, Backend) else None


def current() -> Backend:
    """The Backend in force in this thread: the innermost ``with``, else the last
    :func:`use`, else the process default (``use(..., scope="process")``), else
    ``XPNET_BACKEND``/``XPNET_DEVICE``, else ``"auto"``."""
    be = _selected.get()
    if be is not None:
        return be
    if _default_backend is not None:
        return _default_backend
    global _from_environment
    if _from_environment is None:
        _from_environment = make(os.environ.get("XPNET_BACKEND") or "auto",
                                 os.environ.get("XPNET_DEVICE") or None)
    return _from_environment


# ---------------------------------------------------------------------------
# Arrays: where they live, and the one way data leaves the device.
_placed: dict[tuple[type, Any], Backend] = {}


def backend_of(x: Any) -> Backend:
    """The Backend an array lives on (library and device), without copying it."""
    a = backends.adapter_of(x)
    place = a.placement_of(x)
    key = (type(x), place.device_name)
    found = _placed.get(key)
    if found is None:
        found = _placed[key] = Backend(a, place)
    return found


def _is_array(x: Any) -> bool:
    try:
        backends.adapter_of(x)
    except TypeError:
        return False
    return True


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array from any backend and device to a host NumPy array.

    This is the one way data leaves the device: the training loop uses it to report
    numbers, checkpoints to write arrays. NumPy arrays are returned as they are.
    """
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic) or not _is_array(x):
        return np.asarray(x)  # Python numbers and lists too
    return backends.adapter_of(x).to_host(x)


def _name(who: Any) -> str:
    """A layer's label (its repr: built only for an error, it costs microseconds per
    call), or ``who`` itself."""
    return getattr(who, "label", who)


def check_same_place(who: Any, x: Any, ref: Any, what: str = "input") -> None:
    """Raise a clear error when ``x`` is from another library or device than ``ref``.

    Only metadata is read (types and device objects), never array values. ``who`` is a
    name or a layer, whose label is only built when there is an error to report.
    """
    if type(x) is type(ref) and type(x) is np.ndarray:
        return
    if type(x) is not type(ref):
        lib_x, lib_ref = _library(x), _library(ref)
        if lib_x != lib_ref:
            raise TypeError(
                f"{_name(who)}: {what} is a {lib_x} array ({type(x).__name__}) but the "
                f"parameters are {lib_ref} arrays; move the data with "
                f"backend.asarray(...) or the model with model.to(...)"
            )
        return
    dx, dr = device(x), device(ref)
    if dx != dr:
        raise ValueError(
            f"{_name(who)}: {what} is on device {dx} but the parameters are on {dr}; "
            f"move one of them so both are on the same device"
        )


def _library(x: Any) -> str:
    try:
        return backends.adapter_of(x).name
    except TypeError:
        return type(x).__module__.partition(".")[0]


# ---------------------------------------------------------------------------
@dataclass
class BackendInfo:
    """What :func:`available` reports for one backend."""

    name: str
    usable: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    reason: str = ""


def available() -> dict[str, BackendInfo]:
    """Every backend, usable or not, with its version, devices and why not."""
    out: dict[str, BackendInfo] = {}
    for name, a in backends.ADAPTERS.items():
        info = BackendInfo(name, usable=False, version=a.version())
        try:
            a.open(None)
            info.usable = True
            info.devices = a.devices()
        except BackendUnavailableError as e:
            info.reason = str(e)
        out[name] = info
    return out
