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
# Optimizers call ``lr(optimizer.steps)`` before each update: every schedule here is
# stepped per batch. Any callable of the step works as ``lr``; the classes here (and any
# class registered in SCHEDULES with ``get_config()``) are also saved in checkpoints.
class _Schedule:
    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _warmup_steps(value: Any, who: str) -> int:
    return _args.integer(value, "warmup_steps", who, minimum=0)


class StepLR(_Schedule):
    """``lr * gamma ** (step // step_size)``, after an optional linear warmup.

    Stepped per batch: ``step`` is the optimizer's step count (0-based), so
    ``step_size`` counts batches (``steps_per_epoch * epochs_per_decay`` for PyTorch's
    per-epoch ``StepLR``). With ``warmup_steps = w > 0`` the rate first rises linearly,
    ``lr * step / w`` for ``step < w`` (0 at the first step, as Hugging Face's and
    Keras's warmups), then decays as ``lr * gamma ** ((step - w) // step_size)``.
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1, *,
                 warmup_steps: int = 0):
        self.lr = _args.real(lr, "lr", "StepLR", low=0.0, low_open=True)
        self.step_size = _args.integer(step_size, "step_size", "StepLR", minimum=1)
        self.gamma = _args.real(gamma, "gamma", "StepLR", low=0.0, low_open=True)
        self.warmup_steps = _warmup_steps(warmup_steps, "StepLR")

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.lr * step / w
        return self.lr * self.gamma ** ((step - w) // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma,
                "warmup_steps": self.warmup_steps}


class CosineLR(_Schedule):
    """Cosine decay from ``lr`` to ``min_lr``, after an optional linear warmup; then
    ``min_lr``.

    Stepped per batch: ``step`` is the optimizer's step count (0-based) and
    ``total_steps`` counts batches (``epochs * steps_per_epoch`` to end with training).
    With ``warmup_steps = w`` (default 0) the rate is ``lr * step / w`` for ``step < w``
    (0 at the first step), then ``min_lr + (lr - min_lr) (1 + cos(pi t)) / 2`` with
    ``t = min(1, (step - w) / (total_steps - w))``: Hugging Face's
    ``get_cosine_schedule_with_warmup`` (with ``min_lr = 0``) and, without warmup,
    PyTorch's ``CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)`` over one half
    period. ``total_steps`` includes the warmup.
    """

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0, *,
                 warmup_steps: int = 0):
        who = type(self).__name__
        self.lr = _args.real(lr, "lr", who, low=0.0, low_open=True)
        self.total_steps = _args.integer(total_steps, "total_steps", who, minimum=1)
        self.min_lr = _args.real(min_lr, "min_lr", who, low=0.0, high=self.lr)
        self.warmup_steps = _warmup_steps(warmup_steps, who)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"{who}: warmup_steps ({self.warmup_steps}) must be less than "
                             f"total_steps ({self.total_steps}), which include the warmup")

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.lr * step / w
        t = min(step - w, self.total_steps - w) / (self.total_steps - w)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps}


class WarmupCosineLR(CosineLR):
    """Linear warmup over ``warmup_steps`` batches into cosine decay to ``min_lr`` at
    ``total_steps`` (warmup included): ``CosineLR(lr, total_steps, min_lr,
    warmup_steps=warmup_steps)``, under the name and argument order of Hugging Face's
    ``get_cosine_schedule_with_warmup``. Stepped per batch (the optimizer's step count).
    """

    def __init__(self, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        super().__init__(lr, total_steps, min_lr, warmup_steps=warmup_steps)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr": self.min_lr}


SCHEDULES: dict[str, type] = {"StepLR": StepLR, "CosineLR": CosineLR,
                              "WarmupCosineLR": WarmupCosineLR}


def schedule_config(lr: Any) -> dict[str, Any]:
    """``{"schedule": name, "config": constructor arguments}`` for a schedule that
    checkpoints can rebuild (a class in :data:`SCHEDULES`); TypeError for any other
    callable, naming the way out."""
    name = type(lr).__name__
    if SCHEDULES.get(name) is not type(lr) or not callable(getattr(lr, "get_config", None)):
        raise TypeError(f"the learning-rate schedule {lr!r} cannot be saved: checkpoints "
                        f"rebuild only the classes in xpnet.optim.SCHEDULES "
                        f"({', '.join(SCHEDULES)}); register your class there (with "
                        f"get_config() returning its constructor arguments), or save "
                        f"without the optimizer")
    return {"schedule": name, "config": lr.get_config()}


class Optimizer:
    """Base class. ``params`` is a list of Parameters or a Layer (its parameters)."""

    #: names of per-parameter state arrays, saved in checkpoints
    slots: tuple[str, ...] = ()
    #: fp16's loss scale of the steps that update with this optimizer (a
    #: ``train.precision.LossScale``; a dict of its numbers after loading a checkpoint,
    #: until a step takes them up): saved with the optimizer, so a resumed run and the
    #: next ``fit`` go on with the scale the last one reached.
    loss_scale: Any = None

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
        """The learning rate the next ``step()`` uses; ValueError when a schedule gives
        one that is negative or not finite (it would train uphill, or not at all)."""
        if not callable(self.lr):
            return float(self.lr)
        rate = float(self.lr(self.steps))
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"{type(self).__name__}: the learning rate {self.lr!r} gave "
                             f"{rate} at step {self.steps}; a schedule must give finite "
                             f"rates >= 0")
        return rate

    def loss_scale_state(self) -> dict[str, Any]:
        """The numbers of :attr:`loss_scale` (reads the device: for checkpoints)."""
        if isinstance(self.loss_scale, dict):
            return dict(self.loss_scale)
        return self.loss_scale.state_dict() if self.loss_scale is not None else {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        lr = self.current_lr()
        self.steps += 1
        self.apply(self.coefficients(lr, self.steps))

    def coefficients(self, lr: float, t: int) -> tuple[float, ...]:
        """The scalars step ``t`` (1-based) multiplies by, computed on the host from the
        rate and the step count (bias corrections): ``apply`` takes them as they are or
        as 0-d device arrays, so a compiled step is traced once for every step."""
        return (lr,)

    def apply(self, coefficients: tuple[Any, ...]) -> None:
        """Update every parameter that has a gradient with ``coefficients`` (floats, or
        0-d arrays of the parameters' library and dtype)."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, coefficients)

    @property
    def active_slots(self) -> tuple[str, ...]:
        """The slots this optimizer's settings use (SGD without momentum: none)."""
        return self.slots

    def arrays(self) -> list[Any]:
        """The active slots' arrays, slot by slot, in parameter order (None for a slot not
        filled yet: :meth:`init_state` fills them)."""
        return [a for s in self.active_slots for a in self.state[s]]

    def bind(self, arrays: list[Any]) -> None:
        """Put arrays from :meth:`arrays` (or a compiled step's results) in place."""
        n = len(self.params)
        for k, s in enumerate(self.active_slots):
            self.state[s] = list(arrays[k * n:(k + 1) * n])

    def init_state(self) -> None:
        """Fill every empty slot with zeros, which a first update treats exactly as an
        empty one (so a compiled step's state has one structure from the start)."""
        for slot in self.active_slots:
            arrays = self.state[slot]
            for i, p in enumerate(self.params):
                if arrays[i] is None:
                    arrays[i] = namespace(p.value).zeros_like(p.value)

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _update")

    def get_config(self) -> dict[str, Any]:
        return {}

    #: the attributes ``_update`` reads as constants (not per-step coefficients)
    _constants: tuple[str, ...] = ()

    def hyperparameters(self) -> tuple[Any, ...]:
        """The settings the update bakes in (momentum, betas...): a compiled step is made
        again when they change between steps."""
        return tuple(getattr(self, name) for name in self._constants)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr!r}, {self.get_config()})"


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent: ``W -= lr * dC/dW``.

    With ``momentum`` m: ``v = m v + g`` and ``W -= lr v`` (PyTorch's form; the first
    step sets ``v = g``); ``nesterov`` uses ``g + m v`` instead of ``v``.
    ``weight_decay`` adds ``wd * W`` to the gradient (L2 regularisation).
    """

    slots = ("momentum",)
    _constants = ("momentum", "nesterov", "weight_decay")

    def __init__(self, params: Iterable[Parameter] | Layer, lr: float | Schedule = 0.01, *,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        momentum = _args.real(momentum, "momentum", "SGD", low=0.0, high=1.0, high_open=True)
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.weight_decay = _args.real(weight_decay, "weight_decay", "SGD", low=0.0)

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...]) -> None:
        (lr,) = coefficients
        xp = namespace(p.value)
        p.value, self.state["momentum"][i] = ops(xp).sgd_update_(
            xp, p.value, p.grad, self.state["momentum"][i], lr, momentum=self.momentum,
            nesterov=self.nesterov, weight_decay=self.weight_decay)

    @property
    def active_slots(self) -> tuple[str, ...]:
        return self.slots if self.momentum else ()

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
    _constants = ("betas", "eps", "weight_decay", "decoupled")

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

    def coefficients(self, lr: float, t: int) -> tuple[float, ...]:
        """``(lr * wd, lr / (1 - b1^t), 1 / sqrt(1 - b2^t))``."""
        b1, b2 = self.betas
        return lr * self.weight_decay, lr / (1 - b1**t), 1.0 / math.sqrt(1 - b2**t)

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...]) -> None:
        decay, step, unbias = coefficients
        xp = namespace(p.value)
        state = self.state
        p.value, state["m"][i], state["v"][i] = ops(xp).adam_update_(
            xp, p.value, p.grad, state["m"][i], state["v"][i], decay, step, unbias,
            betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
            decoupled=self.decoupled)

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
