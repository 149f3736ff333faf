"""Gradient clipping, on the parameters' device: no value is read on the host.

``clip_grad_norm`` scales every gradient by ``min(1, max_norm / (total + 1e-6))``, where
``total`` is the norm of all the gradients together (as if they were one vector), and
returns ``total``: ``torch.nn.utils.clip_grad_norm_``'s rule and result. The scale is
taken with ``xp.minimum`` on the device, never with an ``if`` on a value, so a step that
clips stays free of host reads (and traceable by ``jax.jit`` and ``torch.compile``).
``clip_grad_value`` clamps every gradient element to ``[-clip_value, clip_value]``.

Both take what optimizers take: a Layer (its parameters) or an iterable of Parameters.
Parameters without a gradient are skipped. Gradients are rebound, never changed in
place, so JAX's immutable arrays work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from . import _args
from ._compat import device, namespace
from .layers.base import Layer, Parameter

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _parameters(parameters: Iterable[Parameter] | Layer | Parameter, who: str
                ) -> list[Parameter]:
    if isinstance(parameters, Layer):
        return parameters.parameters()
    if isinstance(parameters, Parameter):
        return [parameters]
    params = list(parameters)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"{who}: expected a Layer or Parameters (model.parameters()), "
                            f"got an item of type {type(p).__name__}")
    return params


def _norm_type(norm_type: Any, who: str) -> float:
    if norm_type in ("inf", math.inf):
        return math.inf
    return _args.real(norm_type, "norm_type", who, low=0.0, low_open=True)


def clip_grad_norm(parameters: Iterable[Parameter] | Layer | Parameter, max_norm: float,
                   norm_type: float | str = 2.0) -> Any:
    """Scale the gradients so that their total norm is at most ``max_norm``.

    ``total = ||(g_1, g_2, ...)||_p`` over every element of every gradient
    (``p = norm_type``; ``inf``: the largest absolute value), then each gradient becomes
    ``g * min(1, max_norm / (total + 1e-6))``, as ``torch.nn.utils.clip_grad_norm_``.

    Parameters
    ----------
    parameters : Layer or iterable of Parameter
        Parameters whose ``grad`` is None are skipped.
    max_norm : float >= 0
    norm_type : float > 0 or ``inf`` (``"inf"``)

    Returns
    -------
    array, shape ()
        The total norm before clipping, on the gradients' device in the first gradient's
        dtype (zero when no parameter has a gradient). Not read on the host: call
        ``float()`` on it (one device sync) only if you need the number.
    """
    who = "clip_grad_norm"
    params = _parameters(parameters, who)
    max_norm = _args.real(max_norm, "max_norm", who, low=0.0)
    p_norm = _norm_type(norm_type, who)
    live = [p for p in params if p.grad is not None]
    if not live:
        if not params:
            raise ValueError(f"{who}: got no parameters")
        xp = namespace(params[0].value)
        return xp.zeros((), dtype=params[0].value.dtype, device=device(params[0].value))
    xp = namespace(live[0].grad)
    dtype = live[0].grad.dtype
    total = None
    for p in live:
        if math.prod(p.grad.shape) == 0:
            continue
        g = p.grad
        if p_norm == 2.0:
            part = xp.sum(g * g)
        elif p_norm == math.inf:
            part = xp.max(xp.abs(g))
        elif p_norm == 1.0:
            part = xp.sum(xp.abs(g))
        else:
            part = xp.sum(xp.abs(g) ** p_norm)
        if part.dtype != dtype:
            part = xp.astype(part, dtype)
        if total is None:
            total = part
        else:
            total = xp.maximum(total, part) if p_norm == math.inf else total + part
    if total is None:  # every gradient is empty
        return xp.zeros((), dtype=dtype, device=device(live[0].grad))
    if p_norm == 2.0:
        total = xp.sqrt(total)
    elif p_norm not in (1.0, math.inf):
        total = total ** (1.0 / p_norm)
    scale = xp.minimum(max_norm / (total + 1e-6), xp.ones_like(total))
    for p in live:
        g = p.grad
        p.grad = g * (scale if g.dtype == dtype else xp.astype(scale, g.dtype))
    return total


def clip_grad_value(parameters: Iterable[Parameter] | Layer | Parameter,
                    clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]``, as
    ``torch.nn.utils.clip_grad_value_``. Parameters whose ``grad`` is None are skipped.

    Parameters
    ----------
    parameters : Layer or iterable of Parameter
    clip_value : float > 0
    """
    who = "clip_grad_value"
    params = _parameters(parameters, who)
    clip_value = _args.real(clip_value, "clip_value", who, low=0.0, low_open=True)
    for p in params:
        if p.grad is not None:
            p.grad = namespace(p.grad).clip(p.grad, -clip_value, clip_value)
