"""CuPy: NumPy's interface on CUDA GPUs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .base import (
    Adapter,
    BackendUnavailableError,
    CapturingCompiler,
    Communicator,
    Pending,
    Placement,
)
from .standard import _INV_SQRT_2PI, _SQRT_HALF, StandardOps, counter_uniform, fold_key


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


# -- fused kernels ----------------------------------------------------------------------
# Each kernel is CUDA C written once, with REAL for the type it computes in: ``float``
# for float16 and float32 arrays, ``double`` for float64 (the word is replaced when the
# kernel is built, one kernel per compute type). ``T`` is CuPy's placeholder for the
# arrays' dtype: every value is read as ``REAL(name)`` and written back as ``T(...)``,
# and each statement does the standard path's operations in the same order. A scalar
# declared ``T`` takes a Python number or a 0-d array of the arrays' dtype: a compiled
# step's per-step coefficient, which a CUDA graph reads on the device at each replay.
# Outputs passed in are updated in place (CuPy binds output parameters by reference).

#: the compute type of each dtype the kernels take, by ``dtype.char``
_REAL = {"e": "float", "f": "float", "d": "double"}


def _c(value: float) -> str:
    """A constant in kernel source: the double ``value`` in the compute type."""
    return f"REAL({value!r})"


@dataclass(frozen=True)
class KernelSource:
    """What a fused kernel is made of: CuPy's parameter lists and its CUDA C body.

    ``reduce`` is None for an ``ElementwiseKernel`` (``body`` is its operation), else
    ``(reduce_expr, post_map_expr, identity)`` of a ``ReductionKernel`` whose map
    expression is ``body``, reducing in the compute type.
    """

    in_params: str
    out_params: str
    body: str
    reduce: tuple[str, str, str] | None = None


_HALF, _ONE = _c(0.5), "REAL(1)"
_PHI = f"REAL u = REAL(x); REAL phi = {_HALF} * ({_ONE} + erf({_c(_SQRT_HALF)} * u));"
_SIGMOID = f"REAL u = REAL(x); REAL s = {_HALF} * tanh({_HALF} * u) + {_HALF};"


def _sgd_source(momentum: bool, nesterov: bool, decay: bool) -> KernelSource:
    """``p -= lr * d`` with ``d = g (+ wd p)``, through the momentum buffer if any."""
    ins = ["T g", "T lr"] + ["T wd"] * decay + ["T momentum"] * momentum
    body = ["REAL d = REAL(g);"] + ["d = d + REAL(wd) * REAL(p);"] * decay
    if momentum:
        body += ["REAL b = REAL(momentum) * REAL(buf) + d;", "buf = T(b);",
                 "d = d + REAL(momentum) * b;" if nesterov else "d = b;"]
    body.append("p = T(REAL(p) - REAL(lr) * d);")
    return KernelSource(", ".join(ins), "T p, T buf" if momentum else "T p", " ".join(body))


def _adam_source(decay: str) -> KernelSource:
    """Adam updating ``p, m, v`` in place; ``decay`` "" (none), "l2" (the gradient
    gets ``wd p``) or "decoupled" (AdamW: ``p -= decay p`` first)."""
    extra = {"": [], "l2": ["T wd"], "decoupled": ["T decay"]}[decay]
    ins = ["T g", *extra, "T step", "T unbias", "T beta1", "T rest1", "T beta2", "T rest2",
           "T eps"]
    body = ["REAL q = REAL(p);", "REAL d = REAL(g);"]
    body += {"": [], "l2": ["d = d + REAL(wd) * q;"],
             "decoupled": ["q = q - REAL(decay) * q;"]}[decay]
    body += ["REAL mm = REAL(beta1) * REAL(m) + REAL(rest1) * d;",
             "REAL vv = REAL(beta2) * REAL(v) + REAL(rest2) * (d * d);",
             "m = T(mm);", "v = T(vv);",
             "p = T(q - REAL(step) * (mm / (sqrt(vv) * REAL(unbias) + REAL(eps))));"]
    return KernelSource(", ".join(ins), "T p, T m, T v", " ".join(body))


KERNELS: dict[str, KernelSource] = {
    "sigmoid": KernelSource("T x", "T y", f"{_SIGMOID} y = T(s);"),
    "sigmoid_grad": KernelSource(
        "T dy, T y", "T dx", f"REAL s = REAL(y); dx = T(REAL(dy) * (s * ({_ONE} - s)));"),
    "tanh_grad": KernelSource(
        "T dy, T y", "T dx", f"REAL t = REAL(y); dx = T(REAL(dy) * ({_ONE} - t * t));"),
    "relu_grad": KernelSource(
        "T dy, T y", "T dx", "dx = T(REAL(dy) * REAL(REAL(y) > REAL(0)));"),
    "gelu": KernelSource("T x", "T y", f"{_PHI} y = T(u * phi);"),
    "gelu_grad": KernelSource(
        "T dy, T x", "T dx",
        f"{_PHI} REAL gauss = exp({_c(-0.5)} * (u * u));"
        f" dx = T(REAL(dy) * (phi + u * ({_c(_INV_SQRT_2PI)} * gauss)));"),
    "silu": KernelSource("T x", "T y", f"{_SIGMOID} y = T(u * s);"),
    "silu_grad": KernelSource(
        "T dy, T x", "T dx",
        f"{_SIGMOID} dx = T(REAL(dy) * (s * ({_ONE} + u * ({_ONE} - s))));"),
    # softmax cross-entropy over rows: m = max(z), ls = log(sum(exp(z - m))), then
    # loss = sum(y * (ls - (z - m))) per row; the gradient (exp(z - m - ls) - y) / n
    # is computed from z in backward, so no softmax array is ever stored
    "logsumexp": KernelSource("T z, T m", "T ls", "exp(REAL(z) - REAL(m))",
                              reduce=("a + b", "ls = T(log(a))", "0")),
    "xent_rows": KernelSource("T z, T m, T ls, T y", "T loss",
                              "REAL(y) * ((REAL(m) - REAL(z)) + REAL(ls))",
                              reduce=("a + b", "loss = T(a)", "0")),
    "softmax_xent_grad": KernelSource(
        "T z, T m, T ls, T y, T n", "T g",
        "g = T((exp((REAL(z) - REAL(m)) - REAL(ls)) - REAL(y)) / REAL(n));"),
    "adam": _adam_source(""),
    "adam_l2": _adam_source("l2"),
    "adamw": _adam_source("decoupled"),
}
for _momentum, _nesterov, _name in ((False, False, "sgd"), (True, False, "sgd_momentum"),
                                    (True, True, "sgd_nesterov")):
    KERNELS[_name] = _sgd_source(_momentum, _nesterov, False)
    KERNELS[_name + "_decay"] = _sgd_source(_momentum, _nesterov, True)


def build_kernel(name: str, real: str) -> Any:
    """CuPy's kernel for ``KERNELS[name]`` computing in ``real`` ("float"/"double")."""
    import cupy

    src = KERNELS[name]
    body = src.body.replace("REAL", real)
    kernel_name = f"xpnet_{name}_{real}"
    if src.reduce is None:
        return cupy.ElementwiseKernel(src.in_params, src.out_params, body, name=kernel_name)
    reduce_expr, post_map_expr, identity = src.reduce
    return cupy.ReductionKernel(src.in_params, src.out_params, body, reduce_expr,
                                post_map_expr.replace("REAL", real), identity,
                                name=kernel_name, reduce_type=real)


