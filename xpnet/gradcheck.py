"""Finite-difference gradient checking, on the layer's own backend and device.

The analytic gradients of backward() are compared with central differences
``(C(w + eps) - C(w - eps)) / (2 eps)`` for every element of the input and of every
parameter. The check runs on a float64 copy of the layer; on a device without
float64 (Apple's MPS, array-api-strict's ``no_float64``) it falls back to float32
with a larger step and looser tolerances. This is a testing tool: it reads values
back to the host freely.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ._compat import device as device_of
from ._compat import namespace
from .backend import backend_of, to_numpy
from .layers.base import Layer
from .losses import Loss
from .random import RandomStream


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference estimate."""


def gradcheck(layer: Layer, x: Any, loss: Loss | None = None, target: Any = None, *,
              eps: float | None = None, rtol: float | None = None,
              atol: float | None = None, seed: int = 0,
              stream: RandomStream | None = None) -> bool:
    """Check ``layer.backward`` against central finite differences.

    Parameters
    ----------
    layer : Layer
        Any layer or model; it is copied, never changed.
    x : array, shape as the layer expects
        The input, on the layer's backend and device.
    loss, target : Loss and its target, optional
        The scalar to differentiate. Without them, ``C = sum(y * R)`` for a fixed
        random ``R`` shaped like the output, so every output element matters.
    eps, rtol, atol : float, optional
        Step and tolerances; defaults depend on the dtype (float64: 1e-6, 1e-5, 1e-7;
        float32 fallback: 1e-2, 5e-2, 1e-3). An element passes when
        ``|analytic - numeric| <= atol + rtol * |numeric|``.
    seed : int
        Seeds the random projection ``R``.
    stream : RandomStream, optional
        What random layers (Dropout) draw from; it is restarted before every forward
        pass, so each pass draws the same masks. Default: ``RandomStream(seed)``.

    Returns
    -------
    True, or raises GradcheckError naming the parameter, the worst relative error
    and the index where it occurs.
    """
    be = backend_of(x)
    xp = be.xp
    wide = be.supports("float64")
    dt = xp.float64 if wide else xp.float32
    eps = eps if eps is not None else (1e-6 if wide else 1e-2)
    rtol = rtol if rtol is not None else (1e-5 if wide else 5e-2)
    atol = atol if atol is not None else (1e-7 if wide else 1e-3)

    model = copy.deepcopy(layer).astype("float64" if wide else "float32")
    dev = device_of(x)

    def put(host: np.ndarray) -> Any:
        return be.asarray(host, dtype=dt)

    x_host = to_numpy(x).astype(np.float64)
    is_float_input = xp.isdtype(x.dtype, "real floating")
    x_dev = put(x_host) if is_float_input else x
    if target is not None and xp.isdtype(target.dtype, "real floating"):
        target = be.xp.astype(target, dt)

    stream = stream if stream is not None else RandomStream(seed)
    key = stream.key

    def forward(inp: Any) -> Any:
        """A training forward pass that draws the same random masks every time."""
        with stream.restart(*key).active():
            return model.forward(inp, train=True)

    y = forward(x_dev)
    proj = put(np.random.default_rng(seed).standard_normal(tuple(y.shape)))

    def cost(inp: Any) -> float:
        out = forward(inp)
        c = loss.forward(out, target) if loss is not None else namespace(out).sum(out * proj)
        return float(to_numpy(c))

    # analytic
    model.zero_grad()
    out = forward(x_dev)
    if loss is not None:
        loss.forward(out, target)
        dy = loss.backward()
    else:
        dy = proj
    dx = model.backward(dy)
    if dx is not None and device_of(dx) != dev:
        raise GradcheckError(f"{layer.label}: input gradient is on {device_of(dx)}, "
                             f"input on {dev}")

    checks: list[tuple[str, np.ndarray, Any]] = []
    for name, p in model.named_parameters():
        grad = np.zeros(p.shape) if p.grad is None else to_numpy(p.grad).astype(np.float64)
        checks.append((name, grad, p))
    if is_float_input and dx is not None:
        checks.append(("input", to_numpy(dx).astype(np.float64), None))

    for name, analytic, p in checks:
        base = to_numpy(p.value).astype(np.float64) if p is not None else x_host
        numeric = np.zeros_like(base)
        flat = base.reshape(-1)
        for j in range(flat.size):
            saved = flat[j]
            vals = []
            for sign in (1.0, -1.0):
                flat[j] = saved + sign * eps
                arr = put(base)
                if p is not None:
                    p.value = arr
                    vals.append(cost(x_dev))
                else:
                    vals.append(cost(arr))
            flat[j] = saved
            numeric.reshape(-1)[j] = (vals[0] - vals[1]) / (2 * eps)
        if p is not None:
            p.value = put(base)
        _compare(layer, name, analytic, numeric, rtol, atol)
    return True


def _compare(layer: Layer, name: str, analytic: np.ndarray, numeric: np.ndarray,
             rtol: float, atol: float) -> None:
    if analytic.shape != numeric.shape:
        raise GradcheckError(
            f"{layer.label}: gradient of {name} has shape {analytic.shape}, "
            f"expected {numeric.shape}"
        )
    err = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    if np.all(err <= bound) and np.all(np.isfinite(analytic)):
        return
    ratio = np.where(np.isfinite(analytic), err / bound, np.inf)
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    rel = err[idx] / max(abs(numeric[idx]), atol)
    raise GradcheckError(
        f"{layer.label}: gradient of {name!r} is wrong; worst relative error {rel:.3g} "
        f"at index {tuple(int(i) for i in idx)}: analytic {analytic[idx]:.6g}, "
        f"numeric {numeric[idx]:.6g} (rtol={rtol}, atol={atol})"
    )
