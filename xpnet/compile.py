"""Compiled training steps: ``step = xn.compile_step(model, loss, optimizer)``.

``step(x, y)`` zeroes the gradients, runs forward, the loss and backward, and updates the
parameters; it returns the batch's mean loss as a 0-d array on the device, unread. What
runs is the layers' own eager code, handed once to the library's compiler:

- JAX: ``jax.jit`` of a pure function. Every array of the model (parameters and running
  statistics), the optimizer's slots, the step's coefficients and the random key go in
  and come back; the old parameter and slot buffers are donated. It is traced once per
  input shape (the last, smaller batch of an epoch traces once more). Dropout draws new
  masks every step, the very masks the eager step draws: the stream's positions are
  traced, not baked in.
- PyTorch: ``torch.compile`` of the same pure function (inductor; on the CPU it writes
  C++ and needs a compiler). A step that draws random numbers runs eagerly, since a
  compiled graph would replay one mask.
- CuPy: after one eager warm-up, the step is captured in a CUDA graph and replayed:
  the batch is copied into the graph's own input arrays, the parameters and slots are
  updated in place, and a small net is no longer bound by kernel launches.
- NumPy and array-api-strict have no compiler: the step runs eagerly (said once).

The per-step scalars (the learning rate of a schedule, Adam's bias corrections) are
computed on the host by ``optimizer.coefficients`` and passed in as arguments, so a
compiled step is never retraced or recaptured for them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import random
from ._compat import namespace
from .backends import adapter_of
from .layers.base import Layer, Parameter
from .losses import Loss
from .optim import Optimizer

_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def compile_step(model: Layer, loss: Loss, optimizer: Optimizer, *,
                 clip_grad_norm: float | None = None) -> TrainStep:
    """One whole training step of ``model``, compiled where its library can.

    Parameters
    ----------
    model, loss, optimizer
        The optimizer's parameters must be the model's (``model.parameters()``).
    clip_grad_norm : float, optional
        Scale the gradients to this total 2-norm before the update (as
        ``xn.clip_grad_norm``).

    Returns
    -------
    TrainStep
        ``step(x, y)`` trains on one batch (``x`` ``(n, ...)`` on the model's device,
        ``y`` labels or targets as the loss takes them) and returns the mean loss, a 0-d
        device array. ``step.kind`` says how it runs: ``"jit"``, ``"graph"`` or
        ``"eager"``.
    """
    return TrainStep(model, loss, optimizer, clip_grad_norm=clip_grad_norm)


class TrainStep:
    """A training step of ``model``; see :func:`compile_step`.

    ``compiler`` replaces the library's (tests pass a fake CUDA-graph object; ``False``
    runs eagerly). ``count_hits`` and ``one_hot`` make :meth:`run` also count correct
    predictions, as ``fit`` reports them.
    """

    def __init__(self, model: Layer, loss: Loss, optimizer: Optimizer, *,
                 clip_grad_norm: float | None = None, count_hits: bool = False,
                 one_hot: bool = False, compiler: Any = None):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.clip_grad_norm = clip_grad_norm
        self.count_hits, self.one_hot = count_hits, one_hot
        self.state: list[Parameter] = [p for _, p in model.named_state()]
        ids = {id(p) for p in self.state}
        strangers = [p.name for p in optimizer.params if id(p) not in ids]
        if strangers:
            raise ValueError(f"compile_step: the optimizer updates parameters that are not "
                             f"{type(model).__name__}'s ({', '.join(strangers)}); give it "
                             f"model.parameters()")
        library = adapter_of(self.state[0].value) if self.state else None
        asked_eager = compiler is False
        if compiler is None and library is not None:
            compiler = library.compiler()
        self.compiler = compiler or None
        if self.compiler is None:
            self.kind = "eager"
            if not asked_eager:
                name = library.name if library is not None else "this model"
                _say_once(name, f"compile_step: {name} has no compiler; the step runs "
                          f"eagerly")
        else:
            self.kind = "graph" if hasattr(self.compiler, "capture") else "jit"
        self._fn: Callable[..., Any] | None = None
        self._draws: dict[tuple, int] = {}  # input signature -> random draws per step
        self._warm: set[tuple] = set()      # signatures that ran their eager warm-up
        self._graphs: dict[tuple, _Captured] = {}
        self._key: tuple[Any, Any] = (None, None)  # (stream key, the compiler's key)
        self._fn_many: Callable[..., Any] | None = None  # several steps in one call

    def __call__(self, x: Any, y: Any) -> Any:
        return self.run(x, y)[0]

    def run(self, x: Any, y: Any, totals: tuple[Any, Any] | None = None
            ) -> tuple[Any, Any]:
        """One step on ``(x, y)``: ``(mean loss, correct predictions or None)`` as device
        arrays; with ``totals`` (running sums of ``loss * examples`` and of hits, 0-d
        arrays of the parameters' dtype, see :meth:`zero_totals`) those sums with this
        batch added, inside the compiled call where there is one."""
        opt = self.optimizer
        lr = opt.current_lr()
        opt.steps += 1
        coefficients = opt.coefficients(lr, opt.steps)
        if self.kind == "jit":
            return self._run_jit(x, y, coefficients, totals)
        out = (self._run_graph(x, y, coefficients) if self.kind == "graph"
               else self._body(x, y, coefficients))
        return out if totals is None else self._add(totals, *out, y)

    def run_many(self, xs: list[Any], ys: list[Any], totals: tuple[Any, Any]
                 ) -> tuple[Any, Any]:
        """One step per batch of ``xs, ys`` (batches of one shape), in order, with the
        running sums of :meth:`run` returned after the last.

        With ``jax.jit`` the steps are one compiled call (Keras's
        ``steps_per_execution``): the Python between steps is paid once per call. They
        are the steps :meth:`run` takes one by one: each its own coefficients (a
        schedule's lr) and random draws. Elsewhere this is :meth:`run` per batch."""
        if self.kind != "jit" or not hasattr(self.compiler, "uniform") or len(xs) < 2:
            for x, y in zip(xs, ys, strict=True):
                totals = self.run(x, y, totals)
            return totals
        opt = self.optimizer
        coefficients = []
        for _ in xs:
            lr = opt.current_lr()
            opt.steps += 1
            coefficients.append(opt.coefficients(lr, opt.steps))
        sig = (len(xs), _signature(xs[0], ys[0]))
        if self._fn_many is None:
            opt.init_state()
            self._fn_many = self.compiler.compile(self._pure_many, donate_argnums=(0, 1, 2))
            warnings.filterwarnings("ignore", "Some donated buffers were not usable")
        stream, key = self._stream_key()
        values, slots = self._load_args()
        values, slots, totals = self._fn_many(
            values, slots, totals, tuple(coefficients), key, np.uint32(stream.position),
            tuple(xs), tuple(ys))
        self._store(values, slots)
        stream.position += self._draws[sig]
        return totals

    def zero_totals(self) -> tuple[Any, Any]:
        """Running sums to start an epoch with: two 0-d zeros on the device."""
        v = self.state[0].value
        xp = namespace(v)
        return (xp.zeros((), dtype=v.dtype, device=v.device),
                xp.zeros((), dtype=v.dtype, device=v.device))

    @staticmethod
    def _add(totals: tuple[Any, Any], cost: Any, hits: Any, y: Any) -> tuple[Any, Any]:
        loss_sum, hit_sum = totals
        xp = namespace(loss_sum)
        loss_sum = loss_sum + cost * int(y.shape[0])
        if hits is not None:
            hit_sum = hit_sum + xp.astype(hits, hit_sum.dtype)
        return loss_sum, hit_sum

    # -- the step itself: the same code in every mode ---------------------------------
    def _body(self, x: Any, y: Any, coefficients: tuple[Any, ...]) -> tuple[Any, Any]:
        self.optimizer.zero_grad()
        pred = self.model.forward(x, train=True)
        cost = self.loss.forward(pred, y)
        self.model.backward_params(self.loss.backward())
        if self.clip_grad_norm is not None:
            from .clip import clip_grad_norm

            clip_grad_norm(self.optimizer.params, self.clip_grad_norm)
        self.optimizer.apply(coefficients)
        hits = self.loss.correct(pred, y, one_hot=self.one_hot) if self.count_hits else None
        return cost, hits

    def _warm_up(self, sig: tuple, x: Any, y: Any, coefficients: tuple[Any, ...],
                 around: Callable[[Callable[[], Any]], Any] | None = None) -> tuple[Any, Any]:
        """One eager step for a new input shape. A compiler that cannot trace random
        draws would replay one: a step that draws makes the whole step eager from now."""
        self._warm.add(sig)
        stream = random.current()
        before = (stream.key, stream.position)
        out = (around or (lambda f: f()))(lambda: self._body(x, y, coefficients))
        if (stream.key, stream.position) != before:
            self.kind = "eager"
            name = self.compiler.name
            _say_once(f"{name}-random", f"compile_step: the step draws random numbers "
                      f"(Dropout) and {name} would replay one draw: it runs eagerly")
        return out

    # -- JAX and torch: a pure function of every array ---------------------------------
    def _pure(self, values: list[Any], slots: dict[str, list[Any]], totals: Any,
              coefficients: tuple[Any, ...], key: Any, offset: Any, x: Any, y: Any
              ) -> tuple[list[Any], dict[str, list[Any]], Any, Any]:
        self._store(values, slots)
        draws = _TracedDraws(self.compiler, key, offset) if key is not None else None
        with draws.active() if draws is not None else contextlib.nullcontext():
            cost, hits = self._body(x, y, coefficients)
        self._draws[_signature(x, y)] = draws.count if draws is not None else 0
        if totals is not None:
            cost, hits = self._add(totals, cost, hits, y)
        return (*self._take_out(slots), cost, hits)

    def _pure_many(self, values: list[Any], slots: dict[str, list[Any]], totals: Any,
                   coefficients: tuple[tuple[Any, ...], ...], key: Any, offset: Any,
                   xs: tuple[Any, ...], ys: tuple[Any, ...]
                   ) -> tuple[list[Any], dict[str, list[Any]], Any]:
        """:meth:`_pure` for several batches: the steps unrolled in one trace, their
        draws at consecutive stream positions, as eager steps make them."""
        self._store(values, slots)
        draws = _TracedDraws(self.compiler, key, offset)
        with draws.active():
            for x, y, c in zip(xs, ys, coefficients, strict=True):
                totals = self._add(totals, *self._body(x, y, c), y)
        self._draws[(len(xs), _signature(xs[0], ys[0]))] = draws.count
        return (*self._take_out(slots), totals)

    def _store(self, values: list[Any], slots: dict[str, list[Any]]) -> None:
        """Bind arrays to the parameters and the optimizer's slots (gradients cleared)."""
        for p, v in zip(self.state, values, strict=True):
            p.value, p.grad = v, None
        for s, arrays in slots.items():
            self.optimizer.state[s] = list(arrays)

    def _take_out(self, slots: dict[str, list[Any]]) -> tuple[list[Any], dict[str, list[Any]]]:
        """The parameters' and the slots' arrays after a traced step; no traced value
        outlives the trace in a gradient."""
        out = ([p.value for p in self.state],
               {s: list(self.optimizer.state[s]) for s in slots})
        for p in self.state:
            p.grad = None
        return out

    def _stream_key(self) -> tuple[random.RandomStream, Any]:
        """The current random stream and the compiler's key for it (made once per
        stream key, i.e. once per epoch, not every step)."""
        stream = random.current()
        if self._key[0] is not stream.key:
            self._key = (stream.key, self.compiler.key(stream.key))
        return stream, self._key[1]

    def _load_args(self) -> tuple[list[Any], dict[str, list[Any]]]:
        """The parameters' and active slots' current arrays, to pass to a compiled call."""
        opt = self.optimizer
        return [p.value for p in self.state], {s: list(opt.state[s]) for s in opt.active_slots}

    def _run_jit(self, x: Any, y: Any, coefficients: tuple[Any, ...],
                 totals: tuple[Any, Any] | None) -> tuple[Any, Any]:
        opt = self.optimizer
        traced_draws = hasattr(self.compiler, "uniform")
        sig = _signature(x, y)
        if not traced_draws and sig not in self._warm:
            out = self._warm_up(sig, x, y, coefficients)
            return out if totals is None else self._add(totals, *out, y)
        if self._fn is None:
            opt.init_state()
            self._fn = self.compiler.compile(self._pure, donate_argnums=(0, 1, 2))
            # XLA may keep a donated buffer it cannot reuse (a shape no output has)
            warnings.filterwarnings("ignore", "Some donated buffers were not usable")
        xp = namespace(x)
        if traced_draws:
            stream, key = self._stream_key()
            offset = np.uint32(stream.position)
        else:
            key = offset = None
            dtype = self.state[0].value.dtype
            coefficients = tuple(xp.asarray(c, dtype=dtype, device=x.device)
                                 for c in coefficients)
        values, slots = self._load_args()
        values, slots, cost, hits = self._fn(values, slots, totals, coefficients, key,
                                             offset, x, y)
        self._store(values, slots)
        if traced_draws:
            stream.position += self._draws[sig]
        return cost, hits

    # -- CuPy: capture once, replay ----------------------------------------------------
    def _run_graph(self, x: Any, y: Any, coefficients: tuple[Any, ...]) -> tuple[Any, Any]:
        sig = _signature(x, y)
        captured = self._graphs.get(sig)
        if captured is None:
            if sig not in self._warm:
                return self._warm_up(sig, x, y, coefficients, self.compiler.eager)
            captured = self._graphs[sig] = self._capture(x, y, coefficients)
        captured.x[...] = x
        captured.y[...] = y
        for buffer, c in zip(captured.coefficients, coefficients, strict=True):
            buffer[...] = c
        self.compiler.launch(captured.graph)
        xp = namespace(x)
        cost, hits = captured.out
        # copies: the next replay overwrites the graph's own output arrays
        return xp.asarray(cost, copy=True), (None if hits is None
                                             else xp.asarray(hits, copy=True))

    def _capture(self, x: Any, y: Any, coefficients: tuple[Any, ...]) -> _Captured:
        xp, opt = namespace(x), self.optimizer
        opt.init_state()
        dtype = self.state[0].value.dtype
        captured = _Captured(
            x=xp.asarray(x, copy=True), y=xp.asarray(y, copy=True),
            coefficients=tuple(xp.asarray(c, dtype=dtype, device=x.device)
                               for c in coefficients))
        values = [p.value for p in self.state]
        slots = {s: list(opt.state[s]) for s in opt.active_slots}

        def step() -> None:
            for p in self.state:
                p.grad = None
            captured.out = self._body(captured.x, captured.y, captured.coefficients)
            # a layer that rebinds an array (running statistics) wrote a new one: copy it
            # back, so the next replay reads what this one wrote
            for p, a in zip(self.state, values, strict=True):
                if p.value is not a:
                    a[...] = p.value
                    p.value = a
            for s, arrays in slots.items():
                for i, a in enumerate(arrays):
                    if opt.state[s][i] is not a:
                        a[...] = opt.state[s][i]
                        opt.state[s][i] = a

        captured.graph = self.compiler.capture(step)
        return captured


class _Captured:
    """A captured step's graph and the arrays it reads and writes."""

    def __init__(self, x: Any, y: Any, coefficients: tuple[Any, ...]):
        self.x, self.y, self.coefficients = x, y, coefficients
        self.graph: Any = None
        self.out: tuple[Any, Any] = (None, None)


class _TracedDraws(random.RandomStream):
    """The random stream inside a traced step: draw ``i`` of the step is the stream's
    position ``offset + i`` under its key, ``offset`` a traced argument."""

    def __init__(self, compiler: Any, key: Any, offset: Any):
        self.compiler, self.traced_key, self.offset, self.count = compiler, key, offset, 0

    def uniform(self, like: Any, shape: tuple[int, ...]) -> Any:
        position = self.offset + self.count
        self.count += 1
        return self.compiler.uniform(like, shape, self.traced_key, position)

    def __repr__(self) -> str:
        return f"_TracedDraws(count={self.count})"


def _signature(x: Any, y: Any) -> tuple:
    """The shapes and dtypes of one step's inputs: what a compiled step is traced for
    (called every step, so the common single input has a short path)."""
    if not isinstance(x, (list, tuple)):
        return (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
    return tuple((tuple(a.shape), a.dtype) for a in [*x, y])