def _coefficient(c: Any, dtype: Any) -> Any:
    """A per-step coefficient for a ``T`` scalar: a Python number as it is, an array
    in the parameters' dtype (CuPy refuses one placeholder bound to two dtypes)."""
    d = getattr(c, "dtype", None)
    return c if d is None or d == dtype else c.astype(dtype)


class CupyOps(StandardOps):
    """CuPy: fused element-wise kernels, and its own erf and scatter-add.

    One kernel for each of: sigmoid, SiLU and exact GELU forward; the sigmoid, tanh,
    ReLU, SiLU and GELU gradients (SiLU and GELU recompute their intermediates from
    ``x`` instead of storing them); an SGD step (weight decay, momentum, Nesterov) and
    an Adam/AdamW step, each updating the parameter and its slots in place; softmax
    cross-entropy in three (row max, log-sum-exp, per-row loss) and its gradient in
    one. Kernels are built on first use and cached per compute type; arrays that are
    not all of one float16/32/64 dtype take the standard path.
    """

    #: Use the fused kernels; ``bench/gpu.py`` turns them off to time the standard path.
    fused = True

    def __init__(self) -> None:
        self._kernels: dict[tuple[str, str], Any] = {}

    def kernel(self, name: str, *arrays: Any) -> Any:
        """The fused kernel ``name`` for ``arrays``' dtype, or None where the standard
        path runs instead (fused kernels off, or not one float16/32/64 dtype)."""
        if not self.fused:
            return None
        dtype = arrays[0].dtype
        real = _REAL.get(dtype.char)
        if real is None or any(a.dtype != dtype for a in arrays[1:]):
            return None
        key = (name, real)
        k = self._kernels.get(key)
        if k is None:
            k = self._kernels[key] = build_kernel(name, real)
        return k

    # -- activations ----------------------------------------------------------------
    def sigmoid(self, xp, x):
        k = self.kernel("sigmoid", x)
        return super().sigmoid(xp, x) if k is None else k(x)

    def sigmoid_grad(self, xp, dy, y):
        k = self.kernel("sigmoid_grad", dy, y)
        return super().sigmoid_grad(xp, dy, y) if k is None else k(dy, y)

    def tanh_grad(self, xp, dy, y):
        k = self.kernel("tanh_grad", dy, y)
        return super().tanh_grad(xp, dy, y) if k is None else k(dy, y)

    def relu_grad(self, xp, dy, y):
        k = self.kernel("relu_grad", dy, y)
        return super().relu_grad(xp, dy, y) if k is None else k(dy, y)

    def gelu(self, xp, x):
        k = self.kernel("gelu", x)
        return super().gelu(xp, x) if k is None else (k(x), (x, None, None))

    def gelu_grad(self, xp, dy, ctx):
        x, phi, gauss = ctx
        k = self.kernel("gelu_grad", dy, x)
        if k is not None:
            return k(dy, x)
        if phi is None:  # a fused forward kept only x
            phi = 0.5 * (1.0 + self.erf(xp, _SQRT_HALF * x))
        return super().gelu_grad(xp, dy, (x, phi, gauss))

    def silu(self, xp, x):
        k = self.kernel("silu", x)
        return super().silu(xp, x) if k is None else (k(x), (x, None))

    def silu_grad(self, xp, dy, ctx):
        x, s = ctx
        k = self.kernel("silu_grad", dy, x)
        if k is not None:
            return k(dy, x)
        if s is None:  # a fused forward kept only x
            s = StandardOps.sigmoid(self, xp, x)
        return super().silu_grad(xp, dy, (x, s))

    # -- softmax cross-entropy: ctx (row max, log-sum-exp) instead of the softmax ---
    def softmax_xent(self, xp, z, y):
        lse = self.kernel("logsumexp", z, y)
        if lse is None or z.ndim != 2:
            return super().softmax_xent(xp, z, y)
        m = xp.max(z, axis=1, keepdims=True)
        ls = lse(z, m, axis=1, keepdims=True)
        return self.kernel("xent_rows", z)(z, m, ls, y, axis=1), (m, ls)

    def softmax_xent_grad(self, xp, z, y, ctx, n):
        if not isinstance(ctx, tuple):  # the standard forward's softmax
            return super().softmax_xent_grad(xp, z, y, ctx, n)
        m, ls = ctx
        k = self.kernel("softmax_xent_grad", z, y)
        if k is not None:
            return k(z, m, ls, y, n)
        return super().softmax_xent_grad(xp, z, y, xp.exp((z - m) - ls), n)

    # -- optimizer steps: one kernel updates the parameter and its slots in place ---
    def sgd_update_(self, xp, value, grad, buf, lr, *, momentum=0.0, nesterov=False,
                    weight_decay=0.0):
        name = ("sgd_nesterov" if nesterov else "sgd_momentum") if momentum else "sgd"
        name += "_decay" if weight_decay else ""
        slots = (buf,) if momentum and buf is not None else ()
        k = self.kernel(name, value, grad, *slots)
        if k is None:
            return super().sgd_update_(xp, value, grad, buf, lr, momentum=momentum,
                                       nesterov=nesterov, weight_decay=weight_decay)
        args = [grad, _coefficient(lr, value.dtype)] + [weight_decay] * bool(weight_decay)
        if momentum:
            if buf is None:  # momentum * 0 + g: the first step's buf = g
                buf = xp.zeros_like(value)
            k(*args, momentum, value, buf)
        else:
            k(*args, value)
        return value, buf

    def adam_update_(self, xp, value, grad, m, v, decay, step, unbias, *, betas, eps,
                     weight_decay=0.0, decoupled=False):
        name = ("adamw" if decoupled else "adam_l2") if weight_decay else "adam"
        slots = () if m is None else (m, v)
        k = self.kernel(name, value, grad, *slots)
        if k is None:
            return super().adam_update_(xp, value, grad, m, v, decay, step, unbias,
                                        betas=betas, eps=eps, weight_decay=weight_decay,
                                        decoupled=decoupled)
        if m is None:  # moments from zero: the first step's m = (1 - b1) g, v likewise
            m, v = xp.zeros_like(value), xp.zeros_like(value)
        dtype, (b1, b2) = value.dtype, betas
        args = [grad]
        if weight_decay:
            args.append(_coefficient(decay, dtype) if decoupled else weight_decay)
        k(*args, _coefficient(step, dtype), _coefficient(unbias, dtype), b1, 1 - b1, b2,
          1 - b2, eps, value, m, v)
        return value, m, v

    # -- the rest -----------------------------------------------------------------------
    def erf(self, xp, x):
        """``cupyx.scipy.special.erf`` in ``x``'s dtype: its loops are ``e->d``, ``f->f``,
        ``d->d``, so float16 is computed in float32 here and cast back (float64 would
        reach the unfused GELU and every layer after it)."""
        import cupyx.scipy.special

        if x.dtype == xp.float16:
            return xp.astype(cupyx.scipy.special.erf(xp.astype(x, xp.float32)), x.dtype)
        y = cupyx.scipy.special.erf(x)
        return y if y.dtype == x.dtype else xp.astype(y, x.dtype)

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

    def distributions(self) -> tuple[str, ...]:
        # CuPy's wheels are named for their CUDA version; a source build is "cupy"
        return ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy")

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

    def activate(self, device):
        import cupy

        runtime = cupy.cuda.runtime
        previous = runtime.getDevice()
        if previous == device.id:
            return None
        runtime.setDevice(device.id)
        return lambda: runtime.setDevice(previous)

    def describe(self, device):
        import cupy

        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(device.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"cupy {cupy.__version__} on cuda:{device.id}: {name} (sm_"
                f"{device.compute_capability}, {props['totalGlobalMem'] / 2**30:.0f} GiB) of "
                f"{runtime.getDeviceCount()}; CUDA runtime {runtime.runtimeGetVersion()}, "
                f"driver {runtime.driverGetVersion()}")

    def forbid_host_reads(self, device):
        import contextlib
        import warnings

        import cupyx

        @contextlib.contextmanager
        def guard():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "will be removed in future releases"
                with cupyx.allow_synchronize(False):
                    yield

        return guard

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
        # counter-based: no generator state to set up per draw, and the numbers a captured
        # step draws (it reads the position from a device array)
        *prefix, position = key
        place = self.placement_of(like)
        with like.device:
            return counter_uniform(place.xp, shape, like.dtype, place.device,
                                   fold_key(tuple(prefix)), position)

    def make_ops(self) -> StandardOps:
        return CupyOps()

    def compiler(self) -> CudaGraphs:
        return CudaGraphs()

    def communicator(self, bootstrap: Communicator | None = None) -> Communicator:
        """NCCL between the ranks of ``bootstrap`` (the MPI job's communicator), for CuPy
        arrays; ``bootstrap`` itself where CuPy was built without NCCL."""
        cupy = self.import_library()
        if bootstrap is None or bootstrap.size == 1:
            raise ValueError("cupy: NCCL needs the ranks of a job to start from (MPI)")
        if not getattr(cupy.cuda.nccl, "available", False):
            return bootstrap
        return CupyNCCL(bootstrap)

    def synchronize(self, device):
        device.synchronize()

    def mpi_direct(self, x, cuda_aware):
        return cuda_aware

    def flat_buffer(self, arrays):
        import cupy

        with arrays[0].device:
            buf = cupy.concatenate([a.reshape(-1) for a in arrays])
            cupy.cuda.get_current_stream().synchronize()  # ready before MPI reads it
        return buf


