"""Mixed-precision training: ``fit(..., precision="bf16-mixed" | "fp16-mixed")``.

The names are Lightning's: ``"32"`` (also ``"32-true"`` and ``32``) trains in the
parameters' own dtype, as without the argument; ``"bf16-mixed"`` runs the forward and
backward passes in bfloat16; ``"fp16-mixed"`` (also ``"16-mixed"`` and ``16``) in
float16, with dynamic loss scaling.

How one step runs (a cast policy inside the one step body, :mod:`xpnet.train.step`;
own loops call :meth:`MixedPrecision.forward_backward`, then :meth:`MixedPrecision.step`)
---------------------------------------------------------------------------------------
The parameters stay float32 *masters*: the optimizer only ever sees float32 values and
gradients, so its state (momentum, Adam's moments) is float32 too.

1. bind: each trainable Parameter's ``value`` is rebound to a low-precision copy of its
   master (``astype``), and floating inputs are cast the same way. The layers run
   unchanged: they see a model whose parameters happen to be bfloat16 or float16.
   Running statistics (BatchNorm's, not trainable) are not cast; the norm layers compute
   their statistics in float32 for low-precision input and update them in float32.
2. forward in low precision; the logits are upcast to the masters' dtype before the
   loss, so softmax, the loss and its gradient are float32.
3. backward in low precision, from ``dC/dlogits * scale`` cast down (``scale`` is 1 for
   bf16, which has float32's range and needs none).
4. restore: every Parameter gets its master back, and its gradient cast up to float32.
   This happens in a ``finally``: a failing forward never leaves a low-precision model.
5. unscale (fp16, the :class:`LossScale` gradient transform): once the gradients are
   summed (over accumulated batches and data-parallel ranks), they are divided by the
   scale and ``finite``, a 0-d bool on the device, says whether every one is finite.
   This comes before clipping, so ``clip_grad_value`` cannot turn an overflow into a
   step. The optimizer then steps as usual, on copies of the values and slots it
   updates, and each value and slot is ``where(finite, updated, old)``: a step with an
   inf or NaN gradient changes nothing. The scale follows ``torch.amp.GradScaler``:
   halved (``backoff_factor``) after such a step, doubled (``growth_factor``) after
   ``growth_interval`` finite steps in a row. It is saved with the optimizer's state in
   checkpoints, so a resumed run goes on with it.

Nothing here reads a device value on the host: the scale, the growth count and the
finite flag stay 0-d device arrays, and skipping is a ``where``, not a Python ``if``.
The price is one copy of the parameters and optimizer slots per fp16 step, and that a
skipped step still counts in ``optimizer.steps`` (a schedule and Adam's bias correction
move on by one, where GradScaler, which reads the flag on the host, would not).

Evaluation (``evaluate``, ``predict``, validation in ``fit``) runs on the float32
masters. The low-precision dtypes come from the backend adapters
(``Adapter.low_precision_dtype``): torch and JAX have both; CuPy and NumPy float16
only (NumPy's bfloat16 from ``ml_dtypes`` is refused by NumPy's array API namespace);
array-api-strict neither. An unsupported pair is a TypeError before training starts.
"""

from __future__ import annotations

from typing import Any

from .. import _args
from .._compat import namespace
from ..backend import Backend, backend_of, to_numpy
from ..backends import adapter_of
from ..layers.base import Layer
from ..losses import Loss
from .transforms import GradientTransform

#: precision argument -> the dtype the passes run in (None: the parameters' own)
PRECISIONS: dict[str, str | None] = {
    "32": None, "32-true": None,
    "bf16-mixed": "bfloat16",
    "fp16-mixed": "float16", "16-mixed": "float16",
}


def resolve(precision: Any) -> MixedPrecision | None:
    """The :class:`MixedPrecision` a ``precision`` argument asks for; None for full
    precision. Accepts a name of :data:`PRECISIONS`, the ints 32 and 16, or a
    MixedPrecision (returned as it is, keeping its loss scale)."""
    if isinstance(precision, MixedPrecision):
        return precision
    if isinstance(precision, int) and not isinstance(precision, bool) and precision in (16, 32):
        precision = f"{precision}-mixed" if precision == 16 else "32"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"fit: precision must be one of {', '.join(map(repr, PRECISIONS))} "
                         f"(or 32, 16, or an xn.MixedPrecision), got {precision!r}")
    return MixedPrecision(precision) if PRECISIONS[precision] else None


