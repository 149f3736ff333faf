"""One training step, the body every driver runs: the eager loop, ``compile_step`` and
``fit`` (eager or compiled) all call :meth:`Step.body`.

One call of the body, for one (micro-)batch::

    zero the gradients
    pred = forward(x)                     the precision's cast policy around it (bf16/fp16)
    cost = loss(pred, y)
    backward(dC/dpred * w)                w: the batch's examples when gradients are summed
                                          over batches or processes, else 1 (fp16: * scale)
    metrics += (pred, y, cost)            device sums, no host read
    for each gradient transform, in order:
        Accumulate      keep the sum; on all but the last batch of a group: stop here
        AllReduce       sum over the data-parallel ranks (given by the strategy)
        Normalize       divide by the examples summed (when w is not 1)
        Unscale         fp16: divide by the loss scale; finite = all gradients finite
        ClipByValue     clip_grad_value
        ClipByNorm      clip_grad_norm
    optimizer update                      with fp16, a step that changes nothing unless finite
    after_update of each transform        fp16: the loss scale grows or backs off

Everything that runs on the device reads its numbers from device arrays or from host
numbers fixed before the step (:class:`StepContext`), so the same code traces under
``jax.jit`` and ``torch.compile`` and is captured in a CUDA graph. Whatever changes in a
step (the model's arrays, the optimizer's slots, the transforms' state and the metric
sums) crosses into a compiled call through one seam, :meth:`Step.arrays` and
:meth:`Step.bind`.
"""

from __future__ import annotations

from typing import Any

from .. import _args
from ..layers.base import Layer, Parameter
from ..losses import Loss
from ..optim import Optimizer
from .metrics import MetricSet
from .precision import MixedPrecision, guarded_apply
from .transforms import (
    Accumulate,
    ClipByNorm,
    ClipByValue,
    GradientTransform,
    Normalize,
    StepContext,
)


