"""The one place for gaps in the array API standard and for per-backend fast paths.

Layers, losses and optimizers call these helpers instead of reaching for a library.
Each helper has a standard-only path that every backend can run; a fast path for one
library is added only beside it, with a test that the two agree.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np


def numpy_namespace() -> Any:
    """NumPy's own namespace where it implements the standard (NumPy >= 2.1), else
    array-api-compat's wrapper. Plain NumPy skips a layer of Python calls."""
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 1):
        return np
    import array_api_compat.numpy as xnp

    return xnp


_namespaces: dict[type, Any] = {np.ndarray: numpy_namespace()}


def namespace(x: Any) -> Any:
    """The array API namespace of ``x``, cached by array type.

    ``array_namespace`` inspects its argument each call (about 15 µs on
    array-api-strict); the namespace depends only on the type, so look it up once.
    """
    t = type(x)
    xp = _namespaces.get(t)
    if xp is None:
        xp = array_api_compat.array_namespace(x)
        _namespaces[t] = xp
    return xp


def device(x: Any) -> Any:
    """The device ``x`` lives on (``"cpu"`` for NumPy).

    The standard's ``x.device`` attribute first (torch, CuPy, JAX >= 0.4.27,
    array-api-strict all have it); array-api-compat's helper only for the rest.
    """
    if type(x) is np.ndarray:
        return "cpu"
    d = getattr(x, "device", None)
    if d is None or callable(d):
        return array_api_compat.device(x)
    return d


def is_host(xp: Any) -> bool:
    """Whether arrays of ``xp`` already live in host memory (NumPy only).

    Checks that need a value on the host (``bool(...)``) are free there and run at
    once; elsewhere they would stall a GPU, so they are deferred.
    """
    return xp is np or xp.__name__ == "array_api_compat.numpy"


def is_jax(xp: Any) -> bool:
    return xp is not np and xp.__name__.startswith("jax")


_integral: dict[Any, bool] = {}


def is_integral(xp: Any, dtype: Any) -> bool:
    """``xp.isdtype(dtype, "integral")``, remembered (NumPy's takes ~5 us a call)."""
    key = (xp, dtype)
    found = _integral.get(key)
    if found is None:
        found = _integral[key] = bool(xp.isdtype(dtype, "integral"))
    return found


def library(x: Any) -> str:
    """The short name of the library that made ``x`` (for messages)."""
    mod = type(x).__module__.split(".")[0]
    return {"jaxlib": "jax", "array_api_strict": "array_api_strict"}.get(mod, mod)


def check_same_place(who: Any, x: Any, ref: Any, what: str = "input") -> None:
    """Raise a clear error when ``x`` is from another library or device than ``ref``.

    Only metadata is read (types and device objects), never array values. ``who`` is a
    name or a layer, whose label is only built when there is an error to report.
    """
    if type(x) is type(ref) and type(x) is np.ndarray:
        return
    who = getattr(who, "label", who)
    if type(x) is not type(ref):
        if library(x) != library(ref):
            raise TypeError(
                f"{who}: {what} is a {library(x)} array ({type(x).__name__}) but the "
                f"parameters are {library(ref)} arrays; move the data with "
                f"backend.asarray(...) or the model with model.to(...)"
            )
        return
    dx, dr = device(x), device(ref)
    if dx != dr:
        raise ValueError(
            f"{who}: {what} is on device {dx} but the parameters are on {dr}; "
            f"move one of them so both are on the same device"
        )


def sum_rows(xp: Any, a: Any) -> Any:
    """``sum(a, axis=0)``: NumPy's ``add.reduce`` skips ``np.sum``'s Python wrapper."""
    return sum_axes(xp, a, 0)


def sum_axes(xp: Any, a: Any, axes: int | tuple[int, ...]) -> Any:
    """``sum(a, axis=axes)``, through ``add.reduce`` on NumPy."""
    if xp is np:
        return np.add.reduce(a, axis=axes)
    return xp.sum(a, axis=axes)


