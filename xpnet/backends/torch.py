"""PyTorch tensors, on the CPU, CUDA, Apple's MPS or the shape-only ``meta`` device."""

from __future__ import annotations

import atexit
import itertools
import math
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from .base import (
    Adapter,
    BackendUnavailableError,
    Communicator,
    Pending,
    Placement,
    TracingCompiler,
    tf32_allowed,
)
from .standard import StandardOps, counter_uniform, fold_key, hash32


class TorchOps(StandardOps):
    """PyTorch: fused kernels (addmm, threshold/sigmoid backward, add_ with alpha) and
    PyTorch's own convolution."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.aten = torch.ops.aten

    def linear(self, xp, x, W, b):
        if b is None or x.ndim != 2:
            return super().linear(xp, x, W, b)
        return self.torch.addmm(b, x, W.T)

    def relu(self, xp, x):
        return self.torch.relu(x)

    def relu_grad(self, xp, dy, y):
        return self.aten.threshold_backward(dy, y, 0)

    def sigmoid(self, xp, x):
        return self.torch.sigmoid(x)

    def sigmoid_grad(self, xp, dy, y):
        return self.aten.sigmoid_backward(dy, y)

    def tanh_grad(self, xp, dy, y):
        return self.aten.tanh_backward(dy, y)

    def silu(self, xp, x):
        return self.torch.nn.functional.silu(x), (x, None)

    def silu_grad(self, xp, dy, ctx):
        return self.aten.silu_backward(dy, ctx[0])

    def sub_scaled_(self, xp, value, lr, g):
        if isinstance(lr, self.torch.Tensor):  # a compiled step's per-step coefficient
            return value.sub_(lr * g)
        return value.add_(g, alpha=-lr)

    def erf(self, xp, x):
        return self.torch.special.erf(x)

    def gelu(self, xp, x):
        return self.torch.nn.functional.gelu(x), (x, None, None)

    def gelu_grad(self, xp, dy, ctx):
        x, phi, gauss = ctx
        if phi is not None:
            return super().gelu_grad(xp, dy, ctx)
        return self.aten.gelu_backward(dy, x)

    def layer_norm(self, xp, x, weight, bias, eps):
        # mixed precision: float32 statistics with half-precision parameters, which the
        # standard path promotes and ATen refuses ("mixed dtype")
        if _mixed(x, weight, bias):
            weight, bias = (None if p is None else p.to(x.dtype) for p in (weight, bias))
        y, mean, rstd = self.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
        return y, (x, mean, rstd)

    def layer_norm_grad(self, xp, dy, ctx, weight, bias):
        x, mean, rstd = ctx
        if _mixed(x, weight, bias):
            weight, bias = (None if p is None else p.to(x.dtype) for p in (weight, bias))
        return tuple(self.aten.native_layer_norm_backward(
            dy, x, [x.shape[-1]], mean, rstd, weight, bias,
            [True, weight is not None, bias is not None]))

    def adam_update_(self, xp, value, grad, m, v, decay, step, unbias, *, betas, eps,
                     weight_decay=0.0, decoupled=False):
        # the standard update in place: one temporary for sqrt(v), one for m / denom
        b1, b2 = betas
        g = grad
        if weight_decay and decoupled:
            value.sub_(value * decay)
        elif weight_decay:
            g = g + weight_decay * value
        if m is None:
            m, v = g * (1 - b1), (g * g).mul_(1 - b2)
        else:
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = v.sqrt().mul_(unbias).add_(eps)
        value.sub_(self.torch.div(m, denom).mul_(step))
        return value, m, v

    def rows_add(self, xp, n_rows, index, values):
        if index.dtype not in (self.torch.int64, self.torch.int32):
            index = index.long()
        out = values.new_zeros((n_rows, values.shape[1]))
        return out.index_add_(0, index, values)  # repeated indices sum

    def softmax_xent(self, xp, z, y):
        logp = self.torch.log_softmax(z, dim=1)
        return -(y * logp).sum(dim=1), logp.exp()

    def conv_forward(self, xp, x, W, b, stride, padding, dilation=None, groups=1):
        """``aten.convolution``: PyTorch's own kernels, same layout and math (dilation
        and groups included)."""
        d = len(stride)
        dilation = [1] * d if dilation is None else list(dilation)
        y = self.aten.convolution(x, W, b, list(stride), list(padding), dilation, False,
                                  [0] * d, groups)
        return y, (x, W, stride, padding, b is not None, dilation, groups)

    def conv_backward(self, xp, ctx, dy, need_input):
        x, W, stride, padding, has_bias, dilation, groups = ctx
        d = len(stride)
        return tuple(self.aten.convolution_backward(
            dy, x, W, [W.shape[0]] if has_bias else None, list(stride), list(padding),
            dilation, False, [0] * d, groups, [need_input, True, has_bias]))


def _mixed(x: Any, *params: Any) -> bool:
    """Whether a parameter's dtype differs from ``x``'s."""
    return any(p is not None and p.dtype != x.dtype for p in params)


def _signed32(c: int) -> int:
    """The int32 with the bits of ``c`` in [0, 2**32)."""
    return c - (1 << 32) if c >= 1 << 31 else c


def _hash32_(torch: Any, x: Any) -> Any:
    """:func:`~xpnet.backends.standard.hash32` in place on an int32 tensor: the same 32
    bits (int32 products wrap modulo 2**32; ``& mask`` makes each shift logical)."""
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift).bitwise_and_((1 << (32 - shift)) - 1))
        if factor is not None:
            x.mul_(_signed32(factor))
    return x


def counter_uniform_int32(torch: Any, shape: tuple[int, ...], dtype: Any, device: Any,
                          key: int, position: int) -> Any:
    """:func:`~xpnet.backends.standard.counter_uniform`'s numbers (bit for bit) for an
    eager draw (``key`` and ``position`` ints), in place on int32 tensors: the standard
    one splits each product into 16-bit halves in int64, about four times the passes
    and twice the bytes, which made dropout a third of a GPT step."""
    n = math.prod(shape)
    if n >= 1 << 31:  # int32 element indices would wrap
        return counter_uniform(torch, shape, dtype, device, key, position)
    k = _signed32(hash32(key ^ hash32(position)))
    bits = torch.arange(n, dtype=torch.int32, device=device).bitwise_xor_(k)
    bits = _hash32_(torch, _hash32_(torch, bits).add_(k))
    u = torch.bitwise_right_shift(bits, 8).bitwise_and_(0xFFFFFF).to(torch.float32)
    u = u.mul_(1.0 / 2**24).reshape(shape)
    return u if u.dtype == dtype else u.to(dtype)


class TorchCompiler(TracingCompiler):
    """``torch.compile`` of a pure step (inductor; on the CPU it needs a C++ compiler).

    Random draws are traced: the counter-based generator's key and position are tensors
    the step takes, so each step draws new masks, the ones an eager step draws."""

    name = "torch.compile"

    def compile(self, fn: Any, donate_argnums: tuple[int, ...]) -> Any:
        import torch

        return torch.compile(_own_code(fn), backend=self.backend)

    #: the torch.compile backend; tests use "aot_eager" to check the trace without the
    #: minutes inductor takes to generate code
    backend = "inductor"


_compiled_count = itertools.count()


def _own_code(fn: Any) -> Any:
    """``fn`` (a function or bound method) on a code object of its own.

    Dynamo keeps its compiled graphs per code object, at most
    ``torch._dynamo.config.recompile_limit`` (8) of them, then runs that code eagerly
    with only a logged warning. Every TrainStep's step is the same method, so the ninth
    model or batch shape in a process would silently lose its compilation."""
    func = getattr(fn, "__func__", fn)
    n = next(_compiled_count)
    code = func.__code__.replace(co_name=f"{func.__code__.co_name}_{n}")
    own = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__,
                             func.__closure__)
    own.__kwdefaults__ = func.__kwdefaults__
    bound = getattr(fn, "__self__", None)
    return own if bound is None else types.MethodType(own, bound)


def _set_tf32(torch: Any, allowed: bool) -> None:
    """TF32 for CUDA float32 matmuls (cuBLAS) and convolutions (cuDNN), on or off.

    PyTorch's defaults differ (matmuls in float32, cuDNN convolutions in TF32), so a
    convolution on a GPU differed from the CPU's by ~1e-3; xpnet's default is float32 for
    both, TF32 with ``XPNET_TF32=1``. These are PyTorch's process-wide flags: the newer
    ``fp32_precision`` settings where PyTorch has them (2.9 and later; mixing them with
    the older ``allow_tf32`` makes PyTorch raise), ``allow_tf32`` before."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        matmul.fp32_precision = conv.conv.fp32_precision = "tf32" if allowed else "ieee"
    else:  # pragma: no cover - PyTorch before 2.9
        matmul.allow_tf32 = conv.allow_tf32 = allowed


