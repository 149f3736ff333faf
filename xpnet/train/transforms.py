"""Gradient transforms: what happens to the gradients between backward and the
optimizer's update, one small object each (see :mod:`xpnet.train.step` for the order).
The data-parallel all-reduce is one too (:class:`xpnet.distributed.AllReduce`), and so
is fp16's unscaling (:class:`xpnet.train.precision.LossScale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._compat import namespace
from ..clip import clip_grad_norm, clip_grad_value
from ..layers.base import Parameter


@dataclass
class StepContext:
    """What one call of the body knows from the host, fixed before it runs.

    ``update``: this batch ends a group (always, without accumulation), so the optimizer
    steps; ``total``: examples (over every rank) summed into the update, when gradients
    are weighted by examples; ``finite``: set by fp16's Unscale, a 0-d device bool.
    """

    update: bool = True
    total: int | None = None
    finite: Any = None

    def static(self) -> tuple[bool, int | None]:
        """What a compiled step is traced or captured for."""
        return self.update, self.total


class GradientTransform:
    """Changes the gradients between backward and the optimizer's update.

    ``traceable``: runs inside ``jax.jit``/``torch.compile``; ``capturable``: inside a
    CUDA-graph capture; ``reason`` says why not. State that changes from step to step
    lives in device arrays (:meth:`arrays`/:meth:`bind`), made by :meth:`start`.
    """

    traceable = True
    capturable = True
    reason = ""

    def start(self, params: list[Parameter]) -> None:
        """Make the state arrays (before a compiled step's first call)."""

    def arrays(self) -> list[Any]:
        return []

    def bind(self, arrays: list[Any]) -> None:
        pass

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        raise NotImplementedError

    def after_update(self, ctx: StepContext) -> None:
        """Called after the optimizer's update."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accumulate(GradientTransform):
    """Sums the gradients of ``k`` batches (``fit(accumulate_grad_batches=k)``): on each
    batch but the group's last it keeps them and the step ends there; on the last the sum
    goes on to the update. With the batches' gradients weighted by their examples and
    :class:`Normalize` after it, the update is the one a ``k`` times larger batch takes."""

    def __init__(self, k: int):
        self.k = k
        self.sums: list[Any] = []

    def start(self, params: list[Parameter]) -> None:
        self.sums = [namespace(p.value).zeros_like(p.value) for p in params]

    def arrays(self) -> list[Any]:
        return list(self.sums)

    def bind(self, arrays: list[Any]) -> None:
        self.sums = list(arrays)

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        if not self.sums:
            self.start(params)
        sums = []
        for p, s in zip(params, self.sums, strict=True):
            g = s if p.grad is None else s + p.grad
            if ctx.update:
                p.grad, g = g, namespace(s).zeros_like(s)
            else:
                p.grad = None
            sums.append(g)
        self.sums = sums

    def __repr__(self) -> str:
        return f"Accumulate({self.k})"


class Normalize(GradientTransform):
    """Divides the summed, example-weighted gradients by the examples they came from."""

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        inv = 1.0 / max(ctx.total or 1, 1)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * inv


class ClipByValue(GradientTransform):
    """Every gradient element into ``[-value, value]`` (:func:`xpnet.clip_grad_value`)."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        clip_grad_value(params, self.value)

    def __repr__(self) -> str:
        return f"ClipByValue({self.value})"


class ClipByNorm(GradientTransform):
    """The gradients' total 2-norm at most ``max_norm`` (:func:`xpnet.clip_grad_norm`)."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        clip_grad_norm(params, self.max_norm)

    def __repr__(self) -> str:
        return f"ClipByNorm({self.max_norm})"


#: DDP's default bucket size: gradients are summed over ranks this many bytes at a time.
BUCKET_BYTES = 25 * 2**20


class AllReduce(GradientTransform):
    """Sums the gradients over the ranks of a data-parallel run (``comm``: a
    :class:`~xpnet.backends.base.Communicator`), in buckets of at most ``bucket_bytes``
    (:data:`BUCKET_BYTES` by default, DDP's 25 MiB; a larger gradient is a bucket of its
    own). Each bucket is
    packed into one flat buffer on the device and reduced with one collective, all
    started before any is waited for (MPI's ``Iallreduce``, NCCL's own stream), last
    layers first, as backward produced them. Each rank's backward was weighted by its
    examples and :class:`Normalize` follows, so the update is the one the global batch
    takes. A rank whose share of the batch is empty sends zeros. ``bytes``: what the last
    step reduced."""

    traceable = capturable = False
    reason = ("the data-parallel gradient sum is a call into MPI between backward and the "
              "update, which a compiled step cannot make")

    def __init__(self, comm: Any, bucket_bytes: int | None = None):
        self.comm = comm
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.bytes = 0
        self._plan: tuple[tuple, list[list[int]]] = ((), [])

    def buckets(self, grads: list[Any]) -> list[list[int]]:
        """Indices of ``grads`` per bucket: in reverse order, one dtype a bucket, each at
        most ``bucket_bytes`` (made once per set of shapes)."""
        key = tuple((tuple(g.shape), g.dtype) for g in grads)
        if self._plan[0] != key:
            out: list[list[int]] = []
            size = 0
            for i in reversed(range(len(grads))):
                g = grads[i]
                nbytes = math.prod(g.shape) * _itemsize(g)
                if (not out or size + nbytes > self.bucket_bytes
                        or grads[out[-1][0]].dtype != g.dtype):
                    out.append([])
                    size = 0
                out[-1].append(i)
                size += nbytes
            self._plan = (key, out)
        return self._plan[1]

    def __call__(self, params: list[Parameter], ctx: StepContext) -> None:
        grads = [namespace(p.value).zeros_like(p.value) if p.grad is None else p.grad
                 for p in params]
        started = []
        self.bytes = 0
        for bucket in self.buckets(grads):
            xp = namespace(grads[bucket[0]])
            flat = xp.concat([xp.reshape(grads[i], (-1,)) for i in bucket]) \
                if len(bucket) > 1 else xp.reshape(grads[bucket[0]], (-1,))
            self.bytes += math.prod(flat.shape) * _itemsize(flat)
            started.append((bucket, self.comm.start_allreduce(flat)))
        for bucket, pending in started:
            summed = pending.wait()
            xp = namespace(summed)
            at = 0
            for i in bucket:
                n = math.prod(grads[i].shape)
                params[i].grad = xp.reshape(summed[at:at + n], tuple(grads[i].shape))
                at += n

    def __repr__(self) -> str:
        return f"AllReduce({self.comm.name}, size={self.comm.size})"


def _itemsize(a: Any) -> int:
    """Bytes per element of ``a`` (the standard's finfo/iinfo: every library has them)."""
    xp = namespace(a)
    info = xp.finfo(a.dtype) if xp.isdtype(a.dtype, "real floating") else xp.iinfo(a.dtype)
    return info.bits // 8
