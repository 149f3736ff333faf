"""JAX: immutable arrays, so every update rebinds instead of writing in place."""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, NamedTuple

from .._compat import device
from .base import (
    Adapter,
    BackendUnavailableError,
    Placement,
    TracingCompiler,
    tf32_allowed,
)
from .cupy import cuda_index
from .standard import StandardOps


class JaxOps(StandardOps):
    """JAX arrays cannot be written: the updates return new arrays."""

    def sub_scaled_(self, xp, value, lr, g):
        return value - lr * g

    def scale_add_(self, xp, a, beta, g, alpha=1.0):
        return beta * a + (g if alpha == 1.0 else alpha * g)

    def split_rows(self, xp, a, size):
        # one compiled call per epoch instead of an eager slice (~0.3 ms each) per batch
        return list(_split_rows(a, size))

    def add_at(self, xp, target, key, value):
        return target.at[key].add(value)

    def set_at(self, xp, target, key, value):
        return target.at[key].set(value)

    def erf(self, xp, x):
        import jax

        return jax.lax.erf(x)

    def rows_add(self, xp, n_rows, index, values):
        out = xp.zeros((n_rows, values.shape[1]), dtype=values.dtype, device=device(values))
        return out.at[index].add(values)  # a scatter-add: repeated indices sum

    def conv_forward(self, xp, x, W, b, stride, padding, dilation=None, groups=1):
        """:meth:`StandardOps.conv_forward` as XLA's own convolution.

        im2col written in standard calls traces to gathers, concatenations and one GEMM,
        which XLA cannot turn back into a convolution; ``lax.conv_general_dilated`` is the
        op it compiles best. The context is the inputs: the backward pass is the
        convolution's transposes (``jax.vjp``), compiled once per shape.
        """
        config = (tuple(stride), tuple(padding),
                  None if dilation is None else tuple(dilation), groups)
        y = _conv_jits()[0](x, W, config)
        if b is not None:
            y = y + xp.reshape(b, (1, -1) + (1,) * (W.ndim - 2))
        return y, _JaxConvTape(x, W, config, b is not None)

    def conv_backward(self, xp, ctx, dy, need_input):
        """``(dx or None, dW, db or None)`` through the convolution's transposes."""
        if not isinstance(ctx, _JaxConvTape):
            return super().conv_backward(xp, ctx, dy, need_input)
        dx, dW = _conv_jits()[1](ctx.x, ctx.W, dy, ctx.config, need_input)
        db = self.sum_axes(xp, dy, (0, *range(2, dy.ndim))) if ctx.has_bias else None
        return dx, dW, db


class _JaxConvTape(NamedTuple):
    """What :meth:`JaxOps.conv_backward` needs: the forward's operands and settings."""

    x: Any
    W: Any
    config: tuple
    has_bias: bool