def sub_(xp: Any, value: Any, delta: Any) -> Any:
    """``value - delta``, in place where the library allows it (not JAX).

    Returns the array to rebind, so immutable arrays work the same way.
    """
    if is_jax(xp):
        return value - delta
    value -= delta
    return value


def add_into(xp: Any, target: Any, key: tuple, value: Any) -> Any:
    """``target[key] += value`` for a key of slices, returning the array to keep.

    The standard has no scatter-add; a key made of slices names each element once, so
    an in-place add is exact. JAX arrays are immutable and take ``.at[key].add``.
    """
    if is_jax(xp):
        return target.at[key].add(value)
    target[key] += value
    return target


def pad_axes(xp: Any, x: Any, pads: tuple[int, ...], first: int | None = None) -> Any:
    """Zero-pad ``len(pads)`` consecutive axes of ``x``, from axis ``first`` (default: the
    trailing ones), by ``pads[i]`` on both sides.

    The standard has no ``pad``; concatenating zero blocks works on every backend.
    """
    first = x.ndim - len(pads) if first is None else first
    for i, p in enumerate(pads):
        if p == 0:
            continue
        shape = list(x.shape)
        shape[first + i] = p
        z = xp.zeros(tuple(shape), dtype=x.dtype, device=device(x))
        x = xp.concat([z, x, z], axis=first + i)
    return x


