"""Optimizers and learning-rate schedules.

An optimizer holds ``Parameter`` objects in parameter groups (PyTorch's
``param_groups``: each with its own settings) and, on ``step()``, moves each ``value``
against its ``grad``. Updates happen on the parameter's device; where the
library allows (everything but JAX) they are in place, otherwise the value is rebound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from . import _args
from ._compat import namespace
from .backends import ops
from .layers.attention import PositionalEmbedding
from .layers.base import Layer, Parameter
from .layers.embedding import Embedding

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


class _GroupSetting:
    """An optimizer attribute that is a setting of every parameter group (``lr``,
    ``weight_decay``, ``betas``...). Reading it gives the groups' common value (an
    AttributeError naming ``param_groups`` when they differ); setting it sets it in every
    group, checked as the constructor checks it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, opt: Any, owner: type | None = None) -> Any:
        if opt is None:
            return self
        values = [g[self.name] for g in opt.param_groups]
        first = values[0]
        if any(v is not first and v != first for v in values[1:]):
            raise AttributeError(
                f"{type(opt).__name__}: {self.name} differs between the parameter groups "
                f"({', '.join(repr(v) for v in values)}); read or set "
                f"optimizer.param_groups[i][{self.name!r}]")
        return first

    def __set__(self, opt: Any, value: Any) -> None:
        for i, g in enumerate(opt.param_groups):
            g[self.name] = opt._check_setting(self.name, value, opt._who(i))
            opt._check_group(g, opt._who(i))