class TorchAdapter(Adapter):
    name = "torch"
    aliases = ("pytorch",)
    modules = ("torch",)
    namespaces = ("array_api_compat.torch", "torch")
    package = "torch"
    install = 'pip install "xpnet[torch]"'

    def open(self, device: str | None) -> Placement:
        torch = self.import_library()
        spec = "cuda" if device == "gpu" else device or "cpu"
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
            _set_tf32(torch, tf32_allowed())
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            raise BackendUnavailableError("torch: the MPS device is not available here")
        import array_api_compat.torch as xp

        return Placement(xp, dev, str(dev))

    def describe(self, device):
        import torch

        about = f"torch {torch.__version__} on {device}"
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            about += (f": {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB) "
                      f"of {torch.cuda.device_count()}; CUDA {torch.version.cuda}, cuDNN "
                      f"{torch.backends.cudnn.version()}, float32 matmuls "
                      f"{getattr(torch.backends.cuda.matmul, 'fp32_precision', '?')}")
        return about

    def forbid_host_reads(self, device):
        if device.type != "cuda":
            return None
        import contextlib

        import torch

        @contextlib.contextmanager
        def guard():
            before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(before)

        return guard

    def devices(self) -> list[str]:
        import torch

        devs = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available():
            devs.append("mps")
        return devs

    def placement_of(self, x: Any) -> Placement:
        import array_api_compat.torch as xp

        return Placement(xp, x.device, str(x.device))

    def to_device(self, place, host, dtype, copy):
        import torch

        if not copy and place.device.type == "cpu" and host.flags.writeable:
            t = torch.from_numpy(host)  # shares the host memory
            return t if dtype is None or t.dtype == dtype else t.to(dtype)
        # torch.tensor, not asarray: asarray refuses a 0-d array with a dtype change
        # ("can't alias tensor with dtype 'Double' into dtype 'Float'")
        return torch.tensor(host, dtype=dtype, device=place.device)

    def to_host(self, x):
        return x.detach().cpu().numpy()

    def uniform(self, like, shape, key):
        import torch

        if like.device.type == "meta":  # shapes only
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        *prefix, position = key  # counter-based: what a compiled step draws too
        return counter_uniform_int32(torch, shape, like.dtype, like.device,
                                     fold_key(tuple(prefix)), position)

    def compiler(self) -> TorchCompiler:
        return TorchCompiler()

    def communicator(self, stage: Any = None) -> TorchDistributed:
        self.import_library()
        return TorchDistributed(stage)

    def make_ops(self) -> StandardOps:
        return TorchOps()

    def synchronize(self, device):
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)

    def limit_threads(self, n: int) -> None:
        if "torch" in sys.modules:  # only a torch already in use has threads to limit
            sys.modules["torch"].set_num_threads(n)

    def set_threads(self, n: int) -> Callable[[], None] | None:
        torch = sys.modules.get("torch")
        if torch is None:  # not imported: no pool yet, and none wanted
            return None
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        return lambda: torch.set_num_threads(before)

    def mpi_direct(self, x, cuda_aware):
        return False  # staged through host memory: torch.cuda tensors are not MPI buffers