def _mix(key: tuple[int, ...]) -> int:
    """One 63-bit integer seed from a key, for generators that take a single int."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def uniform(like: Any, shape: tuple[int, ...]) -> Any:
    """Uniform [0, 1) samples of ``like``'s library, device and dtype.

    CuPy, torch and JAX draw on the device with their own generators; NumPy and
    array-api-strict draw on the host (strict then copies to its device). Every draw
    is seeded from ``backend.next_random_key()``, so ``xn.seed`` fixes them all.
    """
    from .backend import next_random_key

    key = next_random_key()
    lib = library(like)
    if lib == "torch":
        return _uniform_torch(like, shape, key)
    if lib == "jax":
        return _uniform_jax(like, shape, key)
    if lib == "cupy":
        return _uniform_cupy(like, shape, key)
    host = np.random.default_rng(list(key)).random(shape, dtype=np.float32)
    xp = namespace(like)
    return xp.astype(xp.asarray(host, device=device(like)), like.dtype)


def _uniform_torch(like: Any, shape: tuple[int, ...], key: tuple[int, ...]) -> Any:
    import torch

    if like.device.type == "meta":  # shapes only
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    gen = torch.Generator(device=like.device)
    gen.manual_seed(_mix(key))
    return torch.rand(shape, generator=gen, dtype=like.dtype, device=like.device)


def _uniform_jax(like: Any, shape: tuple[int, ...], key: tuple[int, ...]) -> Any:
    import jax

    with jax.default_device(device(like)):
        return jax.random.uniform(jax.random.key(_mix(key) % 2**32), shape, dtype=like.dtype)


def _uniform_cupy(like: Any, shape: tuple[int, ...], key: tuple[int, ...]) -> Any:
    import cupy

    with like.device:
        return cupy.random.default_rng(_mix(key)).random(shape, dtype=like.dtype)


def check_labels_on_host(who: str, labels: Any, n_classes: int) -> None:
    """Raise at once for integer labels outside ``[0, n_classes)`` held in host memory."""
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{who}: labels must lie in [0, {n_classes - 1}] for {n_classes} classes, "
            f"got values from {lo} to {hi}"
        )


# -- fast paths ------------------------------------------------------------------------
class StandardOps:
    """Small primitives of the hot path, in standard array API calls only.

    ``ops(xp)`` returns this or a subclass for one library that does the same math
    faster; tests check every fast path against this reference.
    """

    def linear(self, xp: Any, x: Any, W: Any, b: Any) -> Any:
        """``x @ W.T + b`` (``b`` may be None)."""
        y = x @ W.T
        return y if b is None else y + b

    def relu(self, xp: Any, x: Any) -> Any:
        return xp.maximum(x, 0.0)

    def relu_grad(self, xp: Any, dy: Any, y: Any) -> Any:
        """``dy`` where ``y > 0``, else 0."""
        return self.keep(xp, dy, y > 0)

    def keep(self, xp: Any, dy: Any, mask: Any) -> Any:
        """``dy`` where ``mask``, else 0 (multiplying by the mask beats ``where``)."""
        return dy * xp.astype(mask, dy.dtype)

    def sigmoid(self, xp: Any, x: Any) -> Any:
        """``1 / (1 + exp(-x))`` as ``0.5 tanh(x / 2) + 0.5``: no overflow anywhere."""
        return 0.5 * xp.tanh(0.5 * x) + 0.5

    def sigmoid_grad(self, xp: Any, dy: Any, y: Any) -> Any:
        return dy * (y * (1.0 - y))

    def sub_scaled_(self, xp: Any, value: Any, lr: float, g: Any) -> Any:
        """``value - lr * g``, in place where the library allows; returns what to keep."""
        return sub_(xp, value, lr * g)

    #: A library's own convolution (forward, backward) or None: im2col in conv.py
    conv: Any = None

    def softmax_xent(self, xp: Any, z: Any, y: Any) -> tuple[Any, Any]:
        """``(-sum(y * log softmax(z)) per row, softmax(z))`` for logits ``z`` (n, k)."""
        shifted = z - xp.max(z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        return -xp.sum(y * (shifted - xp.log(s)), axis=1), e / s


class NumpyOps(StandardOps):
    """NumPy: reuse each fresh result in place instead of allocating temporaries."""

    def linear(self, xp, x, W, b):
        y = x @ W.T
        if b is not None:
            y += b
        return y

    def keep(self, xp, dy, mask):
        return dy * mask  # bool * float32 stays float32, with no astype pass

    def sigmoid(self, xp, x):
        y = np.multiply(x, 0.5)
        np.tanh(y, out=y)
        y *= 0.5
        y += 0.5
        return y

    def sigmoid_grad(self, xp, dy, y):
        g = 1.0 - y
        g *= y
        g *= dy
        return g

    def sub_scaled_(self, xp, value, lr, g):
        value -= lr * g
        return value


class TorchOps(StandardOps):
    """PyTorch: fused kernels (addmm, threshold/sigmoid backward, add_ with alpha)."""

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

    def sub_scaled_(self, xp, value, lr, g):
        return value.add_(g, alpha=-lr)

    def softmax_xent(self, xp, z, y):
        logp = self.torch.log_softmax(z, dim=1)
        return -(y * logp).sum(dim=1), logp.exp()

    @property
    def conv(self):
        return self

    def conv_forward(self, x, W, b, stride, padding):
        """``aten.convolution``: PyTorch's own kernels, same layout and math."""
        d = len(stride)
        return self.aten.convolution(x, W, b, list(stride), list(padding), [1] * d, False,
                                     [0] * d, 1)

    def conv_backward(self, dy, x, W, stride, padding, need_input, has_bias):
        """``(dx or None, dW, db or None)`` from ``aten.convolution_backward``."""
        d = len(stride)
        return self.aten.convolution_backward(
            dy, x, W, [W.shape[0]] if has_bias else None, list(stride), list(padding),
            [1] * d, False, [0] * d, 1, [need_input, True, has_bias])


_ops: dict[Any, StandardOps] = {}


def ops(xp: Any) -> StandardOps:
    """The fastest primitives for namespace ``xp`` (the standard ones by default)."""
    found = _ops.get(xp)
    if found is None:
        name = xp.__name__
        if xp is np:
            found = NumpyOps()
        elif name in ("array_api_compat.torch", "torch"):
            found = TorchOps()
        else:
            found = StandardOps()
        _ops[xp] = found
    return found
