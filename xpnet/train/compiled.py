"""Compiled training steps: ``step = xn.compile_step(model, loss, optimizer, ...)``.

``step(x, y)`` runs the one step body (:class:`xpnet.train.step.Step`: zero the
gradients, forward, loss, backward, the gradient transforms, the update, the metric
sums) as one compiled call, and returns the batch's mean loss, a 0-d device array, unread.
What the compiler sees is the layers' own eager code, through the library's
:class:`~xpnet.backends.base.Compiler`:

- traced (``jax.jit`` on JAX, ``torch.compile`` on PyTorch): a pure function of every
  array the step changes (:meth:`Step.arrays`: parameters, running statistics, optimizer
  slots, the transforms' state, the metric sums), the step's coefficients, the random
  stream's key and position, and the batch. The arrays are donated and come back. It is
  traced once per input shape (the last, smaller batch of an epoch traces once more) and
  again only when a setting the trace bakes in changes (the optimizer's
  hyperparameters). Dropout draws new masks every step, the very masks the eager step
  draws: the stream's position is an argument, not a constant.
- captured (CUDA graphs on CuPy): after one eager warm-up per input shape, the body is
  captured once and replayed: the batch, the coefficients and the stream's position are
  copied into the graph's own arrays, and every state array the body rebinds is copied
  back into the array the graph reads, so each replay continues from the last. Work the
  library refuses to capture (CuPy 14 refuses cuBLAS, so every matmul, on a capturing
  stream) ends the capture with the step's state put back; that step and every later one
  run eagerly (``kind`` becomes ``"eager"``, ``refused`` says why, a note says it once).
- NumPy and array-api-strict have no compiler: the step runs eagerly (said once).

The per-step scalars (the rate of a schedule, Adam's bias corrections) are computed on
the host by ``optimizer.coefficients`` and passed in, so a schedule never retraces. A
step that fails or is interrupted (an error while tracing, Ctrl-C) leaves the model, the
optimizer and the sums as they were before it.
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import random
from .._compat import device, namespace
from ..backends import adapter_of
from ..backends.base import CapturingCompiler, Compiler
from ..layers.base import Layer
from ..losses import Loss
from ..optim import Optimizer
from .metrics import MetricSet, resolve
from .precision import MixedPrecision
from .precision import resolve as resolve_precision
from .step import Step, StepContext

_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def compile_step(model: Layer, loss: Loss, optimizer: Optimizer, *,
                 clip_grad_norm: float | None = None, clip_grad_value: float | None = None,
                 precision: str | int | MixedPrecision = "32",
                 accumulate_grad_batches: int = 1, metrics: Any = None) -> TrainStep:
    """One whole training step of ``model``, compiled where its library can.

    Parameters
    ----------
    model, loss, optimizer
        The optimizer's parameters must be the model's (``model.parameters()``).
    clip_grad_norm, clip_grad_value : float, optional
        Clip the gradients before the update (as ``xn.clip_grad_norm``/``_value``).
    precision : "32", "bf16-mixed", "fp16-mixed" or MixedPrecision
        As ``fit``'s (:mod:`xpnet.train.precision`).
    accumulate_grad_batches : int
        Sum the gradients of this many calls into one update (the update a batch this
        many times larger takes).
    metrics : names or Metric objects, optional
        Summed on the device by every call, as ``fit`` does: ``step.metrics.results()``
        reads them (the loss is always summed).

    Returns
    -------
    TrainStep
        ``step(x, y)`` trains on one batch (``x`` ``(n, ...)`` on the model's device,
        ``y`` labels or targets as the loss takes them) and returns the mean loss, a 0-d
        device array. ``step.kind`` says how it runs: ``"jit"``, ``"graph"`` or
        ``"eager"``.
    """
    mixed = resolve_precision(precision)
    if mixed is not None:
        mixed.check(model, "compile_step")
    chosen = resolve(metrics, loss, 0, "compile_step")
    step = Step(model, loss, optimizer, clip_grad_norm=clip_grad_norm,
                clip_grad_value=clip_grad_value, precision=mixed,
                accumulate=accumulate_grad_batches, metrics=MetricSet(chosen))
    return TrainStep(step)


class TrainStep:
    """A :class:`Step` run by its library's compiler; see :func:`compile_step`.

    ``compiler`` replaces the library's (tests pass a fake CUDA-graph object); ``False``
    runs eagerly. A gradient transform the compiler cannot run (the MPI all-reduce inside
    ``jax.jit``) is refused here, naming it and why.
    """

    def __init__(self, step: Step, compiler: Compiler | bool | None = None):
        self.step = step
        self.model, self.loss, self.optimizer = step.model, step.loss, step.optimizer
        state = step.state
        self.placement = _placement(state)
        library = adapter_of(state[0].value) if state else None
        self._library, self._device = library, device(state[0].value) if state else None
        if compiler is None and library is not None:
            compiler = library.compiler()
        self.compiler: Compiler | None = compiler or None
        if self.compiler is None:
            self.kind = "eager"
            if compiler is None:
                name = library.name if library is not None else "this model"
                _say_once(name, f"compile_step: {name} has no compiler; the step runs "
                          f"eagerly")
        else:
            self.kind = self.compiler.kind
            for t in step.transforms:
                if not self.compiler.accepts(t):
                    raise ValueError(f"{t!r} cannot run inside {self.compiler.name}: "
                                     f"{t.reason}; train without compiling")
        self._compiled: dict[tuple, Any] = {}   # static settings -> compiled function
        self._draws: dict[tuple, int] = {}      # input signature -> random draws per call
        self._traced: set[tuple] = set()        # captured: signatures warmed up already
        self._graphs: dict[tuple, _Captured] = {}
        self.refused: str | None = None  # why the library refused to capture the step
        self._key: tuple[Any, Any] = (None, None)  # (stream key, the compiler's key)
        self._bound: Any = None  # the model's first array as a step left it
        # the random stream layers draw from inside a compiled call: made once, set as
        # the current stream around the call (torch.compile cannot trace setting it)
        self._stream = _TracedDraws(self.compiler) if self.compiler is not None else None

    @property
    def metrics(self) -> MetricSet:
        return self.step.metrics

    def __call__(self, x: Any, y: Any) -> Any:
        return self.run(x, y)

    def run(self, x: Any, y: Any, examples: int | None = None, final: bool | None = None
            ) -> Any:
        """One step on ``(x, y)``; the batch's mean loss on the device. ``examples``: the
        global batch's size (a data-parallel share); ``final``: end an accumulation
        group here."""
        return self.run_many([(x, y, examples, final)])[0]

    def run_many(self, batches: list[tuple[Any, Any, int | None, bool | None]]) -> list[Any]:
        """One step per ``(x, y, examples, final)`` in order, their losses. With
        ``jax.jit`` batches of one shape run as one compiled call (Keras's
        ``steps_per_execution``): the Python between steps is paid once. They are the
        steps :meth:`run` takes one by one, each with its own coefficients and draws.
        They run with the model's device current (CuPy makes arrays and runs kernels
        on the current device)."""
        undo = self._library.activate(self._device) if self._library is not None else None
        try:
            return self._run_many(batches)
        finally:
            if undo is not None:
                undo()

    def _run_many(self, batches: list[tuple[Any, Any, int | None, bool | None]]) -> list[Any]:
        self._check_placement()
        plans = [self.step.plan(int(y.shape[0]) if n is None else n, final)
                 for x, y, n, final in batches]
        items = [(x, y, ctx, c) for (x, y, _, _), (ctx, c) in zip(batches, plans)]
        if self.kind == "jit":
            return self._run_traced(items)
        if self.kind == "graph":
            return [self._run_captured(*item) for item in items]
        return [self._run_eager(*item) for item in items]

    def _check_placement(self) -> None:
        state = self.step.state
        if self.kind == "eager" or not state or state[0].value is self._bound:
            return  # eager steps run wherever the model is; the arrays are the step's
        if _placement(state) == self.placement:
            self._bound = state[0].value
            return
        raise RuntimeError(f"compile_step: the model moved (to another backend, device "
                           f"or dtype) since this step was compiled for it; compile a "
                           f"new step for {type(self.model).__name__} where it is now")

    # -- eager ---------------------------------------------------------------------------------
    def _run_eager(self, x: Any, y: Any, ctx: StepContext, coefficients: tuple) -> Any:
        saved = self.step.arrays()
        try:
            return self.step.body(x, y, ctx, coefficients)
        except BaseException:
            self.step.bind(saved)  # the step did not happen
            raise
        finally:
            for p in self.step.params:
                p.grad = None

    # -- traced: jax.jit, torch.compile -----------------------------------------------------
    def _run_traced(self, items: list[tuple]) -> list[Any]:
        x0, y0 = items[0][0], items[0][1]
        if len(items) > 1 and any(_signature(x, y) != _signature(x0, y0) for x, y, *_ in items):
            out = []  # one call per run of batches of one shape
            for item in items:
                out += self._run_traced([item])
            return out
        step, compiler = self.step, self.compiler
        statics = (tuple(ctx.static() for _, _, ctx, _ in items), step.signature())
        fn = self._compiled.get(statics)
        if fn is None:
            fn = self._compiled[statics] = self._compile(statics[0])
            step.start(x0, y0)
        elif not step.metrics.started:  # a new epoch's sums
            step.start(x0, y0)
        like = step.state[0].value
        stream = random.current()
        if self._key[0] is not stream.key:
            self._key = (stream.key, compiler.key(stream.key, like))
        offset = compiler.position(stream.position, like)
        coefficients = tuple(compiler.scalars(c, like) for _, _, _, c in items)
        sig = (statics, _signature(x0, y0), len(items))
        draws = self._draws.get(sig)  # None: this call traces (the draws are counted)
        saved = step.arrays()
        caches = _caches(self.model, self.loss) if draws is None else None
        before = random.swap_compiled(self._stream)
        try:
            arrays, costs = fn(saved, coefficients, self._key[1], offset,
                               [x for x, *_ in items], [y for _, y, *_ in items])
        except BaseException:
            step.bind(saved)  # nothing happened: no traced value is left anywhere
            raise
        finally:
            random.swap_compiled(before)
            for p in step.params:
                p.grad = None
            if caches is not None:
                _restore_caches(caches)  # no tracer outlives its trace in a layer's cache
        if draws is None:
            draws = self._draws[sig] = self._stream.count
        step.bind(arrays)
        self._bound = arrays[0] if arrays else None
        stream.position += draws
        return list(costs)

    def _compile(self, contexts: tuple) -> Any:
        compiler = self.compiler
        step = self.step

        draws = self._stream

        def pure(arrays: list[Any], coefficients: tuple, key: Any, offset: Any,
                 xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
            step.bind(arrays)
            draws.traced_key, draws.offset, draws.count = key, offset, 0
            costs = []
            for x, y, (update, total), c in zip(xs, ys, contexts, coefficients):
                costs.append(step.body(x, y, StepContext(update=update, total=total), c))
            return step.arrays(), costs

        fn = compiler.compile(pure, donate_argnums=(0,))
        # XLA may keep a donated buffer it cannot reuse (a shape no output has)
        warnings.filterwarnings("ignore", "Some donated buffers were not usable")
        return fn

    # -- captured: CUDA graphs ------------------------------------------------------------
    def _run_captured(self, x: Any, y: Any, ctx: StepContext, coefficients: tuple) -> Any:
        step = self.step
        sig = (ctx.static(), step.signature(), _signature(x, y))
        captured = self._graphs.get(sig)
        if captured is None:
            step.start(x, y)
            if sig not in self._traced:  # one eager step per shape, in the graph's pool
                self._traced.add(sig)
                assert isinstance(self.compiler, CapturingCompiler)
                return self.compiler.eager(lambda: self._run_eager(x, y, ctx, coefficients))
            try:
                captured = self._capture(x, y, ctx, coefficients)
            except Exception as error:
                why = self.compiler.refusal(error)
                if why is None:
                    raise
                self._refused(why)
                return self._run_eager(x, y, ctx, coefficients)
            self._graphs[sig] = captured
        xp = namespace(x)
        captured.x[...] = x
        captured.y[...] = y
        for buffer, c in zip(captured.coefficients, coefficients, strict=True):
            buffer[...] = c
        stream = random.current()
        if self._key[0] is not stream.key:
            self._key = (stream.key, self.compiler.key(stream.key, captured.key))
        captured.key[...] = self._key[1]
        captured.offset[...] = stream.position
        self.compiler.launch(captured.graph)
        stream.position += captured.draws
        # a copy: the next replay overwrites the graph's own output array
        return None if captured.cost is None else xp.asarray(captured.cost, copy=True)

    def _refused(self, why: str) -> None:
        """The library cannot capture this step (CuPy refuses cuBLAS, so every matmul,
        while a stream captures): it runs eagerly from now on, and says so once."""
        compiler = self.compiler
        self.kind, self.refused = "eager", why
        note = f" ({compiler.eager_note})" if compiler.eager_note else ""
        _say_once(f"refused: {compiler.name}: {why}",
                  f"compile_step: {compiler.name} cannot capture this step: {why}; it runs "
                  f"eagerly from now on{note}")

    def _capture(self, x: Any, y: Any, ctx: StepContext, coefficients: tuple) -> _Captured:
        step, compiler = self.step, self.compiler
        xp = namespace(x)
        like = step.state[0].value
        captured = _Captured(
            x=xp.asarray(x, copy=True), y=xp.asarray(y, copy=True),
            coefficients=tuple(xp.asarray(c, copy=True)
                               for c in compiler.scalars(coefficients, like)),
            key=compiler.key((0,), like), offset=compiler.position(0, like))
        arrays = [namespace(a).asarray(a) for a in step.arrays()]  # NumPy: no scalars
        step.bind(arrays)

        def body() -> None:
            for p in step.params:
                p.grad = None
            draws = _TracedDraws(compiler, captured.key, captured.offset)
            with draws.active():  # a capture runs the Python once: set it here
                captured.cost = step.body(captured.x, captured.y,
                                          StepContext(ctx.update, ctx.total),
                                          captured.coefficients)
            captured.draws = draws.count
            # an array the body rebinds (running statistics, slots, sums) is a new one:
            # copy it back, so the next replay reads what this one wrote
            now = step.arrays()
            for a, b in zip(arrays, now, strict=True):
                if b is not a:
                    a[...] = b
            step.bind(arrays)
            for p in step.params:
                p.grad = None

        try:
            captured.graph = compiler.capture(body)
        except BaseException:
            # nothing ran (a capture records): the step's arrays are as they were
            step.bind(arrays)
            for p in step.params:
                p.grad = None
            raise
        return captured


class _Captured:
    """A captured step's graph and the arrays it reads and writes."""

    def __init__(self, x: Any, y: Any, coefficients: tuple[Any, ...], key: Any, offset: Any):
        self.x, self.y, self.coefficients = x, y, coefficients
        self.key, self.offset = key, offset
        self.graph: Any = None
        self.cost: Any = None
        self.draws = 0


