"""Batch normalisation over the channel axis (axis 1), with running statistics, and
layer normalisation over the last axis.

Training normalises with the batch's mean and (biased) variance per channel and
updates ``running_mean``/``running_var`` (unbiased), as PyTorch; inference uses the
running statistics. With ``xhat = (x - mean) / sqrt(var + eps)`` and ``m`` values per
channel, backward is

    dC/dgamma = sum(dy * xhat),  dC/dbeta = sum(dy)
    dC/dx = (1 / (m sqrt(var + eps))) * (m g - sum(g) - xhat * sum(g * xhat)),  g = dy * gamma

with the sums over the batch (and positions) per channel; training keeps ``xhat`` and
``1 / sqrt(var + eps)``.

LayerNorm normalises each example's last axis of ``D`` features instead, with the
same equations and the sums taken the other way: mean and biased variance over the
last axis, in training and inference alike (no running statistics),
``y = gamma * xhat + beta``, and, with ``g = dy * gamma``,

    dC/dgamma = sum over leading axes of dy * xhat,  dC/dbeta = sum over leading axes of dy
    dC/dx = (1 / (D sqrt(var + eps))) * (D g - sum_D(g) - xhat * sum_D(g * xhat))

LayerNorm's arithmetic is the adapters' ``layer_norm`` / ``layer_norm_grad``
primitives (``xpnet/backends/standard.py``, in standard calls; NumPy's in place, torch's
``native_layer_norm``); training keeps what they need (``xhat`` and ``1 / sqrt(var +
eps)`` in the standard one).

Mixed precision: for a float16 or bfloat16 input (``fit(..., precision="bf16-mixed")``)
both layers compute the statistics, ``xhat`` and backward's sums in float32, and return
the output and the input gradient in the input's dtype, the parameter gradients in the
parameters'. Running statistics stay in their own dtype (float32 masters).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _args
from .._compat import namespace
from ..backend import Backend, resolve
from ..backends import ops
from .base import Layer, check_like_parameters


def _float32_if_low(xp: Any, a: Any) -> Any:
    """``a`` upcast to float32 when its dtype is below it (float16, bfloat16: mixed
    precision), else ``a`` itself: normalisation statistics are computed in float32."""
    if a.dtype == xp.float32 or a.dtype == xp.float64:
        return a
    return xp.astype(a, xp.float32)


class _BatchNorm(Layer):
    ndims: tuple[int, ...] = ()
    layout = ""

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        who = type(self).__name__
        self.num_features = _args.integer(num_features, "num_features", who, minimum=1)
        self.eps = _args.real(eps, "eps", who, low=0.0, low_open=True)
        self.momentum = _args.real(momentum, "momentum", who, low=0.0, high=1.0)
        self.dtype = _args.float_dtype(dtype, who)
        be, shapes = resolve(backend, device), self.param_shapes(self.get_config())
        # the scale and shift are trained; the running statistics are not
        for pname, fill, trainable in (("weight", 1.0, True), ("bias", 0.0, True),
                                       ("running_mean", 0.0, False),
                                       ("running_var", 1.0, False)):
            setattr(self, pname, self._new_parameter(pname, np.full(shapes[pname], fill),
                                                     dtype, trainable, backend=be))
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if x.ndim not in self.ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{self.label}: expected input {self.layout} with C = "
                             f"{self.num_features}, got shape {tuple(x.shape)}")
        check_like_parameters(self, x, self.weight.value)
        m = math.prod(x.shape) // self.num_features
        if train and m < 2:  # one value per channel: its variance is 0, running_var ruined
            raise ValueError(
                f"{self.label}: training needs more than one value per channel, got input "
                f"of shape {tuple(x.shape)}; use a batch of 2 or more (or train=False)"
            )
        xp = namespace(x)
        axes = (0, *range(2, x.ndim))
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        gamma = xp.reshape(self.weight.value, shape)
        beta = xp.reshape(self.bias.value, shape)
        xs = _float32_if_low(xp, x)
        if train:
            mean = xp.mean(xs, axis=axes, keepdims=True)
            centred = xs - mean
            var = xp.mean(centred * centred, axis=axes, keepdims=True)
            inv = 1.0 / xp.sqrt(var + self.eps)
            xhat = centred * inv
            mo = self.momentum
            flat_mean = xp.reshape(mean, (self.num_features,))
            flat_var = xp.reshape(var, (self.num_features,)) * (m / max(m - 1, 1))
            self.running_mean.value = (1 - mo) * self.running_mean.value + mo * flat_mean
            self.running_var.value = (1 - mo) * self.running_var.value + mo * flat_var
            self._cache = (xhat, inv, gamma, axes, m)
        else:
            rm = xp.reshape(self.running_mean.value, shape)
            rv = xp.reshape(self.running_var.value, shape)
            xhat = (xs - rm) / xp.sqrt(rv + self.eps)
            self._cache = None
        y = gamma * xhat + beta
        return y if xs is x else xp.astype(y, x.dtype)

    def backward(self, dy: Any) -> Any:
        xhat, inv, gamma, axes, m = self._require_cache(self._cache)
        xp = namespace(dy)
        d = _float32_if_low(xp, dy)  # xhat is float32 then too
        dgamma, dbeta = xp.sum(d * xhat, axis=axes), xp.sum(d, axis=axes)
        g = d * gamma
        dx = (inv / m) * (m * g - xp.sum(g, axis=axes, keepdims=True)
                          - xhat * xp.sum(g * xhat, axis=axes, keepdims=True))
        if d is not dy:  # back to the dtypes of the parameters and of the input
            dgamma, dbeta, dx = (xp.astype(a, dt) for a, dt in (
                (dgamma, gamma.dtype), (dbeta, gamma.dtype), (dx, dy.dtype)))
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx

    def get_config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``weight``, ``bias``, ``running_mean`` and ``running_var``, each
        ``(num_features,)``."""
        c = config["num_features"]
        return {name: (c,) for name in ("weight", "bias", "running_mean", "running_var")}