class TorchDistributed(Communicator):
    """The ranks of a ``torch.distributed`` job (started by ``torchrun``, which sets
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``): gloo for arrays in
    host memory, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"`` when CUDA is there).

    torch tensors are reduced where they are; arrays of other libraries go through a
    torch CPU tensor over the same host memory (NumPy) or one host copy, and come back
    as they came. A failing rank exits: torchrun then ends the other workers.
    """

    name = "torch.distributed"

    def __init__(self, stage: Any, backend: str | None = None):
        """``stage``: how arrays of other libraries go to the host and back
        (``to_host(a)``, ``to_device(host, like)``: xpnet.distributed's)."""
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.stage = torch, dist, stage
        if not dist.is_initialized():
            chosen = backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend=chosen)
            # gloo's threads still running at interpreter exit abort the process
            # ("terminate called without an active exception"): end the group first
            atexit.register(_destroy_group, dist)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def _flat(self, arrays: list[Any]) -> Any:
        """One flat torch tensor of the arrays: on their device for torch tensors, over
        host memory for the others (staged by ``stage``)."""
        torch = self.torch
        if all(isinstance(a, torch.Tensor) for a in arrays):
            return torch.cat([a.reshape(-1) for a in arrays])
        import numpy as np

        return torch.from_numpy(np.concatenate(
            [np.asarray(self.stage.to_host(a)).reshape(-1) for a in arrays]))

    def _back(self, flat: Any, like: list[Any]) -> list[Any]:
        native = isinstance(like[0], self.torch.Tensor)
        out, start = [], 0
        for a in like:
            size = math.prod(a.shape)
            part = flat[start:start + size].reshape(tuple(a.shape))
            start += size
            out.append(part if native else self.stage.to_device(part.numpy(), a))
        return out

    def allreduce_sum(self, arrays: list[Any]) -> list[Any]:
        if not arrays or self.size == 1:
            return arrays
        flat = self._flat(arrays)
        self.dist.all_reduce(flat)
        return self._back(flat, arrays)

    def start_allreduce(self, buffer: Any) -> Pending:
        if self.size == 1:
            return Pending(buffer)
        flat = self._flat([buffer])
        work = self.dist.all_reduce(flat, async_op=True)

        def done() -> Any:
            work.wait()
            return self._back(flat, [buffer])[0]

        return Pending(wait=done)

    def broadcast(self, arrays: list[Any], root: int = 0) -> list[Any]:
        if not arrays or self.size == 1:
            return arrays
        flat = self._flat(arrays)
        self.dist.broadcast(flat, src=root)
        return self._back(flat, arrays)

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        box = [value]
        self.dist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, value)
        return out

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)  # torchrun sees a failed worker and ends the others


def _destroy_group(dist: Any) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
