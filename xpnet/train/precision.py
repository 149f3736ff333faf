"""Mixed-precision training: ``fit(..., precision="bf16-mixed" | "fp16-mixed")``.

The names are Lightning's: ``"32"`` (also ``"32-true"`` and ``32``) trains in the
parameters' own dtype, as without the argument; ``"bf16-mixed"`` runs the forward and
backward passes in bfloat16; ``"fp16-mixed"`` (also ``"16-mixed"`` and ``16``) in
float16, with dynamic loss scaling.

How one step runs (:meth:`MixedPrecision.forward_backward`, then :meth:`MixedPrecision.step`)
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
4. restore: every Parameter gets its master back, and its gradient cast up to float32
   and multiplied by ``1 / scale``, so what the optimizer reads is the true gradient.
   This happens in a ``finally``: a failing forward never leaves a low-precision model.
5. step (fp16 only does more than ``optimizer.step()``): ``finite``, a 0-d bool on the
   device, says whether every gradient is finite. The optimizer steps as usual, on
   copies of the values and slots it updates, and each value and slot is then
   ``where(finite, updated, old)``: a step with an inf or NaN gradient changes nothing.
   The scale follows ``torch.amp.GradScaler``: halved (``backoff_factor``) after such a
   step, doubled (``growth_factor``) after ``growth_interval`` finite steps in a row.

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
        self.scale: Any = None
        self.finite: Any = None
        self._growth_tracker: Any = None  # finite steps since the scale last changed
        self._low: tuple[Backend, Any] | None = None  # (backend, its low dtype)

    # -- set-up ------------------------------------------------------------------------
    def low_dtype(self, be: Backend) -> Any:
        """``be``'s bfloat16 or float16; TypeError where its library has none."""
        if self._low is None or self._low[0] != be:
            self._low = (be, be.adapter.low_precision_dtype(be.xp, self.dtype_name))
        return self._low[1]

    def check(self, model: Layer) -> None:
        """Raise before any step if ``model`` cannot train this way: its backend has no
        such dtype, or its parameters are not float32/float64 masters."""
        params = model.parameters()
        if not params:
            return
        be = backend_of(params[0].value)
        try:
            self.low_dtype(be)
        except TypeError as e:
            raise TypeError(f"fit (precision={self.precision!r}): {e}") from None
        xp = be.xp
        for name, p in model.named_parameters():
            if p.value.dtype != xp.float32 and p.value.dtype != xp.float64:
                raise TypeError(f"fit (precision={self.precision!r}): parameter {name!r} of "
                                f"{model.label} is {p.value.dtype}; mixed precision keeps "
                                f"float32 (or float64) masters: convert with astype('float32')")
        if self.scaling:
            self._scale_state_on(be)

    def _scale_state_on(self, be: Backend) -> None:
        """The scale and growth count as 0-d arrays on ``be`` (made once; moved, through
        the host, only if the model moved since)."""
        if self.scale is not None and backend_of(self.scale) == be:
            return
        if self.scale is None:
            scale, tracker = self.init_scale, 0
        else:
            scale, tracker = float(to_numpy(self.scale)), int(to_numpy(self._growth_tracker))
        self.scale = be.asarray(scale, dtype="float32")
        self._growth_tracker = be.asarray(tracker, dtype="int32")

    # -- the step ------------------------------------------------------------------------
    def forward_backward(self, model: Layer, loss: Loss, x: Any, y: Any) -> tuple[Any, Any]:
        """Forward, loss and backward of one batch in low precision (steps 1-4 of the
        module docstring); ``(logits in the masters' dtype, mean loss)``, 0-d on the
        device. Afterwards every Parameter holds its master again and ``grad`` ADDS the
        batch's unscaled gradient in the master's dtype, as ``backward`` would."""
        params = model.parameters()
        if not params:
            raise ValueError(f"MixedPrecision: {model.label} has no parameters to train")
        be = backend_of(params[0].value)
        low = self.low_dtype(be)
        xp = be.xp
        if self.scaling:
            self._scale_state_on(be)
        masters = [p.value for p in params]
        earlier = [p.grad for p in params]  # gradients already summed (accumulation)
        out_dtype = masters[0].dtype
        try:
            with be.adapter.quiet_float_errors():  # fp16 overflow: expected, then skipped
                pred, cost = self._passes(model, loss, params, x, y, low, out_dtype)
            grads = [p.grad for p in params]
        finally:
            for p, master, before in zip(params, masters, earlier):
                p.value, p.grad = master, before
        inv = 1.0 / self.scale if self.scaling else None
        for p, g in zip(params, grads):
            if g is None:
                continue
            g = xp.astype(g, p.value.dtype)
            if inv is not None:
                g = g * inv
            p.accumulate(g)
        return pred, cost

    def _passes(self, model: Layer, loss: Loss, params: list[Any], x: Any, y: Any, low: Any,
                out_dtype: Any) -> tuple[Any, Any]:
        """Steps 1-3: bind low-precision copies, forward, the loss in float32, backward."""
        xp = namespace(params[0].value)
        for p in params:
            p.value, p.grad = xp.astype(p.value, low), None
        pred = model.forward(_cast_inputs(x, low), train=True)
        pred = xp.astype(pred, out_dtype)  # softmax and the loss in float32
        cost = loss.forward(pred, y)
        dpred = loss.backward()
        if self.scaling:
            dpred = dpred * self.scale
        model.backward_params(xp.astype(dpred, low))
        return pred, cost

    def step(self, optimizer: Any) -> None:
        """``optimizer.step()``; with fp16, a step that changes nothing when a gradient
        is inf or NaN, and the scale's update (step 5 of the module docstring)."""
        if not self.scaling:
            optimizer.step()
            return
        live = [(i, p) for i, p in enumerate(optimizer.params) if p.grad is not None]
        if not live:
            optimizer.step()
            return
        # (a rank whose share of the batch was empty ran no forward_backward, but steps,
        # and skips, as the others do: its gradients are the summed ones)
        self._scale_state_on(backend_of(live[0][1].value))
        xp = namespace(live[0][1].value)
        finite = None
        for _, p in live:
            ok = xp.all(xp.isfinite(p.grad))
            finite = ok if finite is None else finite & ok
        # the optimizer updates copies (in place where it can); the originals are kept
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
            optimizer.step()
        for _, p in live:
            p.value = xp.where(finite, p.value, old[id(p)])
        for slot, arrays in state.items():
            for i, _ in live:
                new, before = arrays[i], old_slots[slot][i]
                if new is not None:  # an empty slot filled by this step: zeros mean empty
                    arrays[i] = xp.where(finite, new,
                                         before if before is not None else xp.zeros_like(new))
        self.finite = finite
        self._update_scale(xp, finite)

    def _update_scale(self, xp: Any, finite: Any) -> None:
        """GradScaler's rule: back off on a skipped step and restart the count; grow
        after ``growth_interval`` finite steps (if the grown scale is finite)."""
        count = self._growth_tracker + 1
        grow = finite & (count >= self.growth_interval)
        grown = self.scale * self.growth_factor
        grown = xp.where(xp.isfinite(grown), grown, self.scale)
        self.scale = xp.where(finite, xp.where(grow, grown, self.scale),
                              self.scale * self.backoff_factor)
        self._growth_tracker = xp.where(finite & ~grow, count, xp.zeros_like(count))

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The scaling state as host numbers (reads the device: for checkpoints)."""
        out: dict[str, Any] = {"precision": self.precision, "init_scale": self.init_scale,
                               "growth_factor": self.growth_factor,
                               "backoff_factor": self.backoff_factor,
                               "growth_interval": self.growth_interval}
        if self.scale is not None:
            out["scale"] = float(to_numpy(self.scale))
            out["growth_tracker"] = int(to_numpy(self._growth_tracker))
        return out

    def __repr__(self) -> str:
        extra = (f", init_scale={self.init_scale:g}, growth_interval={self.growth_interval}"
                 if self.scaling else "")
        return f"MixedPrecision({self.precision!r}{extra})"


def _cast_inputs(x: Any, low: Any) -> Any:
    """Floating inputs (one array or a Graph's list) cast to ``low``; integer ids stay."""
    if isinstance(x, (list, tuple)):
        return [_cast_inputs(a, low) for a in x]
    xp = namespace(x)
    return xp.astype(x, low) if xp.isdtype(x.dtype, "real floating") else x


__all__ = ["PRECISIONS", "MixedPrecision", "resolve"]