def _conv(x: Any, W: Any, config: tuple) -> Any:
    import jax

    stride, padding, dilation, groups = config
    spatial = "DHW"[3 - len(stride):]
    dims = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
    # HIGHEST: float32 products in float32, as every other backend computes them
    return jax.lax.conv_general_dilated(
        x, W, stride, [(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=dims, feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST)


def _conv_grads(x: Any, W: Any, dy: Any, config: tuple, need_input: bool) -> tuple[Any, Any]:
    import jax

    if need_input:
        _, back = jax.vjp(lambda x, W: _conv(x, W, config), x, W)
        return back(dy)
    # the input gradient is not wanted: differentiate in W alone, so XLA never builds it
    _, back = jax.vjp(lambda W: _conv(x, W, config), W)
    return None, back(dy)[0]


@functools.lru_cache(maxsize=1)
def _conv_jits() -> tuple[Any, Any]:
    """The forward and backward convolutions, jitted (static settings): eagerly one
    compiled call each; inside a traced step, inlined into it."""
    import jax

    return (jax.jit(_conv, static_argnums=2),
            jax.jit(_conv_grads, static_argnums=(3, 4)))


def _split_rows(a: Any, size: int) -> tuple[Any, ...]:
    global _split_jit
    if _split_jit is None:
        import jax

        def split(a, size):
            n = a.shape[0]
            return tuple(a[s:min(s + size, n)] for s in range(0, n, size))

        _split_jit = jax.jit(split, static_argnums=1)
    return _split_jit(a, size)


_split_jit: Any = None


@functools.lru_cache(maxsize=64)
def prefix_key(prefix: tuple[int, ...]) -> Any:
    """A JAX key for the leading elements of a random-stream key (the seed, the epoch):
    each 64-bit element folded in as two 32-bit halves."""
    import jax

    k = jax.random.key(0)
    for v in prefix:
        k = jax.random.fold_in(jax.random.fold_in(k, v & 0xFFFFFFFF), (v >> 32) & 0xFFFFFFFF)
    return k


def _hash32(x: Any) -> Any:
    """:func:`xpnet.backends.standard.hash32` on uint32 arrays (products wrap mod 2**32)."""
    import jax.numpy as jnp

    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform_at(like: Any, shape: tuple[int, ...], key: Any, position: Any) -> Any:
    """Uniform [0, 1) draws for ``position`` under ``key``: the same numbers whether
    ``position`` is a Python int (eager) or a traced one (inside a jitted step), for
    positions below 2**32.

    Counter-based, as the standard generator (:func:`xpnet.backends.standard.
    counter_uniform`): element ``i`` is ``hash(hash(i ^ k) + k) >> 8`` over 2**24 with
    ``k`` the key's two words and the position hashed together, in uint32 arithmetic
    that XLA fuses into one loop. ``jax.random.uniform`` (threefry) took about five
    times as long on CPUs: 14% of a compiled GPT step with dropout 0.1."""
    import jax
    import jax.numpy as jnp

    words = jax.random.key_data(key).astype(jnp.uint32)
    k = _hash32(words[0] ^ _hash32(words[1] ^ _hash32(jnp.asarray(position, jnp.uint32))))
    bits = _hash32(_hash32(jax.lax.iota(jnp.uint32, math.prod(shape)) ^ k) + k)
    u = (bits >> 8).astype(jnp.float32) * (1.0 / 2**24)
    return jnp.reshape(u if u.dtype == like.dtype else u.astype(like.dtype), shape)


def jax_default_device(device: Any) -> Any:
    import jax

    return jax.default_device(device)


class JaxCompiler(TracingCompiler):
    """``jax.jit`` of a pure step; random draws come from a key passed in."""

    name = "jax.jit"

    def compile(self, fn: Any, donate_argnums: tuple[int, ...]) -> Any:
        import jax

        return jax.jit(fn, donate_argnums=donate_argnums)

    def key(self, prefix: tuple[int, ...], like: Any) -> Any:
        return prefix_key(tuple(prefix))

    def position(self, position: int, like: Any) -> Any:
        import numpy as np

        return np.uint32(position)

    def scalars(self, values: tuple[Any, ...], like: Any) -> tuple[Any, ...]:
        return values  # Python floats are traced as (weakly typed) values, not constants

    def uniform(self, like: Any, shape: tuple[int, ...], key: Any, position: Any) -> Any:
        return uniform_at(like, shape, key, position)


class JaxAdapter(Adapter):
    name = "jax"
    modules = ("jax", "jaxlib")
    namespaces = ("jax.numpy",)
    package = "jax"
    install = 'pip install "xpnet[jax]"'

    def before_import(self) -> None:
        """JAX takes 75% of every GPU's memory the first time any of its platforms
        starts (``jax.devices("cpu")`` too), which leaves CuPy and torch in the same
        process a quarter: xpnet imports it with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
        (memory as needed), unless the user set that variable. A jax imported before
        xpnet first asks for it keeps the setting it started with."""
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    def prefer_threads(self, n: int) -> None:
        """One thread: XLA's Eigen pool off, through XLA_FLAGS, read when JAX starts; a
        started JAX, or XLA_FLAGS that already say, are left as they are. XLA has no
        flag for another count."""
        flags = os.environ.get("XLA_FLAGS", "")
        if n == 1 and "jax" not in sys.modules and "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()

    def threads_note(self) -> str | None:
        # XLA sizes its CPU thread pool once, when the CPU client starts, and offers no
        # call to change it afterwards
        return ("jax: XLA's CPU threads are fixed when JAX starts, so fit(threads=) "
                "cannot change them; for one thread set XLA_FLAGS="
                "--xla_cpu_multi_thread_eigen=false before jax is imported "
                "(xpnet train --threads 1 does)")

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
        # float32 matmuls on a GPU default to reduced precision (TF32 passes): full
        # float32, as on the CPU, unless XPNET_TF32=1 (a process-wide JAX setting; the
        # convolutions ask for HIGHEST themselves)
        jax.config.update("jax_default_matmul_precision",
                          "tensorfloat32" if tf32_allowed() else "highest")
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

    def describe(self, device):
        import jax
        import jaxlib

        return (f"jax {jax.__version__} (jaxlib {jaxlib.__version__}) on "
                f"{getattr(device, 'device_kind', device)} ({device.platform}); matmul "
                f"precision {jax.config.jax_default_matmul_precision or 'default'}")

    def placement_of(self, x: Any) -> Placement:
        import jax.numpy as xp

        dev = device(x)
        if dev is None:  # a tracer inside a compiled step: placed by the compiled call
            return Placement(xp, None, "traced")
        return Placement(xp, dev, "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}")

    def to_device(self, place, host, dtype, copy):
        import jax

        return jax.device_put(place.xp.asarray(host, dtype=dtype, copy=True), place.device)

    def to_host(self, x):
        import numpy as np

        return np.asarray(x)

    def uniform(self, like, shape, key):
        *prefix, position = key
        with jax_default_device(like.device):
            return uniform_at(like, shape, prefix_key(tuple(prefix)), position)

    def compiler(self) -> JaxCompiler:
        return JaxCompiler()

    def make_ops(self) -> StandardOps:
        return JaxOps()

    def synchronize(self, device):
        """Nothing to wait on: JAX has no device-wide barrier, and reading a result
        (or ``block_until_ready``) waits for the work that makes it."""
