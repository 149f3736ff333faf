"""Optimizers and learning-rate schedules.

An optimizer holds a list of ``Parameter`` objects and, on ``step()``, moves each
``value`` against its ``grad``. Updates happen on the parameter's device; where the
library allows (everything but JAX) they are in place, otherwise the value is rebound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from . import _args
from ._compat import namespace
from .backends import ops
from .layers.base import Layer, Parameter

Schedule = Callable[[int], float]


# -- learning-rate schedules: callables from the step count (0-based) to a rate ------
class StepLR:
    """``lr * gamma ** (step // step_size)``."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = _args.real(lr, "lr", "StepLR", low=0.0, low_open=True)
        self.step_size = _args.integer(step_size, "step_size", "StepLR", minimum=1)
        self.gamma = _args.real(gamma, "gamma", "StepLR", low=0.0, low_open=True)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class CosineLR:
    """Cosine decay from ``lr`` to ``min_lr`` over ``total_steps``, then ``min_lr``."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.lr = _args.real(lr, "lr", "CosineLR", low=0.0, low_open=True)
        self.total_steps = _args.integer(total_steps, "total_steps", "CosineLR", minimum=1)
        self.min_lr = _args.real(min_lr, "min_lr", "CosineLR", low=0.0, high=self.lr)

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / max(self.total_steps, 1)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "min_lr": self.min_lr}


SCHEDULES = {"StepLR": StepLR, "CosineLR": CosineLR}


class Optimizer:
    """Base class. ``params`` is a list of Parameters or a Layer (its parameters)."""

    #: names of per-parameter state arrays, saved in checkpoints
    slots: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float | Schedule):
        if isinstance(params, Layer):
            params = params.parameters()
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if not callable(lr):
            lr = _args.real(lr, "lr", type(self).__name__, low=0.0, low_open=True)
        self.lr = lr
        self.steps = 0
        # state[slot][i] is the slot's array for params[i] (None until first step)
        self.state: dict[str, list[Any]] = {s: [None] * len(self.params) for s in self.slots}

    def current_lr(self) -> float:
        """The learning rate the next ``step()`` uses."""
        return float(self.lr(self.steps)) if callable(self.lr) else float(self.lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        lr = self.current_lr()
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, lr)

    def _update(self, i: int, p: Parameter, lr: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _update")

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr!r}, {self.get_config()})"


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent: ``W -= lr * dC/dW``.

    With ``momentum`` m: ``v = m v + g`` and ``W -= lr v`` (PyTorch's form; the first
    step sets ``v = g``); ``nesterov`` uses ``g + m v`` instead of ``v``.
    ``weight_decay`` adds ``wd * W`` to the gradient (L2 regularisation).
    """

    slots = ("momentum",)

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float | Schedule = 0.01, *,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        momentum = _args.real(momentum, "momentum", "SGD", low=0.0, high=1.0, high_open=True)
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.weight_decay = _args.real(weight_decay, "weight_decay", "SGD", low=0.0)

    def _update(self, i: int, p: Parameter, lr: float) -> None:
        xp = namespace(p.value)
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.value
        if self.momentum:
            buf = self.state["momentum"][i]
            if buf is None:
                buf = xp.asarray(g, copy=True)
            else:
                buf = ops(xp).scale_add_(xp, buf, self.momentum, g)
            self.state["momentum"][i] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        p.value = ops(xp).sub_scaled_(xp, p.value, lr, g)

    def get_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba), with PyTorch's bias correction and epsilon placement.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``W -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.
    ``weight_decay`` adds ``wd * W`` to the gradient (L2, as ``torch.optim.Adam``).
    """

    slots = ("m", "v")
    decoupled = False

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float | Schedule = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        who = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_args.real(b, f"betas[{i}]", who, low=0.0, high=1.0, high_open=True)
                           for i, b in enumerate(betas))
        self.eps = _args.real(eps, "eps", who, low=0.0, low_open=True)
        self.weight_decay = _args.real(weight_decay, "weight_decay", who, low=0.0)

    def _update(self, i: int, p: Parameter, lr: float) -> None:
        xp = namespace(p.value)
        b1, b2 = self.betas
        g = p.grad
        if self.weight_decay and self.decoupled:
            p.value = ops(xp).sub_scaled_(xp, p.value, lr * self.weight_decay, p.value)
        elif self.weight_decay:
            g = g + self.weight_decay * p.value
        m, v = self.state["m"][i], self.state["v"][i]
        if m is None:
            m, v = (1 - b1) * g, (1 - b2) * (g * g)
        else:
            m = ops(xp).scale_add_(xp, m, b1, g, 1 - b1)
            v = ops(xp).scale_add_(xp, v, b2, g * g, 1 - b2)
        self.state["m"][i], self.state["v"][i] = m, v
        t = self.steps
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        denom = xp.sqrt(v) * (1.0 / math.sqrt(bc2)) + self.eps
        p.value = ops(xp).sub_scaled_(xp, p.value, lr / bc1, m / denom)

    def get_config(self) -> dict[str, Any]:
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``W -= lr * wd * W`` before the Adam step."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float | Schedule = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