class CudaGraphs(CapturingCompiler):
    """CUDA-graph capture and replay of a step (``xpnet.train.compiled`` drives it).

    What CuPy (14) does while a stream captures (``Stream.begin_capture``):

    - Memory: CuPy captures in relaxed mode (``cudaStreamCaptureModeRelaxed``) precisely
      so that its pool may still grow by ``cudaMalloc`` inside a capture. The pool keeps
      its free blocks per stream: what the eager warm-up (on the current stream) freed is
      not handed to the capture (on this compiler's stream). Arrays made while capturing
      are the graph's scratch: Python drops them after the capture and their blocks go
      back to the pool, yet every replay writes there. So they come from a pool of this
      step's own (``using_allocator``): no other array is ever handed that memory; only
      this step's later captures (other batch shapes) reuse it, and its graphs are
      launched one after another on one stream, never overlapping.
    - Refused: cuBLAS, cuRAND, cuSOLVER and cuSPARSE calls (``NotImplementedError:
      calling cuBLAS API during stream capture is currently unsupported``, raised by
      ``cublas.setStream`` before any call: every matmul), and synchronous copies and
      calls (``RuntimeError: the current stream is capturing, so ... are disallowed``).
      :meth:`refusal` names them; the step then runs eagerly.

    The eager warm-up before a capture makes what a step creates on its first run
    (optimizer slots, metric sums) and builds its kernels: a capture records work
    without running it. The stream is made on the device current at the first capture:
    the step runs with its model's device current."""

    name = "CUDA graph"

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.pool = cupy.cuda.MemoryPool()
        self._stream: Any = None

    @property
    def stream(self) -> Any:
        """The stream captures run on (a stream belongs to the device current when it is
        made: the model's, while a step runs)."""
        if self._stream is None:
            self._stream = self.cupy.cuda.Stream(non_blocking=True)
        return self._stream

    def eager(self, fn: Any) -> Any:
        with self.cupy.cuda.using_allocator(self.pool.malloc):
            return fn()

    def capture(self, fn: Any) -> Any:
        cupy = self.cupy
        cupy.cuda.get_current_stream().synchronize()  # the static inputs are written
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                fn()
            except BaseException:
                try:
                    self.stream.end_capture()  # the stream must leave capture mode
                except Exception:  # noqa: BLE001 - an invalidated capture: fn's error counts
                    pass
                raise
            return self.stream.end_capture()

    def refusal(self, error: BaseException) -> str | None:
        """CuPy's refusals to capture: cuBLAS, cuRAND, cuSOLVER and cuSPARSE calls
        (``NotImplementedError: calling cuBLAS API during stream capture is currently
        unsupported``: every matmul), and synchronous copies and calls (``the current
        stream is capturing, so ... are disallowed``, CUDA's
        ``cudaErrorStreamCapture...``)."""
        text = str(error)
        if isinstance(error, NotImplementedError) and "during stream capture" in text:
            return text
        if "stream is capturing" in text or "StreamCapture" in text:
            return text
        return None

    eager_note = "CuPy's fused element-wise kernels still apply"

    def launch(self, graph: Any) -> None:
        # on the current stream: after the copies into the static inputs, before reads
        graph.launch(self.cupy.cuda.get_current_stream())