class MixedPrecision:
    """Forward and backward in bfloat16 or float16 on float32 master parameters.

    Give it to ``fit(..., precision=MixedPrecision(...))`` to set the loss scaling, or to
    keep the scale from one ``fit`` to the next; ``precision="fp16-mixed"`` makes a
    fresh one with the defaults (``torch.amp.GradScaler``'s). Own training loops call
    :meth:`forward_backward` and then :meth:`step` in place of forward, loss, backward
    and ``optimizer.step()``.

    Parameters
    ----------
    precision : str
        ``"bf16-mixed"`` or ``"fp16-mixed"`` (``"16-mixed"``).
    init_scale : float
        The first loss scale (fp16 only), > 0.
    growth_factor : float
        What the scale is multiplied by after ``growth_interval`` finite steps, > 1.
    backoff_factor : float
        What it is multiplied by after a step with an inf or NaN gradient, in (0, 1).
    growth_interval : int
        Finite steps in a row before the scale grows, >= 1.

    Attributes
    ----------
    dtype_name : str
        ``"bfloat16"`` or ``"float16"``.
    scale : 0-d float32 array or None
        The current loss scale on the parameters' device (None before the first fp16
        step; bf16 keeps none).
    finite : 0-d bool array or None
        Whether the last fp16 step's gradients were all finite (False: it was skipped).
    """

    def __init__(self, precision: str = "bf16-mixed", *, init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        who = "MixedPrecision"
        if PRECISIONS.get(precision) is None:
            mixed = [k for k, v in PRECISIONS.items() if v]
            raise ValueError(f"{who}: precision must be one of {', '.join(map(repr, mixed))}, "
                             f"got {precision!r}")
        self.precision = precision
        self.dtype_name: str = PRECISIONS[precision]
        self.scaling = self.dtype_name == "float16"
        self.init_scale = _args.real(init_scale, "init_scale", who, low=0.0, low_open=True)
        self.growth_factor = _args.real(growth_factor, "growth_factor", who, low=1.0,
                                        low_open=True)
        self.backoff_factor = _args.real(backoff_factor, "backoff_factor", who, low=0.0,
                                         high=1.0, low_open=True, high_open=True)
        self.growth_interval = _args.integer(growth_interval, "growth_interval", who,
                                             minimum=1)
        self.scaler = (LossScale(self.init_scale, self.growth_factor, self.backoff_factor,
                                 self.growth_interval) if self.scaling else None)
        self._low: tuple[Backend, Any] | None = None  # (backend, its low dtype)

    # -- set-up ------------------------------------------------------------------------
    def low_dtype(self, be: Backend) -> Any:
        """``be``'s bfloat16 or float16; TypeError where its library has none."""
        if self._low is None or self._low[0] != be:
            self._low = (be, be.adapter.low_precision_dtype(be.xp, self.dtype_name))
        return self._low[1]

    def check(self, model: Layer, who: str = "fit") -> None:
        """Raise before any step if ``model`` cannot train this way: its backend has no
        such dtype, or its parameters are not float32/float64 masters."""
        params = model.parameters()
        if not params:
            return
        be = backend_of(params[0].value)
        try:
            self.low_dtype(be)
        except TypeError as e:
            raise TypeError(f"{who} (precision={self.precision!r}): {e}") from None
        xp = be.xp
        for name, p in model.named_parameters():
            if p.value.dtype != xp.float32 and p.value.dtype != xp.float64:
                raise TypeError(f"{who} (precision={self.precision!r}): parameter {name!r} "
                                f"of {model.label} is {p.value.dtype}; mixed precision keeps "
                                f"float32 (or float64) masters: convert with astype('float32')")
        if self.scaler is not None:
            self.scaler.place(be)

    # -- the step ------------------------------------------------------------------------
    def passes(self, model: Layer, loss: Loss, x: Any, y: Any, weight: float = 1.0
               ) -> tuple[Any, Any]:
        """Forward, loss and backward of one batch in low precision (steps 1-4 of the
        module docstring, without the unscaling): ``(logits in the masters' dtype, mean
        loss)``. Backward starts from ``dC/dlogits * weight * scale``; afterwards every
        Parameter holds its master again and ``grad`` ADDS the batch's gradient, cast up
        to the master's dtype and still multiplied by ``scale`` (fp16)."""
        # the weights, frozen ones too (the layers compute in one dtype): the step drops
        # a frozen weight's gradient
        params = [p for _, p in model.named_state() if not p.statistic]
        if not params:
            raise ValueError(f"MixedPrecision: {model.label} has no parameters to train")
        be = backend_of(params[0].value)
        low = self.low_dtype(be)
        xp = be.xp
        if self.scaler is not None and self.scaler.scale is None:
            self.scaler.place(be)
        masters = [p.value for p in params]
        earlier = [p.grad for p in params]  # gradients already summed (accumulation)
        try:
            with be.adapter.quiet_float_errors():  # fp16 overflow: expected, then skipped
                for p in params:
                    p.value, p.grad = xp.astype(p.value, low), None
                pred = model.forward(_cast_inputs(x, low), train=True)
                pred = xp.astype(pred, masters[0].dtype)  # softmax and the loss in float32
                cost = loss.forward(pred, y)
                dpred = loss.backward()
                factor = weight * self.scaler.scale if self.scaler is not None else weight
                if self.scaler is not None or weight != 1:
                    dpred = dpred * factor
                model.backward_params(xp.astype(dpred, low))
            grads = [p.grad for p in params]
        finally:
            for p, master, before in zip(params, masters, earlier):
                p.value, p.grad = master, before
        for p, g in zip(params, grads):
            if g is not None:
                p.accumulate(xp.astype(g, p.value.dtype))
        return pred, cost

    def forward_backward(self, model: Layer, loss: Loss, x: Any, y: Any) -> tuple[Any, Any]:
        """Forward, loss and backward of one batch in low precision for your own loop
        (then :meth:`step`): ``(logits in the masters' dtype, mean loss)``, 0-d on the
        device. Afterwards every Parameter holds its master again and ``grad`` ADDS the
        batch's unscaled gradient in the master's dtype, as ``backward`` would."""
        params = model.parameters()
        if self.scaler is not None and params:
            self.scaler.place(backend_of(params[0].value))
        earlier = [p.grad for p in params]
        for p in params:
            p.grad = None
        pred, cost = self.passes(model, loss, x, y)
        if self.scaler is not None:
            self.scaler.unscale(params)
        for p, before in zip(params, earlier):
            if before is not None:
                p.grad = before if p.grad is None else before + p.grad
        return pred, cost

    def step(self, optimizer: Any) -> None:
        """``optimizer.step()``; with fp16, a step that changes nothing when a gradient
        is inf or NaN, and the scale's update (step 5 of the module docstring)."""
        if self.scaler is None:
            optimizer.step()
            return
        live = [p for p in optimizer.params if p.grad is not None]
        if not live:
            optimizer.step()
            return
        # (a rank whose share of the batch was empty ran no forward_backward, but steps,
        # and skips, as the others do: its gradients are the summed ones)
        self.scaler.place(backend_of(live[0].value))
        finite = all_finite(live)
        guarded_apply(optimizer, optimizer.next_coefficients(), finite)
        self.scaler.grow_or_back_off(finite)

    @property
    def scale(self) -> Any:
        """The current loss scale, a 0-d float32 device array (fp16; None before the
        first step, and for bf16)."""
        return self.scaler.scale if self.scaler is not None else None

    @property
    def finite(self) -> Any:
        """Whether the last fp16 step's gradients were all finite (False: it was skipped)."""
        return self.scaler.finite if self.scaler is not None else None

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The settings and the scaling state as host numbers (reads the device: for
        checkpoints)."""
        out: dict[str, Any] = {"precision": self.precision, "init_scale": self.init_scale,
                               "growth_factor": self.growth_factor,
                               "backoff_factor": self.backoff_factor,
                               "growth_interval": self.growth_interval}
        if self.scaler is not None:
            out.update(self.scaler.state_dict())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the loss scale and growth count of :meth:`state_dict` (a resumed run goes
        on with the scale the interrupted one had)."""
        if self.scaler is not None:
            self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        extra = (f", init_scale={self.init_scale:g}, growth_interval={self.growth_interval}"
                 if self.scaling else "")
        return f"MixedPrecision({self.precision!r}{extra})"


class LossScale(GradientTransform):
    """fp16's dynamic loss scale as a gradient transform (``torch.amp.GradScaler``'s
    rule): the body's backward starts from the loss times ``scale``; this transform
    divides the gradients by it and records whether they are all finite; after the
    update the scale is halved (``backoff_factor``) when they were not, or doubled
    (``growth_factor``) after ``growth_interval`` finite steps in a row. The scale and
    the count are 0-d device arrays: no host read."""

    def __init__(self, init_scale: float, growth_factor: float, backoff_factor: float,
                 growth_interval: int):
        self.init_scale, self.growth_factor = init_scale, growth_factor
        self.backoff_factor, self.growth_interval = backoff_factor, growth_interval
        self.scale: Any = None
        self.tracker: Any = None  # finite steps since the scale last changed
        self.finite: Any = None
        self._restored: tuple[float, int] | None = None  # from a checkpoint, until placed

    def place(self, be: Backend) -> None:
        """The scale and count as 0-d arrays on ``be`` (made once; moved, through the
        host, only if the model moved since)."""
        if self.scale is not None and backend_of(self.scale) == be:
            return
        if self.scale is not None:
            scale, tracker = float(to_numpy(self.scale)), int(to_numpy(self.tracker))
        else:
            scale, tracker = self._restored or (self.init_scale, 0)
        self.scale = be.asarray(scale, dtype="float32")
        self.tracker = be.asarray(tracker, dtype="int32")

    def start(self, params: list[Any]) -> None:
        self.place(backend_of(params[0].value))

    def arrays(self) -> list[Any]:
        return [self.scale, self.tracker]

    def bind(self, arrays: list[Any]) -> None:
        self.scale, self.tracker = arrays

    def unscale(self, params: list[Any]) -> Any:
        """Divide every gradient by the scale; whether all are finite (0-d device bool)."""
        live = [p for p in params if p.grad is not None]
        if not live:
            return None
        inv = 1.0 / self.scale
        for p in live:
            p.grad = p.grad * inv
        return all_finite(live)

    def __call__(self, params: list[Any], ctx: Any) -> None:
        if self.scale is None:
            self.start(params)
        ctx.finite = self.unscale(params)

    def after_update(self, ctx: Any) -> None:
        if ctx.finite is not None:
            self.grow_or_back_off(ctx.finite)

    def grow_or_back_off(self, finite: Any) -> None:
        xp = namespace(self.scale)
        count = self.tracker + 1
        grow = finite & (count >= self.growth_interval)
        grown = self.scale * self.growth_factor
        grown = xp.where(xp.isfinite(grown), grown, self.scale)
        self.scale = xp.where(finite, xp.where(grow, grown, self.scale),
                              self.scale * self.backoff_factor)
        self.tracker = xp.where(finite & ~grow, count, xp.zeros_like(count))
        self.finite = finite

    def take(self, other: Any) -> None:
        """Go on from ``other``'s scale: another LossScale (its device arrays, no host
        read) or the numbers of :meth:`state_dict`; None changes nothing."""
        if isinstance(other, LossScale) and other is not self and other.scale is not None:
            self.scale, self.tracker = other.scale, other.tracker
        elif isinstance(other, dict):
            self.load_state_dict(other)

    def state_dict(self) -> dict[str, Any]:
        if self.scale is None:
            return dict(zip(("scale", "growth_tracker"), self._restored or ()))
        return {"scale": float(to_numpy(self.scale)),
                "growth_tracker": int(to_numpy(self.tracker))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scale" not in state:
            return
        restored = (float(state["scale"]), int(state.get("growth_tracker", 0)))
        if self.scale is not None:
            be = backend_of(self.scale)
            self.scale = be.asarray(restored[0], dtype="float32")
            self.tracker = be.asarray(restored[1], dtype="int32")
        else:
            self._restored = restored

    def __repr__(self) -> str:
        return f"LossScale(growth_interval={self.growth_interval})"


def all_finite(params: list[Any]) -> Any:
    """Whether every gradient of ``params`` is finite: a 0-d device bool."""
    xp = namespace(params[0].grad)
    finite = None
    for p in params:
        ok = xp.all(xp.isfinite(p.grad))
        finite = ok if finite is None else finite & ok
    return finite


def guarded_apply(optimizer: Any, coefficients: tuple[Any, ...], finite: Any) -> None:
    """``optimizer.apply(coefficients)`` where ``finite`` (a 0-d device bool) holds; a
    step that changes nothing where it does not: the optimizer updates copies of the
    values and slots (in place where it can) and each is then ``where(finite, new, old)``.
    No host read."""
    live = [(i, p) for i, p in enumerate(optimizer.params)
            if p.grad is not None and p.trainable]
    if not live:
        return
    xp = namespace(live[0][1].value)
    old = {}
    for _, p in live:
        old[id(p)] = p.value
        p.value = xp.asarray(p.value, copy=True)
    state = optimizer.state
    old_slots = {slot: {i: arrays[i] for i, _ in live} for slot, arrays in state.items()}
    for arrays in state.values():
        for i, _ in live:
            if arrays[i] is not None:
                arrays[i] = xp.asarray(arrays[i], copy=True)
    with adapter_of(live[0][1].value).quiet_float_errors():  # inf - inf in a skipped step
        optimizer.apply(coefficients)
    for _, p in live:
        p.value = xp.where(finite, p.value, old[id(p)])
    for slot, arrays in state.items():
        for i, _ in live:
            new, before = arrays[i], old_slots[slot][i]
            if new is not None:  # an empty slot filled by this step: zeros mean empty
                arrays[i] = xp.where(finite, new,
                                     before if before is not None else xp.zeros_like(new))


def _cast_inputs(x: Any, low: Any) -> Any:
    """Floating inputs (one array or a Graph's list) cast to ``low``; integer ids stay."""
    if isinstance(x, (list, tuple)):
        return [_cast_inputs(a, low) for a in x]
    xp = namespace(x)
    return xp.astype(x, low) if xp.isdtype(x.dtype, "real floating") else x


__all__ = ["PRECISIONS", "LossScale", "MixedPrecision", "resolve"]