class BatchNorm1D(_BatchNorm):
    """Batch norm for ``(N, C)`` or ``(N, C, L)`` inputs (statistics per channel C)."""

    ndims, layout = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2D(_BatchNorm):
    """Batch norm for ``(N, C, H, W)`` inputs (statistics per channel C)."""

    ndims, layout = (4,), "(N, C, H, W)"


class LayerNorm(Layer):
    """Layer normalisation over the last axis, as ``torch.nn.LayerNorm(normalized_shape,
    eps, elementwise_affine, bias)``.

    Each example's ``D`` features are normalised with their own mean and biased
    variance, then scaled and shifted: ``y = (x - mean) / sqrt(var + eps) * weight +
    bias``. Training and inference compute the same thing.

    Input ``(..., D)``: any leading axes (``(N, D)``, ``(N, L, D)``); output the same shape.

    Parameters
    ----------
    normalized_shape : int or tuple of one int
        ``D``, the size of the last axis (PyTorch's ``(D,)`` is accepted).
    eps : float
        Added to the variance, > 0.
    elementwise_affine : bool
        Whether to learn ``weight`` (and ``bias``); without it the layer has no
        parameters and returns the normalised input.
    bias : bool
        Whether to learn ``bias`` (with ``elementwise_affine``): GPT-style models often
        leave it out.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Attributes
    ----------
    weight : Parameter, shape (D,), or None without ``elementwise_affine``
        The scale, ones at first.
    bias : Parameter, shape (D,), or None without ``bias`` or ``elementwise_affine``
        The shift, zeros at first.
    """

    positionwise = True

    def __init__(self, normalized_shape: int | tuple[int], *, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        if isinstance(normalized_shape, (list, tuple)):
            if len(normalized_shape) != 1:
                raise ValueError(
                    f"LayerNorm: normalized_shape must be an int or a tuple of one int (the "
                    f"last axis is normalised), got {tuple(normalized_shape)!r}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = _args.integer(normalized_shape, "normalized_shape",
                                              "LayerNorm", minimum=1)
        self.eps = _args.real(eps, "eps", "LayerNorm", low=0.0, low_open=True)
        for what, value in (("elementwise_affine", elementwise_affine), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"LayerNorm: {what} must be True or False, got {value!r}")
        self.elementwise_affine, self.use_bias = elementwise_affine, bias
        self.dtype = _args.float_dtype(dtype, "LayerNorm")
        be, shapes = resolve(backend, device), self.param_shapes(self.get_config())
        self.weight = self.bias = None
        if "weight" in shapes:
            self.weight = self._new_parameter("weight", np.ones(shapes["weight"]), dtype,
                                              backend=be)
        if "bias" in shapes:
            self.bias = self._new_parameter("bias", np.zeros(shapes["bias"]), dtype,
                                            backend=be)
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        d = self.normalized_shape
        if x.ndim < 1 or x.shape[-1] != d:
            raise ValueError(f"{self.label}: expected input of shape (..., {d}), got "
                             f"{tuple(x.shape)}")
        if self.weight is not None:  # without parameters, any floating input (as GELU)
            check_like_parameters(self, x, self.weight.value)
        xp = namespace(x)
        xs = _float32_if_low(xp, x)
        y, ctx = ops(xp).layer_norm(xp, xs, None if self.weight is None else self.weight.value,
                                    None if self.bias is None else self.bias.value, self.eps)
        self._cache = ctx if train else None
        return y if xs is x else xp.astype(y, x.dtype)

    def backward(self, dy: Any) -> Any:
        ctx = self._require_cache(self._cache)
        xp = namespace(dy)
        dz = _float32_if_low(xp, dy)  # the statistics are float32 then too
        dx, dweight, dbias = ops(xp).layer_norm_grad(
            xp, dz, ctx, None if self.weight is None else self.weight.value,
            None if self.bias is None else self.bias.value)
        if dz is not dy:
            dx = xp.astype(dx, dy.dtype)
        for p, grad in ((self.weight, dweight), (self.bias, dbias)):
            if p is not None:  # back to the parameters' dtype (mixed precision)
                p.accumulate(grad if grad.dtype == p.value.dtype else
                             xp.astype(grad, p.value.dtype))
        return dx

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"normalized_shape": self.normalized_shape, "eps": self.eps}
        if not self.elementwise_affine:  # named only when not the default, so the
            config["elementwise_affine"] = False  # descriptions of earlier files stay
        if not self.use_bias:
            config["bias"] = False
        return {**config, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``weight`` and ``bias``, both ``(normalized_shape,)``; no ``bias`` with
        ``bias=False``, neither with ``elementwise_affine=False``."""
        d = config["normalized_shape"]
        d = d[0] if isinstance(d, (list, tuple)) and len(d) == 1 else d
        if not config.get("elementwise_affine", True):
            return {}
        return {"weight": (d,), "bias": (d,)} if config.get("bias", True) else {"weight": (d,)}