class Optimizer:
    """Base class: moves each parameter against its gradient, in parameter groups.

    ``params`` is a Layer (its parameters), a list of Parameters, or, as in PyTorch, a
    list of parameter groups: dicts with ``"params"`` (a Layer or Parameters) and any of
    the optimizer's settings (``lr``, ``weight_decay``, ``betas``...), which override
    the constructor's for that group::

        xn.AdamW([{"params": decay, "weight_decay": 0.1},
                  {"params": no_decay, "weight_decay": 0.0}], lr=sched)

    ``param_groups`` is that list of dicts, every setting filled in (a group's ``lr`` is
    a float or a schedule of its own, stepped by the optimizer's step count);
    ``params`` is the flat list of every group's parameters in order, which the step
    body, clipping and checkpoints use. A setting read as an attribute
    (``optimizer.weight_decay``) is the groups' common value; set as one, it is set in
    every group. A parameter may be in one group only.
    """

    #: names of per-parameter state arrays, saved in checkpoints
    slots: tuple[str, ...] = ()
    #: fp16's loss scale of the steps that update with this optimizer (a
    #: ``train.precision.LossScale``; a dict of its numbers after loading a checkpoint,
    #: until a step takes them up): saved with the optimizer, so a resumed run and the
    #: next ``fit`` go on with the scale the last one reached.
    loss_scale: Any = None
    #: the settings each parameter group has (besides ``lr``), which ``_update`` reads
    #: as constants: a compiled step bakes them in (:meth:`hyperparameters`)
    _settings: tuple[str, ...] = ()
    #: how many coefficients :meth:`coefficients` gives per group
    n_coefficients = 1

    lr = _GroupSetting()

    def __init__(self, params: Iterable[Parameter] | Iterable[dict] | Layer,
                 lr: float | Schedule, **settings: Any):
        who = type(self).__name__
        self.defaults = {"lr": self._check_setting("lr", lr, who)}
        for name, value in settings.items():
            self.defaults[name] = self._check_setting(name, value, who)
        self._check_group(self.defaults, who)
        self.param_groups: list[dict[str, Any]] = []
        self.params: list[Parameter] = []
        self._group_of: list[int] = []  # the group of each of params
        self.steps = 0
        # state[slot][i] is the slot's array for params[i] (None until first step)
        self.state: dict[str, list[Any]] = {s: [] for s in self.slots}
        for group in _as_groups(params, who):
            self.add_param_group(group)
        if not self.params:
            raise ValueError(f"{who}: got no parameters to optimise")

    def _who(self, i: int) -> str:
        name = type(self).__name__
        return name if len(self.param_groups) <= 1 else f"{name} param_groups[{i}]"

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own settings (the constructor's for those it
        does not give), as PyTorch's method does."""
        i = len(self.param_groups)
        who = f"{type(self).__name__} param_groups[{i}]"
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{who}: a parameter group is a dict with 'params' and "
                            f"settings, got {group!r}")
        unknown = [k for k in group if k != "params" and k not in self.defaults]
        if unknown:
            raise ValueError(f"{who}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                             f"a group may give {', '.join(self.defaults)}")
        params = group["params"]
        if isinstance(params, Layer):
            params = params.parameters()
        elif isinstance(params, Parameter):
            params = [params]
        params = list(params)
        held = {id(p): j for j, p in enumerate(self.params)}
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{who}: params must be Parameters (model.parameters()), "
                                f"got {type(p).__name__}")
            if id(p) in held:
                raise ValueError(f"{who}: parameter {p.name!r} is already in param_groups"
                                 f"[{self._group_of[held[id(p)]]}]; a parameter belongs to "
                                 f"one group")
            held[id(p)] = -1
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{who}: a parameter is listed twice")
        filled = {"params": params}
        for name, default in self.defaults.items():
            filled[name] = (self._check_setting(name, group[name], who) if name in group
                            else default)
        self._check_group(filled, who)
        self.param_groups.append(filled)
        self.params.extend(params)
        self._group_of.extend([i] * len(params))
        for arrays in self.state.values():
            arrays.extend([None] * len(params))

    def _check_setting(self, name: str, value: Any, who: str) -> Any:
        """``value`` for the setting ``name``, checked (and normalised: floats, tuples)."""
        if name == "lr":
            if callable(value):
                return value
            return _args.real(value, "lr", who, low=0.0, low_open=True)
        return value

    def _check_group(self, group: dict[str, Any], who: str) -> None:
        """Checks between a group's settings (SGD: Nesterov needs momentum)."""

    def group_lr(self, i: int) -> float:
        """The learning rate of group ``i`` for the next step; ValueError when its schedule
        gives one that is negative or not finite (it would train uphill, or not at all)."""
        lr = self.param_groups[i]["lr"]
        if not callable(lr):
            return float(lr)
        rate = float(lr(self.steps))
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"{self._who(i)}: the learning rate {lr!r} gave {rate} at step "
                             f"{self.steps}; a schedule must give finite rates >= 0")
        return rate

    def current_lr(self, group: int = 0) -> float:
        """The learning rate the next ``step()`` uses (for ``group``, default the first):
        see :meth:`group_lr`."""
        return self.group_lr(group)

    def loss_scale_state(self) -> dict[str, Any]:
        """The numbers of :attr:`loss_scale` (reads the device: for checkpoints)."""
        if isinstance(self.loss_scale, dict):
            return dict(self.loss_scale)
        return self.loss_scale.state_dict() if self.loss_scale is not None else {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient and is ``trainable`` (one frozen
        after the optimizer was made is left as it is: no step, no decay, no momentum)."""
        self.apply(self.next_coefficients())

    def next_coefficients(self) -> tuple[float, ...]:
        """The next step's scalars for every group, in group order (``n_coefficients``
        each), computed on the host from each group's rate and the step count, which
        this advances: what :meth:`apply` takes, as floats or as 0-d device arrays, so a
        compiled step is traced once for every step."""
        rates = [self.group_lr(i) for i in range(len(self.param_groups))]
        self.steps += 1
        out: list[float] = []
        for rate, group in zip(rates, self.param_groups):
            out += self.coefficients(rate, self.steps, group)
        return tuple(out)

    def coefficients(self, lr: float, t: int, group: dict[str, Any] | None = None
                     ) -> tuple[float, ...]:
        """The scalars step ``t`` (1-based) multiplies by, for one group (default the
        first), from its rate and the step count (bias corrections)."""
        return (lr,)

    def apply(self, coefficients: tuple[Any, ...]) -> None:
        """Update every parameter that has a gradient with ``coefficients`` (from
        :meth:`next_coefficients`: floats, or 0-d arrays of the parameters' library and
        dtype), each with its group's."""
        k = self.n_coefficients
        if len(coefficients) != k * len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.apply: got {len(coefficients)} "
                             f"coefficients, expected {k} for each of "
                             f"{len(self.param_groups)} parameter group(s)")
        groups = self.param_groups
        for i, p in enumerate(self.params):
            if p.grad is not None and p.trainable:  # frozen after the optimizer was made
                g = self._group_of[i]
                self._update(i, p, tuple(coefficients[g * k:(g + 1) * k]), groups[g])

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

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...],
                group: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _update")

    def get_config(self) -> dict[str, Any]:
        """The constructor's settings (the groups' defaults), less ``lr``."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.defaults.items() if k != "lr"}

    def group_config(self, i: int) -> dict[str, Any]:
        """Group ``i``'s settings, less ``params`` and ``lr``, as :meth:`get_config`."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.param_groups[i].items() if k not in ("params", "lr")}

    #: settings of the class the update reads as constants, besides the groups'
    _constants: tuple[str, ...] = ()

    def hyperparameters(self) -> tuple[Any, ...]:
        """The settings the update bakes in, every group's (momentum, betas...), the
        class's, and which parameters are ``trainable``: a compiled step is made again
        when they change between steps."""
        return (tuple(tuple(g[name] for name in self._settings) for g in self.param_groups),
                tuple(getattr(self, name) for name in self._constants),
                tuple(p.trainable for p in self.params))

    def __repr__(self) -> str:
        if len(self.param_groups) == 1:
            return f"{type(self).__name__}(lr={self.lr!r}, {self.get_config()})"
        groups = ", ".join(f"{{{len(g['params'])} params, lr={g['lr']!r}, "
                           f"{self.group_config(i)}}}" for i, g in enumerate(self.param_groups))
        return f"{type(self).__name__}([{groups}])"


