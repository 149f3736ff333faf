"""Backends: which array library and which device xpnet computes on.

A :class:`Backend` bundles an array API namespace (``xp``), a device, and the ways
data crosses between the host and that device (:meth:`Backend.asarray`,
:func:`to_numpy`). This module is the only place that parses backend names and
device strings, and the only place that imports optional array libraries; importing
xpnet imports none of them.

Selection order: an explicit :func:`use` call, else the ``XPNET_BACKEND`` /
``XPNET_DEVICE`` environment variables, else ``"auto"`` (CuPy when it sees a CUDA
device, else NumPy). An explicit request that cannot be met raises
:class:`BackendUnavailableError`; only ``"auto"`` falls back, and it says so.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("xpnet")

NAMES = ("numpy", "cupy", "torch", "jax", "array_api_strict")
_ALIASES = {
    "np": "numpy",
    "cp": "cupy",
    "pytorch": "torch",
    "strict": "array_api_strict",
    "array-api-strict": "array_api_strict",
}
_INSTALL = {
    "cupy": 'pip install "xpnet[cuda12]"  (or "xpnet[cuda13]" for CUDA 13)',
    "torch": 'pip install "xpnet[torch]"',
    "jax": 'pip install "xpnet[jax]"',
    "array_api_strict": 'pip install "xpnet[strict]"',
}
_STRICT_DEVICES = ("cpu", "device1", "device2", "no_float64", "no_x64")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend or device cannot be used on this machine."""


# ---------------------------------------------------------------------------
# Seeded host generator: every initialisation draws from it, so one seed gives
# identical initial weights on every backend.
_seed: int = int(np.random.SeedSequence().entropy % 2**63)  # until seed() is called
_host_rng = np.random.default_rng(_seed)
_stream: tuple[int, ...] = (_seed,)  # what device draws (dropout masks) are keyed by
_draws = 0  # random arrays drawn in the current stream


def seed(value: int) -> None:
    """Seed weight initialisation, shuffling and dropout on every backend."""
    global _seed, _host_rng, _draws, _stream
    _seed = int(value)
    _host_rng = np.random.default_rng(_seed)
    _stream, _draws = (_seed,), 0


def set_random_stream(*key: int) -> None:
    """Key the following device draws by ``key`` and restart their count.

    ``fit`` starts a stream ``(seed, epoch)`` each epoch, so an epoch's dropout masks
    do not depend on what ran before it and a resumed run draws the same ones.
    """
    global _stream, _draws
    _stream, _draws = tuple(int(k) for k in key), 0


def next_random_key() -> tuple[int, ...]:
    """``(*stream, n)`` for the n-th random array drawn in the current stream.

    Each draw seeds its own generator from this key, on the array's device, so a
    draw depends only on the stream and its position in it.
    """
    global _draws
    _draws += 1
    return (*_stream, _draws - 1)


def random_position() -> int:
    """How many keys have been handed out; ``set_random_position`` rewinds to it."""
    return _draws


def set_random_position(n: int) -> None:
    global _draws
    _draws = int(n)


def host_rng() -> np.random.Generator:
    """The seeded NumPy generator that initialisation and shuffling draw from."""
    return _host_rng