class Step:
    """One training step of ``model``: see the module docstring.

    Parameters
    ----------
    model, loss, optimizer
        The optimizer's parameters must be the model's (``model.parameters()``).
    clip_grad_norm, clip_grad_value : float, optional
        As :func:`xpnet.clip_grad_norm` / :func:`xpnet.clip_grad_value` (value first).
    precision : MixedPrecision, optional
        bf16/fp16 forward and backward on float32 masters (:mod:`xpnet.train.precision`).
    accumulate : int
        Batches whose gradients are summed into one update (1: every batch updates).
    reduce : GradientTransform, optional
        The data-parallel sum over ranks (the strategy's :class:`AllReduce`).
    metrics : MetricSet, optional
        Sums the body adds each batch's loss and metrics to (default: the loss alone).
    who : str
        How errors name the caller.
    """

    def __init__(self, model: Layer, loss: Loss, optimizer: Optimizer, *,
                 clip_grad_norm: float | None = None, clip_grad_value: float | None = None,
                 precision: MixedPrecision | None = None, accumulate: int = 1,
                 reduce: GradientTransform | None = None, metrics: MetricSet | None = None,
                 who: str = "compile_step"):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.state: list[Parameter] = [p for _, p in model.named_state()]
        ids = {id(p) for p in self.state}
        strangers = [p.name for p in optimizer.params if id(p) not in ids]
        if strangers:
            raise ValueError(f"{who}: the optimizer updates parameters that are not "
                             f"{type(model).__name__}'s ({', '.join(strangers)}); give it "
                             f"model.parameters()")
        self.params = optimizer.params
        self.accumulate = _args.integer(accumulate, "accumulate_grad_batches", who, minimum=1)
        clips: list[GradientTransform] = []  # checked before anything is changed
        if clip_grad_value is not None:
            clips.append(ClipByValue(_args.real(clip_grad_value, "clip_grad_value", who,
                                                low=0.0, low_open=True)))
        if clip_grad_norm is not None:
            clips.append(ClipByNorm(_args.real(clip_grad_norm, "clip_grad_norm", who,
                                               low=0.0)))
        self.precision = precision
        self.weighted = self.accumulate > 1 or reduce is not None
        transforms: list[GradientTransform] = []
        if self.accumulate > 1:
            transforms.append(Accumulate(self.accumulate))
        if reduce is not None:
            transforms.append(reduce)
        if self.weighted:
            transforms.append(Normalize())
        if precision is not None and precision.scaler is not None:
            # the optimizer's scale (an earlier fit's, or a checkpoint's) goes on here
            precision.scaler.take(optimizer.loss_scale)
            optimizer.loss_scale = precision.scaler
            transforms.append(precision.scaler)
        self.transforms = transforms + clips
        self.metrics = metrics if metrics is not None else MetricSet([])
        self._pending, self._examples = 0, 0  # batches and examples of the open group

    # -- the host's part: what the next call of the body is ---------------------------------
    def plan(self, examples: int, final: bool | None = None
             ) -> tuple[StepContext, tuple[Any, ...]]:
        """The context of the next batch of ``examples`` (over every rank) and, when it
        ends a group, the optimizer's coefficients for the update (each parameter
        group's rate and bias corrections, one flat tuple: computed here, on the host).
        ``final=True`` ends the group early (the last batches of an epoch)."""
        self._pending += 1
        self._examples += examples
        update = bool(final) or self._pending >= self.accumulate
        ctx = StepContext(update=update, total=self._examples if self.weighted else None)
        coefficients: tuple[Any, ...] = ()
        if update:
            self._pending = self._examples = 0
            coefficients = self.optimizer.next_coefficients()  # every group's, in turn
        return ctx, coefficients

    def pending(self) -> bool:
        """Whether batches wait in an open group (fit closes it at the epoch's end)."""
        return self._pending > 0

    # -- the body --------------------------------------------------------------------------
    def body(self, x: Any, y: Any, ctx: StepContext, coefficients: tuple[Any, ...]) -> Any:
        """Forward, loss, backward, transforms and update on one batch; its mean loss (a
        0-d device array; None for a rank whose share of the batch is empty)."""
        for p in self.params:
            p.grad = None
        examples = int(y.shape[0])
        cost = None
        if examples:
            cost = self._passes(x, y, examples)
        for p in self.params:  # frozen since the optimizer was made: out of the clip norm
            if not p.trainable:
                p.grad = None
        for t in self.transforms:
            t(self.params, ctx)
            if not ctx.update:  # Accumulate kept this batch's gradients: no update yet
                break
        if ctx.update:
            self._update(coefficients, ctx)
            for t in self.transforms:
                t.after_update(ctx)
        return cost

    def _passes(self, x: Any, y: Any, examples: int) -> Any:
        weight = examples if self.weighted else 1
        mixed = self.precision
        if mixed is None:
            pred = self.model.forward(x, train=True)
            cost = self.loss.forward(pred, y)
            dpred = self.loss.backward()
            self.model.backward_params(dpred if weight == 1 else dpred * weight)
        else:
            pred, cost = mixed.passes(self.model, self.loss, x, y, weight)
        self.metrics.update(pred, y, cost, examples)
        return cost

    def _update(self, coefficients: tuple[Any, ...], ctx: StepContext) -> None:
        if ctx.finite is None:
            self.optimizer.apply(coefficients)
        else:
            guarded_apply(self.optimizer, coefficients, ctx.finite)

    def run(self, x: Any, y: Any, examples: int | None = None, final: bool | None = None
            ) -> Any:
        """One eager step on ``(x, y)`` (``examples``: the global batch's, for a
        data-parallel share); the batch's mean loss on the device."""
        ctx, coefficients = self.plan(int(y.shape[0]) if examples is None else examples,
                                      final)
        try:
            return self.body(x, y, ctx, coefficients)
        finally:
            for p in self.params:  # gradients live inside a step only
                p.grad = None

    __call__ = run

    # -- the state a compiled call carries ---------------------------------------------------
    def start(self, x: Any, y: Any) -> None:
        """Make every piece of state a device array before a compiled step's call: the
        optimizer's slots, the transforms' state, the metric sums (probed with the
        model's output for the first example). Cheap when they already are."""
        self.optimizer.init_state()
        for t in self.transforms:
            if any(a is None for a in t.arrays()) or not t.arrays():
                t.start(self.params)
        if not self.metrics.started:
            first = [a[0:1, ...] for a in x] if isinstance(x, (list, tuple)) else x[0:1, ...]
            pred = self.model.forward(first, train=False)
            self.metrics.start(pred, y[0:1, ...])

    def arrays(self) -> list[Any]:
        """Every array a step changes: the model's (parameters and running statistics),
        the optimizer's slots, the transforms' state and the metric sums, in one order."""
        out = [p.value for p in self.state] + self.optimizer.arrays()
        for t in self.transforms:
            out += t.arrays()
        return out + self.metrics.arrays()

    def bind(self, arrays: list[Any]) -> None:
        """Put arrays (from :meth:`arrays`, or a compiled call's results) in place."""
        arrays = list(arrays)
        n = len(self.state)
        for p, a in zip(self.state, arrays[:n], strict=True):
            p.value = a
        k = len(self.optimizer.arrays())
        self.optimizer.bind(arrays[n:n + k])
        i = n + k
        for t in self.transforms:
            m = len(t.arrays())
            t.bind(arrays[i:i + m])
            i += m
        self.metrics.bind(arrays[i:])

    def signature(self) -> tuple:
        """The settings a compiled step bakes in: made again when they change (the
        optimizer's hyperparameters, the loss's configuration)."""
        return self.optimizer.hyperparameters(), tuple(self.loss.get_config().values())

    def describe(self) -> str:
        parts = [type(self.optimizer).__name__, type(self.loss).__name__]
        parts += [repr(t) for t in self.transforms]
        if self.precision is not None:
            parts.append(self.precision.precision)
        return ", ".join(parts)