def _as_groups(params: Any, who: str) -> list[dict[str, Any]]:
    """An optimizer's ``params`` as groups: a Layer or Parameters are one group."""
    if isinstance(params, Layer):
        return [{"params": params.parameters()}]
    if isinstance(params, dict):
        return [params]
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"{who}: params must be a Layer, Parameters or parameter groups "
                        f"(dicts), got {type(params).__name__}")
    items = list(params)
    if items and all(isinstance(g, dict) for g in items):
        return items
    if any(isinstance(g, dict) for g in items):
        raise TypeError(f"{who}: params mixes parameter groups (dicts) with Parameters; "
                        f"put every parameter in a group")
    return [{"params": items}]


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent: ``W -= lr * dC/dW``.

    With ``momentum`` m: ``v = m v + g`` and ``W -= lr v`` (PyTorch's form; the first
    step sets ``v = g``); ``nesterov`` uses ``g + m v`` instead of ``v``.
    ``weight_decay`` adds ``wd * W`` to the gradient (L2 regularisation). Each may differ
    between parameter groups (see :class:`Optimizer`).
    """

    slots = ("momentum",)
    _settings = ("momentum", "nesterov", "weight_decay")
    momentum = _GroupSetting()
    nesterov = _GroupSetting()
    weight_decay = _GroupSetting()

    def __init__(self, params: Iterable[Parameter] | Iterable[dict] | Layer,
                 lr: float | Schedule = 0.01, *, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)

    def _check_setting(self, name: str, value: Any, who: str) -> Any:
        if name == "momentum":
            return _args.real(value, "momentum", who, low=0.0, high=1.0, high_open=True)
        if name == "nesterov":
            return bool(value)
        if name == "weight_decay":
            return _args.real(value, "weight_decay", who, low=0.0)
        return super()._check_setting(name, value, who)

    def _check_group(self, group: dict[str, Any], who: str) -> None:
        if group.get("nesterov") and group.get("momentum", 0.0) <= 0:
            raise ValueError(f"{who}: nesterov=True needs momentum > 0")

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...],
                group: dict[str, Any]) -> None:
        (lr,) = coefficients
        xp = namespace(p.value)
        p.value, self.state["momentum"][i] = ops(xp).sgd_update_(
            xp, p.value, p.grad, self.state["momentum"][i], lr, momentum=group["momentum"],
            nesterov=group["nesterov"], weight_decay=group["weight_decay"])

    @property
    def active_slots(self) -> tuple[str, ...]:
        return self.slots if any(g["momentum"] for g in self.param_groups) else ()


class Adam(Optimizer):
    """Adam (Kingma & Ba), with PyTorch's bias correction and epsilon placement.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``W -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.
    ``weight_decay`` adds ``wd * W`` to the gradient (L2, as ``torch.optim.Adam``).
    Each setting may differ between parameter groups (see :class:`Optimizer`).
    """

    slots = ("m", "v")
    decoupled = False
    _settings = ("betas", "eps", "weight_decay")
    _constants = ("decoupled",)
    n_coefficients = 3
    betas = _GroupSetting()
    eps = _GroupSetting()
    weight_decay = _GroupSetting()

    def __init__(self, params: Iterable[Parameter] | Iterable[dict] | Layer,
                 lr: float | Schedule = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check_setting(self, name: str, value: Any, who: str) -> Any:
        if name == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {value!r}")
            return tuple(_args.real(b, f"betas[{i}]", who, low=0.0, high=1.0, high_open=True)
                         for i, b in enumerate(value))
        if name == "eps":
            return _args.real(value, "eps", who, low=0.0, low_open=True)
        if name == "weight_decay":
            return _args.real(value, "weight_decay", who, low=0.0)
        return super()._check_setting(name, value, who)

    def coefficients(self, lr: float, t: int, group: dict[str, Any] | None = None
                     ) -> tuple[float, ...]:
        """``(lr * wd, lr / (1 - b1^t), 1 / sqrt(1 - b2^t))`` with the group's settings."""
        group = self.param_groups[0] if group is None else group
        b1, b2 = group["betas"]
        return lr * group["weight_decay"], lr / (1 - b1**t), 1.0 / math.sqrt(1 - b2**t)

    def _update(self, i: int, p: Parameter, coefficients: tuple[Any, ...],
                group: dict[str, Any]) -> None:
        decay, step, unbias = coefficients
        xp = namespace(p.value)
        state = self.state
        p.value, state["m"][i], state["v"][i] = ops(xp).adam_update_(
            xp, p.value, p.grad, state["m"][i], state["v"][i], decay, step, unbias,
            betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
            decoupled=self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``W -= lr * wd * W`` before the Adam step."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter] | Iterable[dict] | Layer,
                 lr: float | Schedule = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)