# ---------------------------------------------------------------------------
class Backend:
    """An array library on one device.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"`` or ``"array_api_strict"``.
    xp : module
        The array API namespace (array-api-compat's wrapper where the library needs one).
    device : object
        The library's own device object (``None`` for NumPy).
    device_name : str
        The canonical device string, e.g. ``"cpu"``, ``"cuda:0"``, ``"device1"``.
    note : str
        Why this backend was chosen, when ``"auto"`` chose it.
    """

    def __init__(self, name: str, xp: Any, device: Any, device_name: str, note: str = ""):
        self.name = name
        self.xp = xp
        self.device = device
        self.device_name = device_name
        self.note = note
        self._previous: Backend | None = None
        self._entered = False

    # -- data crossing the host/device boundary ---------------------------------
    def asarray(self, host: Any, dtype: Any = None) -> Any:
        """Copy host data (NumPy array, list, scalar) onto this backend and device.

        ``dtype`` is a name (``"float32"``) or a dtype of this namespace; ``None``
        keeps the host dtype. The copy is always made, so updating the result in
        place never changes the caller's array.
        """
        if not isinstance(host, np.ndarray):
            host = np.asarray(to_numpy(host) if _is_device_array(host) else host)
        dt = self.dtype(dtype) if dtype is not None else None
        if dt is not None:
            self.check_dtype(dt, who="asarray")
        if self.name == "numpy":
            return np.array(host, dtype=dt, copy=True)
        if self.name == "cupy":
            with self.device:
                return self.xp.asarray(host, dtype=dt)
        if self.name == "jax":
            import jax

            return jax.device_put(self.xp.asarray(host, dtype=dt, copy=True), self.device)
        if dt is None:
            self.check_dtype(self.dtype(str(host.dtype)), who="asarray")
        return self.xp.asarray(host, dtype=dt, device=self.device, copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy an array of any backend to a host NumPy array."""
        return to_numpy(x)

    @property
    def rng(self) -> np.random.Generator:
        """The seeded host generator (see :func:`seed`)."""
        return _host_rng

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
        return _device_supports(self.xp, self.device, self.dtype(dtype))

    def check_dtype(self, dtype: Any, who: str) -> None:
        if not self.supports(dtype):
            raise TypeError(
                f"{who}: device {self.device_name!r} of backend {self.name!r} has no "
                f"{dtype_name(self.xp, self.dtype(dtype))}; use float32 there"
            )

    # -- context manager: `with xn.use(...) as be:` ------------------------------
    def __enter__(self) -> Backend:
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current
        _current = self._previous

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device_name!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Backend)
            and (self.name, self.device_name) == (other.name, other.device_name)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.device_name))


def dtype_name(xp: Any, dtype: Any) -> str:
    """The standard name of a dtype (``"float32"``), for messages and checkpoints."""
    for n in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16",
              "int8", "uint8", "uint16", "uint32", "uint64", "bool", "complex64",
              "complex128"):
        if getattr(xp, n, None) is not None and dtype == getattr(xp, n):
            return n
    return str(dtype)


def _device_supports(xp: Any, device: Any, dtype: Any) -> bool:
    try:
        info = xp.__array_namespace_info__()
        kinds = info.dtypes(device=device)
    except (AttributeError, TypeError, ValueError):
        return True
    return any(dtype == d for d in kinds.values())


# ---------------------------------------------------------------------------
# Construction: the one parser of backend names and device strings.
def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in NAMES:
        raise ValueError(
            f"unknown backend {name!r}; expected one of: auto, {', '.join(NAMES)}"
        )
    return key


def _cuda_index(device: str | None, who: str) -> int:
    if device in (None, "cuda", "gpu"):
        return 0
    m = re.fullmatch(r"(?:cuda|gpu):(\d+)", device)
    if not m:
        raise BackendUnavailableError(
            f"{who}: unknown device {device!r}; expected 'cuda' or 'cuda:N'"
        )
    return int(m.group(1))


def _import(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(
            f"{backend}: {module} is not installed ({e}); install it with: {_INSTALL[backend]}"
        ) from None


def _make_numpy(device: str | None) -> Backend:
    if device not in (None, "cpu"):
        raise BackendUnavailableError(
            f"numpy runs only on the CPU, not on {device!r}; for a GPU use "
            f"xn.use('cupy', device={device!r}) ({_INSTALL['cupy']})"
        )
    from ._compat import numpy_namespace

    return Backend("numpy", numpy_namespace(), "cpu", "cpu")


def _make_cupy(device: str | None) -> Backend:
    cupy = _import("cupy", "cupy")
    # On a machine with CuPy and no driver, asking CUDA for the device count raises;
    # cupy.is_available() answers instead.
    if not cupy.is_available():
        raise BackendUnavailableError(
            "cupy: no CUDA device (cupy.is_available() is False: no GPU or no driver)"
        )
    index = _cuda_index(device, "cupy")
    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise BackendUnavailableError(
            f"cupy: no device cuda:{index}; this machine has {count} CUDA device(s)"
        )
    import array_api_compat.cupy as xp

    return Backend("cupy", xp, cupy.cuda.Device(index), f"cuda:{index}")


def _make_torch(device: str | None) -> Backend:
    torch = _import("torch", "torch")
    spec = "cpu" if device is None else device
    if spec == "gpu":
        spec = "cuda"
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise BackendUnavailableError(f"torch: unknown device {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise BackendUnavailableError(
                f"torch: no CUDA device (torch.cuda.is_available() is False; this torch "
                f"is {build})"
            )
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"torch: no device cuda:{index}; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        dev = torch.device("cuda", index)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailableError("torch: the MPS device is not available here")
    import array_api_compat.torch as xp

    return Backend("torch", xp, dev, str(dev))


def _make_jax(device: str | None) -> Backend:
    jax = _import("jax", "jax")
    # float64 parameters must really be float64 (gradcheck, astype("float64")).
    # Every array xpnet makes names its dtype, so the float32 default is unaffected.
    jax.config.update("jax_enable_x64", True)
    if device in (None, "cpu"):
        dev = jax.devices("cpu")[0]
        name = "cpu"
    else:
        index = _cuda_index(device, "jax")
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if index >= len(gpus):
            raise BackendUnavailableError(
                f"jax: no device cuda:{index} (jax sees {len(gpus)} GPU(s); "
                f'install a CUDA build: pip install "jax[cuda12]")'
            )
        dev, name = gpus[index], f"cuda:{index}"
    import jax.numpy as xp

    return Backend("jax", xp, dev, name)


def _make_strict(device: str | None) -> Backend:
    strict = _import("array_api_strict", "array_api_strict")
    name = "cpu" if device in (None, "cpu", "CPU_DEVICE") else device
    if name not in _STRICT_DEVICES:
        raise BackendUnavailableError(
            f"array_api_strict: unknown device {device!r}; expected one of "
            f"{', '.join(_STRICT_DEVICES)}"
        )
    dev = strict.Device("CPU_DEVICE" if name == "cpu" else name)
    return Backend("array_api_strict", strict, dev, name)


_MAKERS = {
    "numpy": _make_numpy,
    "cupy": _make_cupy,
    "torch": _make_torch,
    "jax": _make_jax,
    "array_api_strict": _make_strict,
}


def make(name: str = "auto", device: str | None = None) -> Backend:
    """Build a Backend without making it current (see :func:`use`)."""
    key = _canonical(name)
    if device is not None:
        device = str(device).strip().lower() or None
    if key != "auto":
        return _MAKERS[key](device)
    if device == "cpu":
        return _make_numpy("cpu")
    try:
        be = _make_cupy(device)
        be.note = f"auto: chose cupy on {be.device_name} (a CUDA device is present)"
    except BackendUnavailableError as why:
        if device not in (None, "cpu"):
            raise
        be = _make_numpy(None)
        be.note = f"auto: chose numpy on the CPU; {str(why).split(';')[0]}"
    log.info(be.note)
    return be


_current: Backend | None = None


def use(name: str = "auto", device: str | None = None) -> Backend:
    """Select the backend that new parameters and data go to, and return it.

    Usable as a context manager that restores the previous selection on exit::

        with xn.use("array_api_strict", device="device1") as be:
            x = be.asarray(host_array)
    """
    global _current
    be = make(name, device)
    be._previous = _current
    _current = be
    return be


def current() -> Backend:
    """The Backend in force: the last :func:`use`, else ``XPNET_BACKEND``/``XPNET_DEVICE``."""
    global _current
    if _current is None:
        _current = make(
            os.environ.get("XPNET_BACKEND") or "auto", os.environ.get("XPNET_DEVICE") or None
        )
    return _current


def backend_of(x: Any) -> Backend:
    """The Backend an array lives on (library and device), without copying it."""
    from array_api_compat import device as device_of

    mod = type(x).__module__.split(".")[0]
    if isinstance(x, (np.ndarray, np.generic)):
        return _make_numpy(None)
    if mod == "torch":
        import array_api_compat.torch as xp

        return Backend("torch", xp, x.device, str(x.device))
    if mod in ("jax", "jaxlib"):
        import jax.numpy as xp

        dev = device_of(x)
        name = "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}"
        return Backend("jax", xp, dev, name)
    if mod == "cupy":
        import array_api_compat.cupy as xp

        return Backend("cupy", xp, x.device, f"cuda:{x.device.id}")
    if mod == "array_api_strict":
        import array_api_strict as xp

        dev = x.device
        name = "cpu" if dev == xp.Device("CPU_DEVICE") else str(dev).split("'")[1]
        return Backend("array_api_strict", xp, dev, name)
    raise TypeError(f"not an array of a supported backend: {type(x).__name__}")


# ---------------------------------------------------------------------------
def _is_device_array(x: Any) -> bool:
    return type(x).__module__.split(".")[0] in ("torch", "jax", "jaxlib", "cupy",
                                                "array_api_strict")


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array from any backend and device to a host NumPy array.

    This is the one way data leaves the device: the training loop uses it to report
    numbers, checkpoints to write arrays.
    """
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return x.detach().cpu().numpy()
    if mod == "cupy":
        return x.get()
    if mod == "array_api_strict":
        import array_api_strict as strict

        return np.asarray(x.to_device(strict.Device("CPU_DEVICE")))
    return np.asarray(x)


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
    for name in NAMES:
        info = BackendInfo(name, usable=False)
        try:
            be = make(name)
            info.usable = True
            info.devices = _devices(be)
        except BackendUnavailableError as e:
            info.reason = str(e)
        mod = {"array_api_strict": "array_api_strict"}.get(name, name)
        try:
            info.version = importlib.import_module(mod).__version__
        except ImportError:
            pass
        out[name] = info
    return out


def _devices(be: Backend) -> list[str]:
    if be.name == "numpy":
        return ["cpu"]
    if be.name == "array_api_strict":
        return list(_STRICT_DEVICES)
    if be.name == "cupy":
        import cupy

        return [f"cuda:{i}" for i in range(cupy.cuda.runtime.getDeviceCount())]
    if be.name == "torch":
        import torch

        devs = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available():
            devs.append("mps")
        return devs
    import jax

    devs = ["cpu"]
    try:
        devs += [f"cuda:{i}" for i in range(len(jax.devices("gpu")))]
    except RuntimeError:
        pass
    return devs