class _TracedDraws(random.RandomStream):
    """The random stream inside a compiled step: draw ``i`` of the step is the stream's
    position ``offset + i`` under its key, ``offset`` an argument of the call."""

    def __init__(self, compiler: Compiler, key: Any = None, offset: Any = None):
        self.compiler, self.traced_key, self.offset, self.count = compiler, key, offset, 0

    def uniform(self, like: Any, shape: tuple[int, ...]) -> Any:
        position = self.offset + self.count
        self.count += 1
        return self.compiler.uniform(like, shape, self.traced_key, position)

    def reserve(self, count: int) -> Any:
        key, base = self.traced_key, self.offset + self.count
        self.count += count
        compiler = self.compiler

        def draw(like: Any, shape: tuple[int, ...], i: int) -> Any:
            return compiler.uniform(like, shape, key, base + i)

        return draw

    def __repr__(self) -> str:
        return f"_TracedDraws(count={self.count})"


def _caches(model: Layer, loss: Loss) -> list[tuple[Any, dict[str, Any]]]:
    """Every layer's and the loss's attributes (the caches forward keeps for backward)."""
    return [(obj, dict(vars(obj))) for obj in [*model.layers(), loss]]


def _restore_caches(saved: list[tuple[Any, dict[str, Any]]]) -> None:
    for obj, attributes in saved:
        vars(obj).clear()
        vars(obj).update(attributes)


def _placement(state: list[Any]) -> tuple:
    """Where the model is, as its first array says (``model.to`` and ``astype`` move
    them all): library, dtype and device."""
    if not state:
        return ()
    v = state[0].value
    return type(v), v.dtype, device(v)


def _signature(x: Any, y: Any) -> tuple:
    """The shapes and dtypes of one step's inputs: what a compiled step is traced for
    (called every step, so the common single input has a short path)."""
    if not isinstance(x, (list, tuple)):
        return (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
    return tuple((tuple(a.shape), a.dtype) for a in [*x, y])