#: NCCL's names for the dtypes gradients come in
_NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
                "float64": "NCCL_FLOAT64", "int32": "NCCL_INT32", "int64": "NCCL_INT64"}


class CupyNCCL(Communicator):
    """NCCL for CuPy arrays between the ranks of an MPI job (``bootstrap``): rank 0's
    NCCL id reaches the others over MPI, and small Python values, host numbers and
    arrays of other libraries keep going over MPI. CuPy arrays are summed by NCCL on a
    stream of its own: it waits for the work that wrote a buffer (an event), and the
    caller's stream waits for the sum only when the result is asked for, so the next
    bucket is packed while one travels."""

    name = "NCCL"

    def __init__(self, bootstrap: Communicator):
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl, self.boot = cupy, nccl, bootstrap
        self.rank, self.size = bootstrap.rank, bootstrap.size
        self.local_rank, self.local_size = bootstrap.local_rank, bootstrap.local_size
        uid = bootstrap.bcast_object(nccl.get_unique_id() if self.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _ours(self, arrays: list[Any]) -> bool:
        return all(isinstance(a, self.cupy.ndarray) for a in arrays)

    def _on_stream(self, run: Any) -> Any:
        """``run(stream pointer)`` on NCCL's stream once the current stream's work is
        done; the event that marks its end."""
        cuda = self.cupy.cuda
        ready = cuda.Event()
        ready.record()  # on the current stream: the buffer is written
        self.stream.wait_event(ready)
        run(self.stream.ptr)
        done = cuda.Event()
        done.record(self.stream)
        return done

    def start_allreduce(self, buffer: Any) -> Pending:
        if not self._ours([buffer]):
            return self.boot.start_allreduce(buffer)
        kind = getattr(self.nccl, _NCCL_DTYPES[str(buffer.dtype)])
        done = self._on_stream(lambda stream: self.comm.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, kind, self.nccl.NCCL_SUM, stream))

        def result() -> Any:
            self.cupy.cuda.get_current_stream().wait_event(done)
            return buffer

        return Pending(wait=result)

    def _split(self, flat: Any, like: list[Any]) -> list[Any]:
        out, at = [], 0
        for a in like:
            out.append(flat[at:at + a.size].reshape(a.shape))
            at += a.size
        return out

    def allreduce_sum(self, arrays: list[Any]) -> list[Any]:
        if not arrays or not self._ours(arrays):
            return self.boot.allreduce_sum(arrays)
        flat = self.cupy.concatenate([a.reshape(-1) for a in arrays])
        return self._split(self.start_allreduce(flat).wait(), arrays)

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        if not arrays or not self._ours(arrays):
            return self.boot.broadcast(arrays, root)
        flat = self.cupy.concatenate([a.reshape(-1) for a in arrays])
        kind = getattr(self.nccl, _NCCL_DTYPES[str(flat.dtype)])
        done = self._on_stream(lambda stream: self.comm.bcast(
            flat.data.ptr, flat.size, kind, root, stream))
        self.cupy.cuda.get_current_stream().wait_event(done)
        return self._split(flat, arrays)

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        return self.boot.bcast_object(value, root)

    def allgather_object(self, value: Any) -> list[Any]:
        return self.boot.allgather_object(value)

    def abort(self, code: int = 1) -> None:
        self.boot.abort(code)