def decay_groups(model: Layer, weight_decay: float, *, embeddings: bool = False
                 ) -> list[dict[str, Any]]:
    """``model``'s parameters as two groups for a ``weight_decay`` applied to matrices
    only, as GPT training scripts split them: ``[{"params": decayed, "weight_decay":
    weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]``.

    Decayed: every trainable parameter of two or more dimensions (Linear and
    convolution weights, attention projections). Not decayed: biases, normalisation
    scales and shifts (one dimension), and the tables of ``Embedding`` and
    ``PositionalEmbedding`` layers (minGPT's rule; ``embeddings=True`` decays them too,
    nanoGPT's). A table tied to an output head (``Linear.tied_to``) counts as the
    embedding's. Both groups keep the model's parameter order; either may be empty.
    """
    wd = _args.real(weight_decay, "weight_decay", "decay_groups", low=0.0)
    tables = set()
    if not embeddings:
        for layer in model.layers():
            if isinstance(layer, (Embedding, PositionalEmbedding)):
                tables.update(id(p) for p in layer._params)
    decay, keep = [], []
    for p in model.parameters():
        (decay if len(p.shape) >= 2 and id(p) not in tables else keep).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": keep, "weight_decay": 0.0}]


OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}


#: Optimizers by name, as ``fit(optimizer="adam")`` and the ``xpnet`` command take them:
#: each built on the parameters with its class's defaults (SGD's lr 0.01, Adam's and
#: AdamW's 1e-3; "momentum" is SGD with momentum 0.9).
OPTIMIZER_NAMES: dict[str, Callable[[Any], Optimizer]] = {
    "sgd": SGD,
    "momentum": lambda params: SGD(params, momentum=0.9),
    "adam": Adam,
    "adamw": AdamW,
}


def optimizer_named(optimizer: Any, params: Any, who: str) -> Optimizer:
    """``optimizer`` itself, or for a name in :data:`OPTIMIZER_NAMES` that optimizer over
    ``params`` (a model or its parameters); ValueError naming the choices for another
    name, TypeError for what is neither."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"{who}: unknown optimizer {optimizer!r}; expected one of "
                             f"{', '.join(OPTIMIZER_NAMES)}, or an Optimizer object "
                             f"(xn.Adam(model, lr=1e-3))")
        return OPTIMIZER_NAMES[optimizer](params)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{who}: optimizer must be an Optimizer (xn.Adam(model)) or one of "
                        f"the names {', '.join(OPTIMIZER_NAMES)}, got {type(optimizer).__name__}")
    return optimizer
