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
from .backend import backend_of, on_model_device, to_numpy
from .layers.base import Layer
from .losses import Loss
from .random import RandomStream


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference estimate."""


@on_model_device
def gradcheck(layer: Layer, x: Any, loss: Loss | None = None, target: Any = None, *,
              eps: float | None = None, rtol: float | None = None,
              atol: float | None = None, seed: int = 0,
              stream: RandomStream | None = None) -> bool:
    """Check ``layer.backward`` against central finite differences.

    Parameters
    ----------
    layer : Layer
        Any layer or model; it is copied, never changed.
    x : array, shape as the layer expects, or a list of arrays for several inputs
        The input, on the layer's backend and device. Floating inputs are checked
        (in float64); integer ones (token ids for an Embedding) are passed as they are
        and have no gradient to check, so ``backward`` may return None for them.
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
        What random layers (Dropout) draw from. Every forward pass starts from where it
        stood when gradcheck was called, so each pass draws the same masks; it is left
        as one forward pass leaves it. Default: ``RandomStream(seed)``.

    Returns
    -------
    True, or raises GradcheckError naming the parameter, the worst relative error
    and the index where it occurs.
    """
    multi = isinstance(x, (list, tuple))
    xs = list(x) if multi else [x]
    be = backend_of(xs[0])
    xp = be.xp
    wide = be.supports("float64")
    dt = xp.float64 if wide else xp.float32
    eps = eps if eps is not None else (1e-6 if wide else 1e-2)
    rtol = rtol if rtol is not None else (1e-5 if wide else 5e-2)
    atol = atol if atol is not None else (1e-7 if wide else 1e-3)

    model = copy.deepcopy(layer).astype("float64" if wide else "float32")
    dev = device_of(xs[0])

    def put(host: np.ndarray) -> Any:
        return be.asarray(host, dtype=dt)

    hosts = [to_numpy(a).astype(np.float64) for a in xs]
    floats = [xp.isdtype(a.dtype, "real floating") for a in xs]
    inputs = [put(h) if f else a for h, f, a in zip(hosts, floats, xs, strict=True)]
    if target is not None and xp.isdtype(target.dtype, "real floating"):
        target = be.xp.astype(target, dt)

    stream = stream if stream is not None else RandomStream(seed)
    key, start = stream.key, stream.position

    def forward(args: list[Any]) -> Any:
        """A training forward pass that draws the same random masks every time: each
        starts where the stream stood when gradcheck was called."""
        stream.key, stream.position = key, start
        with stream.active():
            return model.forward(args if multi else args[0], train=True)

    y = forward(inputs)
    after = stream.position  # where one forward pass leaves the stream
    proj = put(np.random.default_rng(seed).standard_normal(tuple(y.shape)))

    def cost(args: list[Any]) -> float:
        out = forward(args)
        c = loss.forward(out, target) if loss is not None else namespace(out).sum(out * proj)
        return float(to_numpy(c))

    # analytic
    model.zero_grad()
    out = forward(inputs)
    if loss is not None:
        loss.forward(out, target)
        dy = loss.backward()
    else:
        dy = proj
    dx = model.backward(dy)
    dxs = (list(dx) if multi else [dx]) if dx is not None else [None] * len(xs)
    for d in dxs:
        if d is not None and device_of(d) != dev:
            raise GradcheckError(f"{layer.label}: input gradient is on {device_of(d)}, "
                                 f"input on {dev}")

    checks: list[tuple[str, np.ndarray, Any]] = []
    for name, p in model.named_parameters():
        grad = np.zeros(p.shape) if p.grad is None else to_numpy(p.grad).astype(np.float64)
        checks.append((name, grad, p))
    for i, (d, is_float) in enumerate(zip(dxs, floats, strict=True)):
        if is_float and d is not None:
            checks.append((f"input[{i}]" if multi else "input",
                           to_numpy(d).astype(np.float64), i))

    for name, analytic, p in checks:
        param = not isinstance(p, int)
        base = to_numpy(p.value).astype(np.float64) if param else hosts[p]
        numeric = np.zeros_like(base)
        flat = base.reshape(-1)
        for j in range(flat.size):
            saved = flat[j]
            step = eps
            vals = []
            for sign in (1.0, -1.0):
                flat[j] = saved + sign * step
                if param:
                    p.value = put(base)
                    vals.append(cost(inputs))
                else:
                    vals.append(cost([put(base) if k == p else a
                                      for k, a in enumerate(inputs)]))
            flat[j] = saved
            numeric.reshape(-1)[j] = (vals[0] - vals[1]) / (2 * step)
        if param:
            p.value = put(base)
        _compare(layer, name, analytic, numeric, rtol, atol)
    stream.key, stream.position = key, after  # as if the layer had run forward once
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
