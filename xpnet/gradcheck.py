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
from collections.abc import Callable
from typing import Any

import numpy as np

from ._compat import device as device_of
from ._compat import namespace
from .backend import backend_of, on_model_device, to_numpy
from .layers.base import Layer, Parameter
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
    wide = be.supports("float64")
    eps, rtol, atol = _tolerances(wide, eps, rtol, atol)
    model = copy.deepcopy(layer).astype("float64" if wide else "float32")
    dt = be.xp.float64 if wide else be.xp.float32

    def put(host: np.ndarray) -> Any:
        return be.asarray(host, dtype=dt)

    hosts = [to_numpy(a).astype(np.float64) for a in xs]
    floats = [be.xp.isdtype(a.dtype, "real floating") for a in xs]
    inputs = [put(h) if f else a for h, f, a in zip(hosts, floats, xs, strict=True)]
    if target is not None and be.xp.isdtype(target.dtype, "real floating"):
        target = be.xp.astype(target, dt)

    stream = stream if stream is not None else RandomStream(seed)
    objective = _Objective(model, stream, multi, inputs, put, loss, target)
    y = objective.forward(inputs)
    after = stream.position  # where one forward pass leaves the stream
    objective.proj = put(np.random.default_rng(seed).standard_normal(tuple(y.shape)))

    dxs = _per_input(objective.backward(), multi, len(xs))
    _check_devices(layer, dxs, device_of(xs[0]))
    for name, analytic, what in _gradients_to_check(model, dxs, floats, multi):
        numeric = _numeric_gradient(objective, what, hosts, eps)
        _compare(layer, name, analytic, numeric, rtol, atol)
    objective.leave_stream_at(after)  # as if the layer had run forward once
    return True


def _tolerances(wide: bool, eps: float | None, rtol: float | None,
                atol: float | None) -> tuple[float, float, float]:
    """The step and tolerances: the caller's, or the defaults for float64 (``wide``)
    or for the float32 fallback, where rounding needs a larger step."""
    eps = eps if eps is not None else (1e-6 if wide else 1e-2)
    rtol = rtol if rtol is not None else (1e-5 if wide else 5e-2)
    atol = atol if atol is not None else (1e-7 if wide else 1e-3)
    return eps, rtol, atol


class _Objective:
    """The scalar C that gradcheck differentiates, on the converted copy of the layer.

    Every forward pass first puts the random stream back where it stood when gradcheck
    was called, so random layers (Dropout) draw the same masks on every pass.
    """

    def __init__(self, model: Layer, stream: RandomStream, multi: bool, inputs: list[Any],
                 put: Callable[[np.ndarray], Any], loss: Loss | None, target: Any) -> None:
        self.model = model
        self.stream = stream
        self.key, self.start = stream.key, stream.position
        self.multi = multi
        self.inputs = inputs
        self.put = put
        self.loss = loss
        self.target = target
        self.proj: Any = None  # the random projection R of C = sum(y * R), set once y is known

    def forward(self, args: list[Any]) -> Any:
        """A training forward pass that draws the same random masks every time."""
        self.stream.key, self.stream.position = self.key, self.start
        with self.stream.active():
            return self.model.forward(args if self.multi else args[0], train=True)

    def cost(self, args: list[Any]) -> float:
        out = self.forward(args)
        if self.loss is not None:
            c = self.loss.forward(out, self.target)
        else:
            c = namespace(out).sum(out * self.proj)
        return float(to_numpy(c))

    def cost_at(self, what: Parameter | int, host: np.ndarray) -> float:
        """C with the parameter ``what``, or input number ``what``, set to ``host``."""
        if isinstance(what, int):
            return self.cost([self.put(host) if k == what else a
                              for k, a in enumerate(self.inputs)])
        what.value = self.put(host)
        return self.cost(self.inputs)

    def backward(self) -> Any:
        """The analytic gradients: fills the parameters' ``grad`` and returns what
        ``backward`` returns for the input(s)."""
        self.model.zero_grad()
        out = self.forward(self.inputs)
        if self.loss is None:
            return self.model.backward(self.proj)
        self.loss.forward(out, self.target)
        return self.model.backward(self.loss.backward())

    def leave_stream_at(self, position: int) -> None:
        self.stream.key, self.stream.position = self.key, position


def _per_input(dx: Any, multi: bool, n: int) -> list[Any]:
    """The input gradient(s) from ``backward`` as one entry (array or None) per input."""
    if dx is None:
        return [None] * n
    return list(dx) if multi else [dx]


def _check_devices(layer: Layer, dxs: list[Any], dev: Any) -> None:
    for d in dxs:
        if d is not None and device_of(d) != dev:
            raise GradcheckError(f"{layer.label}: input gradient is on {device_of(d)}, "
                                 f"input on {dev}")


def _gradients_to_check(model: Layer, dxs: list[Any], floats: list[bool],
                        multi: bool) -> list[tuple[str, np.ndarray, Parameter | int]]:
    """(name, analytic gradient on the host, parameter or input number) for every
    parameter, then for every floating input; a parameter without ``grad`` counts as
    a zero gradient."""
    checks: list[tuple[str, np.ndarray, Parameter | int]] = []
    for name, p in model.named_parameters():
        grad = np.zeros(p.shape) if p.grad is None else to_numpy(p.grad).astype(np.float64)
        checks.append((name, grad, p))
    for i, (d, is_float) in enumerate(zip(dxs, floats, strict=True)):
        if is_float and d is not None:
            checks.append((f"input[{i}]" if multi else "input",
                           to_numpy(d).astype(np.float64), i))
    return checks


def _numeric_gradient(objective: _Objective, what: Parameter | int,
                      hosts: list[np.ndarray], eps: float) -> np.ndarray:
    """Central differences of C for a parameter, or for input number ``what``."""
    if isinstance(what, int):
        return _central_differences(objective, what, hosts[what], eps)
    base = to_numpy(what.value).astype(np.float64)
    numeric = _central_differences(objective, what, base, eps)
    what.value = objective.put(base)  # back to its unperturbed value
    return numeric


def _central_differences(objective: _Objective, what: Parameter | int, base: np.ndarray,
                         eps: float) -> np.ndarray:
    """``(C(w + eps) - C(w - eps)) / (2 eps)`` element by element; ``base`` (the host
    copy of ``what``) is stepped in place and restored."""
    numeric = np.zeros_like(base)
    flat = base.reshape(-1)
    for j in range(flat.size):
        saved = flat[j]
        flat[j] = saved + eps
        plus = objective.cost_at(what, base)
        flat[j] = saved - eps
        minus = objective.cost_at(what, base)
        flat[j] = saved
        numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
    return numeric


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
