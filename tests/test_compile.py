"""compile_step and fit(compile=True): the compiled step takes the eager step's steps.

On every backend case: 20 Adam steps of a compiled step from the same seed end within
float32 rounding of the eager ones, for an MLP (with Dropout), a CNN (with BatchNorm),
a GRU and a transformer block. JAX runs ``jax.jit``; torch runs ``torch.compile`` with the
``aot_eager`` backend here (the same Dynamo trace and functionalisation inductor compiles;
inductor itself takes ~15 s per model on this machine and runs in one test); NumPy and
array-api-strict run eagerly. The CUDA-graph logic (warm-up, capture, replay, static
inputs, arrays a layer rebinds) runs on NumPy arrays through a fake graph object whose
replay re-runs the captured code on the captured arrays.

Every training option combines with every other: a table of combinations (compile,
precision, clipping, steps_per_execution, gradient accumulation, per-batch callbacks,
Dropout and BatchNorm) is walked on every backend case, compiled against eager.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FakeGraphs

import xpnet as xn
from xpnet.train import MetricSet, Step, TrainStep
from xpnet.train import compiled as compiled_mod
from xpnet.train import loop as loop_mod

STEPS = 20


def _mlp(dropout=0.25):
    return xn.Sequential(xn.Linear(6, 8), xn.ReLU(), xn.Dropout(dropout), xn.Linear(8, 3))


def _cnn():
    # BatchNorm after the ReLU: right after the conv it would leave the conv's bias a
    # gradient of rounding noise, which Adam turns into unit steps of random sign
    return xn.Sequential(xn.Reshape((1, 8)), xn.Conv1D(1, 4, 3, padding=1), xn.ReLU(),
                         xn.BatchNorm1D(4), xn.MaxPool1D(2), xn.Flatten(), xn.Linear(16, 3))


def _gru():
    return xn.Sequential(xn.Reshape((4, 2)), xn.GRU(2, 3, return_sequences=False), xn.Linear(3, 3))


def _transformer():
    return xn.Sequential(xn.Reshape((2, 4)), xn.TransformerBlock(4, 2, 8), xn.Flatten(),
                         xn.Linear(8, 3))


MODELS = {"mlp": (_mlp, 6), "cnn": (_cnn, 8), "gru": (_gru, 8), "transformer": (_transformer, 8)}


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend: the trace without inductor's code
    generation (minutes on 2 cores for four models)."""
    try:
        from xpnet.backends.torch import TorchCompiler
    except ImportError:  # pragma: no cover - torch adapter module always imports
        return
    monkeypatch.setattr(TorchCompiler, "backend", "aot_eager")


def _train(be, build, width, compiled, schedule=False, sizes=(5, 5, 5, 3), compiler=None):
    """Parameters after ``STEPS`` Adam steps of the eager or compiled step."""
    rng = np.random.default_rng(3)
    x = be.asarray(rng.standard_normal((sum(sizes), width)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, sum(sizes)))
    xn.seed(11)
    model = build()
    lr = xn.CosineLR(0.02, STEPS) if schedule else 0.02
    opt = xn.Adam(model.parameters(), lr=lr)
    step = TrainStep(Step(model, xn.SoftmaxCrossEntropy(), opt),
                     compiler=compiler if compiled else False)
    stream = xn.RandomStream(7).restart(7, 0)
    costs = []
    bounds = np.cumsum((0,) + tuple(sizes))
    with stream.active():
        for i in range(STEPS):
            s, e = bounds[i % len(sizes)], bounds[i % len(sizes) + 1]
            costs.append(step(x[s:e, ...], y[s:e]))
    step.stream_position = stream.position
    state = {n: np.asarray(xn.to_numpy(p.value)) for n, p in model.named_state()}
    return state, [float(xn.to_numpy(c)) for c in costs], step


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_step_takes_the_eager_steps(be, name, aot_eager, recwarn):
    build, width = MODELS[name]
    sizes = (5, 5, 5, 5)  # one shape: one trace (shape changes: the fit test below)
    eager, eager_costs, _ = _train(be, build, width, compiled=False, sizes=sizes)
    compiled, costs, step = _train(be, build, width, compiled=True, sizes=sizes)
    # Dropout too: the stream's position is an argument of the compiled call
    # CuPy: a CUDA graph, unless CuPy refused to capture (its cuBLAS: every matmul)
    assert step.kind == {"jax": "jit", "torch": "jit", "cupy": "graph"}.get(
        be.name, "eager") or (be.name == "cupy" and "cuBLAS" in step.refused)
    assert eager.keys() == compiled.keys()
    for key in eager:
        a, b = compiled[key], eager[key]
        if key.endswith("in_proj_bias"):
            # the key bias adds one constant to each query's scores, which softmax ignores:
            # its gradient is rounding noise, which Adam turns into steps of random sign
            a, b = np.delete(a, np.s_[4:8]), np.delete(b, np.s_[4:8])
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{name} {key}")
    np.testing.assert_allclose(costs, eager_costs, rtol=2e-4, atol=1e-5)
    # the parameters moved: the comparison is not between two untouched models
    xn.seed(11)
    start = {n: np.asarray(xn.to_numpy(p.value)) for n, p in build().named_state()}
    assert max(np.abs(eager[k] - start[k]).max() for k in start) > 1e-3


def test_jax_traces_once_per_shape_and_schedule_does_not_retrace(rng):
    pytest.importorskip("jax")
    be = xn.use("jax")
    _, _, step = _train(be, _mlp, 6, compiled=True, schedule=True)
    assert step.kind == "jit"
    # two input shapes (batches of 5 and the last of 3): two traces, whatever the lr
    (fn,) = step._compiled.values()
    assert fn._cache_size() == 2
    assert set(step._draws.values()) == {1}  # one Dropout mask per step, traced


def test_jax_dropout_draws_a_new_mask_every_step():
    """The compiled step's masks are the stream's positions 0, 1, 2, ...: the same as
    the eager ones (test above) and different in each step (another seed changes
    the result, and the stream moved by one draw per step)."""
    pytest.importorskip("jax")
    be = xn.use("jax")
    _, costs, step = _train(be, _mlp, 6, compiled=True)
    assert step.stream_position == STEPS
    _, costs_p0, _ = _train(be, lambda: _mlp(0.0), 6, compiled=True)
    assert not np.allclose(costs, costs_p0)


def test_fit_compile_equals_fit(be, aot_eager, recwarn):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 6)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    runs = []
    for compile in (False, True):
        xn.seed(5)
        model = xn.Sequential(xn.Linear(6, 8), xn.Tanh(), xn.Linear(8, 3))
        opt = xn.Adam(model.parameters(), lr=0.01)
        hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
                      batch_size=8, seed=3, progress=False, compile=compile)
        runs.append((hist, [np.asarray(xn.to_numpy(p.value)) for p in model.parameters()]))
    (h0, p0), (h1, p1) = runs
    for a, b in zip(p0, p1, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(h1.history[key], h0.history[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # ~20 s; the README and CI run -m "slow or not slow"
def test_inductor_mlp_matches_eager():
    """The real torch.compile (inductor, C++ on the CPU) on one model."""
    pytest.importorskip("torch")
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile's inductor needs a C++ compiler on the CPU; none found")
    be = xn.use("torch")
    eager, _, _ = _train(be, lambda: _mlp(0.0), 6, compiled=False)
    compiled, _, step = _train(be, lambda: _mlp(0.0), 6, compiled=True)
    assert step.kind == "jit"
    for key in eager:
        np.testing.assert_allclose(compiled[key], eager[key], rtol=2e-4, atol=2e-5)


def test_numpy_says_once_that_it_runs_eagerly():
    compiled_mod._said.discard("numpy")
    xn.use("numpy")
    model = xn.Sequential(xn.Linear(2, 2))
    with pytest.warns(UserWarning, match="numpy has no compiler; the step runs eagerly"):
        step = xn.compile_step(model, xn.QuadraticCost(), xn.SGD(model.parameters()))
    assert step.kind == "eager"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xn.compile_step(model, xn.QuadraticCost(), xn.SGD(model.parameters()))


def test_optimizer_of_other_parameters_is_refused():
    xn.use("numpy")
    model, other = xn.Sequential(xn.Linear(2, 2)), xn.Linear(2, 2)
    with pytest.raises(ValueError, match="not .*'s .*model.parameters"):
        xn.compile_step(model, xn.QuadraticCost(), xn.SGD(other.parameters()))


# -- the CUDA-graph logic, on NumPy arrays ---------------------------------------------
def _graph_run(build, compiled, sizes, schedule=True, epochs=3):
    xn.use("numpy")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((sum(sizes), 8)).astype(np.float32)
    y = rng.integers(0, 3, sum(sizes))
    xn.seed(2)
    model = build()
    opt = xn.Adam(model.parameters(), lr=xn.StepLR(0.02, 4, 0.5) if schedule else 0.02)
    loss = xn.SoftmaxCrossEntropy()
    step = Step(model, loss, opt, metrics=MetricSet(xn.metrics.resolve(["accuracy"], loss, 3)))
    fake = FakeGraphs()
    fake.step = step
    runner = TrainStep(step, compiler=fake if compiled else False)
    bounds = np.cumsum((0,) + tuple(sizes))
    costs = []
    stream = xn.RandomStream(9).restart(9, 0)
    with stream.active():
        for _epoch in range(epochs):
            for i in range(len(sizes)):
                xb = x[bounds[i]:bounds[i + 1]].copy()  # a fresh array each step, as fit's
                costs.append(float(runner.run(xb, y[bounds[i]:bounds[i + 1]].copy())))
    return model, costs, runner.metrics.results(), fake, runner


def test_cuda_graph_logic_replays_the_eager_steps():
    sizes = (6, 6, 4)  # two shapes: the last, smaller batch is captured on its own
    ref, ref_costs, ref_sums, _, _ = _graph_run(_cnn, False, sizes)
    model, costs, sums, fake, step = _graph_run(_cnn, True, sizes)
    assert step.kind == "graph"
    assert fake.captures == 2 and fake.eager_runs == 2
    assert fake.launches == 3 * len(sizes) - 2  # every step after each shape's warm-up
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-6, atol=1e-7)
    assert sums == pytest.approx(ref_sums, rel=1e-6)  # the metric sums live in the graph
    for (name, a), (_, b) in zip(model.named_state(), ref.named_state(), strict=True):
        # running statistics are rebound by BatchNorm: copied back into the graph's arrays
        np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_cuda_graph_captures_the_steps_random_draws(monkeypatch):
    """Dropout inside a captured step: each replay reads the stream's position from the
    graph's own array, so it draws the masks the eager steps draw (CuPy draws eagerly
    with the same counter-based generator; NumPy is made to here)."""
    from xpnet.backends import ADAPTERS
    from xpnet.backends.standard import counter_uniform, fold_key

    def counter(like, shape, key):
        *prefix, position = key
        return counter_uniform(xn.current().xp, shape, like.dtype, "cpu",
                               fold_key(tuple(prefix)), position)

    monkeypatch.setattr(ADAPTERS["numpy"], "uniform", counter)
    _, ref_costs, _, _, _ = _graph_run(_mlp_8, False, (5, 5))
    _, costs, _, fake, step = _graph_run(_mlp_8, True, (5, 5))
    assert step.kind == "graph" and fake.captures == 1 and fake.launches == 5
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-6)
    _, p0_costs, _, _, _ = _graph_run(lambda: _mlp_8(0.0), True, (5, 5))
    assert not np.allclose(costs, p0_costs)  # the masks did something


def _mlp_8(p=0.3):
    return xn.Sequential(xn.Linear(8, 8), xn.ReLU(), xn.Dropout(p), xn.Linear(8, 3))


def test_torch_compiles_every_model_not_just_the_first_eight(monkeypatch):
    """torch.compile keeps at most 8 graphs per code object and then runs that code
    eagerly, saying so only in a log line: every TrainStep's step must have its own.
    Nine models of different widths, two steps each: nine graphs reach the backend."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from xpnet.backends.torch import TorchCompiler

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(TorchCompiler, "backend", staticmethod(counting))
    torch._dynamo.reset()
    be = xn.use("torch")
    rng = np.random.default_rng(0)
    for width in range(3, 12):
        x = be.asarray(rng.standard_normal((4, width)), dtype="float32")
        y = be.asarray(rng.integers(0, 2, 4))
        model = xn.Sequential(xn.Linear(width, 5), xn.Tanh(), xn.Linear(5, 2))
        step = xn.compile_step(model, xn.SoftmaxCrossEntropy(),
                               xn.SGD(model.parameters(), lr=0.1))
        before = len(graphs)
        for _ in range(2):
            step(x, y)
        assert step.kind == "jit"
        assert len(graphs) == before + 1, f"width {width}: no graph compiled"


def test_steps_per_execution_takes_the_single_steps(be, aot_eager, recwarn):
    """fit(compile=True, steps_per_execution=3): the steps of steps_per_execution=1 (a
    Dropout model, so each step's masks; a schedule, so each step's lr), the groups cut
    where the last, smaller batch starts; on JAX three steps per compiled call."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((31, 6)).astype(np.float32)
    y = rng.integers(0, 3, 31)
    runs = []
    for k in (1, 3):
        xn.seed(5)
        model = _mlp(0.3)
        opt = xn.Adam(model.parameters(), lr=xn.CosineLR(0.02, 16))
        hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
                      batch_size=4, seed=3, progress=False, compile=True,
                      steps_per_execution=k)
        assert opt.steps == 16
        runs.append((hist, [np.asarray(xn.to_numpy(p.value)) for p in model.parameters()],
                     model))
    (h1, p1, _), (h3, p3, model) = runs
    for a, b in zip(p1, p3, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(h3.history[key], h1.history[key], rtol=1e-4, atol=1e-6)
    if be.name == "jax":
        (step,) = loop_mod._compiled[opt].values()
        # 8 batches an epoch (7 of 4, 1 of 3): calls of 3, 3, then 1 and 1 singly
        grouped = [fn for (contexts, _), fn in step._compiled.items() if len(contexts) == 3]
        assert len(grouped) == 1 and grouped[0]._cache_size() == 1
        assert set(step._draws.values()) == {1, 3}  # one mask a step, traced


def test_steps_per_execution_without_compile_takes_the_same_steps():
    """Keras's steps_per_execution without a compiler: the steps run one by one, the
    same steps (it was refused without compile=True)."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10)
    runs = []
    for k in (1, 4):
        xn.seed(5)
        model = _mlp(0.3)
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               steps_per_execution=k, progress=False, batch_size=3, seed=1)
        runs.append(model.state_dict())
    for key in runs[0]:
        np.testing.assert_array_equal(runs[1][key], runs[0][key])


# -- every option with every other: the table the README shows -------------------------------
class _BatchLosses(xn.Callback):
    """A per-batch callback: it reads nothing, so it must not change any step."""

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self.seen = []

    def on_batch_end(self, step, logs):
        self.seen.append(step)


def _bn():
    return xn.Sequential(xn.Linear(6, 8), xn.ReLU(), xn.BatchNorm1D(8), xn.Linear(8, 3))


#: (name, model, fit keywords): one option at a time, then options together
COMBINATIONS = [
    ("plain", _mlp, {}),
    ("bf16", _mlp, {"precision": "bf16-mixed"}),
    ("fp16", _mlp, {"precision": "fp16-mixed"}),
    ("clip-norm", _mlp, {"clip_grad_norm": 0.05}),
    ("clip-value", _mlp, {"clip_grad_value": 0.01}),
    ("steps-per-execution", _mlp, {"steps_per_execution": 3}),
    ("accumulate", _mlp, {"accumulate_grad_batches": 3}),
    ("callback", _mlp, {"callbacks": True}),
    ("batchnorm", _bn, {"clip_grad_norm": 0.5}),
    ("fp16-clip-value-accumulate", _mlp,
     {"precision": "fp16-mixed", "clip_grad_value": 0.01, "accumulate_grad_batches": 2}),
    # SGD here: bf16 rounds a BatchNorm'd unit's small gradients to noise, which Adam
    # turns into steps of random sign (compiled and eager would then differ by design)
    ("bf16-norm-groups-callback-bn", _bn,
     {"precision": "bf16-mixed", "clip_grad_norm": 0.05, "steps_per_execution": 2,
      "callbacks": True, "sgd": True}),
    ("everything", _mlp,
     {"precision": "fp16-mixed", "clip_grad_norm": 0.05, "clip_grad_value": 0.01,
      "steps_per_execution": 3, "accumulate_grad_batches": 2, "callbacks": True}),
]

#: the rows that combine every option: all a compiling backend runs (~10 s a row there)
COMBINED = {"plain", "fp16-clip-value-accumulate", "bf16-norm-groups-callback-bn", "everything"}

#: which low-precision dtypes each library has (tests/test_precision.py asserts it)
_LOW = {"numpy": {"float16"}, "torch": {"float16", "bfloat16"},
        "jax": {"float16", "bfloat16"}, "cupy": {"float16"}, "array_api_strict": set()}


def _combined_fit(be, build, options, compile):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    kw = dict(options)
    recorder = _BatchLosses() if kw.pop("callbacks", False) else None
    xn.seed(3)
    model = build()
    opt = (xn.SGD(model.parameters(), lr=xn.CosineLR(0.2, 30, warmup_steps=2), momentum=0.9)
           if kw.pop("sgd", False)
           else xn.Adam(model.parameters(), lr=xn.CosineLR(0.02, 30, warmup_steps=2)))
    hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
                  batch_size=4, seed=5, progress=False, compile=compile,
                  callbacks=[recorder] if recorder else None, **kw)
    state = {n: np.asarray(xn.to_numpy(p.value), dtype=np.float64)
             for n, p in model.named_state()}
    return state, hist, opt.steps, recorder


@pytest.mark.parametrize("name, build, options", COMBINATIONS, ids=[c[0] for c in COMBINATIONS])
def test_every_option_combines_compiled_as_eager(be, name, build, options, aot_eager, recwarn):
    """fit(compile=True) takes the steps fit(compile=False) takes with every combination
    (2 epochs of 10 batches, Adam on a warmup-cosine schedule); a precision the library
    lacks is refused alike, before training."""
    if be.name in ("jax", "torch") and name not in COMBINED:
        pytest.skip(f"{be.name}: compiling takes ~10 s a row, so it runs the rows that "
                    f"combine every option; each option alone runs on the eager backends")
    low = options.get("precision", "32")
    dtype = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}.get(low)
    if dtype is not None and dtype not in _LOW[be.name]:
        for compile in (False, True):
            with pytest.raises(TypeError, match=f"precision='{low}'"):
                _combined_fit(be, build, options, compile)
        return
    eager, h0, steps0, rec0 = _combined_fit(be, build, options, False)
    compiled, h1, steps1, rec1 = _combined_fit(be, build, options, True)
    k = options.get("accumulate_grad_batches", 1)
    assert steps0 == steps1 == 2 * -(-10 // k)  # 10 batches an epoch, groups of k
    if rec0 is not None:
        assert rec0.seen == rec1.seen == list(range(10)) * 2  # every batch, grouped or not
    # float32 rounding through 20 steps; half precision rounds at 1e-3 (fp16), 1e-2 (bf16)
    rtol = {None: 2e-4, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    atol = {None: 2e-5, "float16": 2e-4, "bfloat16": 1e-2}[dtype]  # bf16: one ulp at 0.4
    for key in eager:
        np.testing.assert_allclose(compiled[key], eager[key], rtol=rtol, atol=atol,
                                   err_msg=f"{name}: {key}")
    np.testing.assert_allclose(h1["loss"], h0["loss"], rtol=rtol, atol=atol)
    xn.seed(3)
    start = {n: np.asarray(xn.to_numpy(p.value)) for n, p in build().named_state()}
    assert max(np.abs(eager[k] - start[k]).max() for k in start) > 1e-3  # it trained


# -- gradient accumulation: the step of a k-times larger batch -------------------------------
@pytest.mark.parametrize("compile", [False, True])
def test_accumulated_batches_take_the_larger_batchs_step(be, compile, aot_eager, recwarn):
    """accumulate_grad_batches=3 on batches of 4 equals batches of 12, in float64: 26
    examples make groups of 12, 12 and the last 2 (weighted by examples, not batches),
    with momentum and weight decay so any difference in a gradient stays visible."""
    dtype = "float64" if be.device_name != "no_float64" else "float32"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((26, 5))
    y = rng.integers(0, 3, 26)
    runs = []
    for batch, k in ((4, 3), (12, 1)):
        xn.seed(2)
        model = xn.Sequential(xn.Linear(5, 7, dtype=dtype), xn.Tanh(),
                              xn.Linear(7, 3, dtype=dtype))
        opt = xn.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=0.01)
        hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
                      batch_size=batch, shuffle=False, progress=False, seed=0,
                      accumulate_grad_batches=k, compile=compile)
        assert opt.steps == 6
        runs.append(({n: np.asarray(xn.to_numpy(p.value)) for n, p in model.named_state()},
                     hist))
    (acc, h_acc), (big, h_big) = runs
    tol = 1e-12 if dtype == "float64" else 2e-6
    for key in big:
        np.testing.assert_allclose(acc[key], big[key], rtol=tol, atol=tol, err_msg=key)
    # the logged loss is the mean over the epoch's examples either way
    np.testing.assert_allclose(h_acc["loss"], h_big["loss"], rtol=1e-6)


def test_accumulate_grad_batches_is_checked():
    model = _mlp()
    with pytest.raises(ValueError, match="fit: accumulate_grad_batches must be >= 1"):
        xn.fit(model, np.zeros((4, 6), np.float32), np.zeros(4, int),
               loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model.parameters()),
               accumulate_grad_batches=0, progress=False)


# -- a step that fails leaves the model as it was ------------------------------------------
def test_a_failed_compiled_step_leaves_the_model_as_it_was(be, aot_eager, recwarn):
    """A batch of the wrong width fails inside the trace (JAX, torch) or the forward: the
    parameters are still the model's own arrays (no tracer left bound), training goes on,
    and predict and save work."""
    rng = np.random.default_rng(0)
    xn.seed(1)
    model = _mlp(0.0)
    opt = xn.Adam(model.parameters(), lr=0.01)
    step = xn.compile_step(model, xn.SoftmaxCrossEntropy(), opt)
    x = be.asarray(rng.standard_normal((4, 6)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, 4))
    step(x, y)
    before = model.arrays(copy=True)
    with pytest.raises(Exception, match="Linear"):
        step(be.asarray(rng.standard_normal((4, 5)), dtype="float32"), y)
    for a, b in zip(model.arrays(), before, strict=True):
        np.testing.assert_array_equal(xn.to_numpy(a), xn.to_numpy(b))
    assert xn.predict(model, x).shape == (4, 3)
    step(x, y)  # and it trains on
    assert opt.steps == 3  # the failed step counted: its coefficients were made


def test_compile_step_refuses_a_moved_model():
    pytest.importorskip("jax")
    xn.use("jax")
    model = _mlp(0.0)
    step = xn.compile_step(model, xn.SoftmaxCrossEntropy(), xn.SGD(model.parameters()))
    model.to("numpy")
    x, y = np.zeros((2, 6), np.float32), np.zeros(2, np.int64)
    with pytest.raises(RuntimeError, match="the model moved .* compile a new step"):
        step(x, y)


# -- misuse of compiled steps (the hardening issue, round 2) ----------------------------
def _steps_both_ways(be, make, steps, before_step=lambda i, opt: None):
    """The model's arrays after ``steps`` eager, then compiled, steps of ``make()``'s
    (model, optimizer) on one batch; ``before_step(i, opt)`` may change settings."""
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((8, 6)), dtype="float32")
    y = be.asarray(rng.integers(0, 3, 8))
    runs = []
    for compiled in (False, True):
        xn.seed(4)
        model, opt = make()
        step = TrainStep(Step(model, xn.SoftmaxCrossEntropy(), opt),
                         compiler=None if compiled else False)
        for i in range(steps):
            before_step(i, opt)
            step(x, y)
        runs.append([np.asarray(xn.to_numpy(a)) for a in model.arrays()])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_changed_hyperparameters_are_taken_by_the_compiled_step(be, aot_eager, recwarn):
    """weight_decay, betas and eps changed between steps: jax.jit baked them in (weights
    0.05-0.1 away from eager); the step is made again for the new settings."""
    def change(i, opt):
        if i == 3:
            opt.weight_decay, opt.betas, opt.eps = 0.5, (0.5, 0.9), 1e-3

    def make():
        model = _mlp(0.0)
        return model, xn.AdamW(model.parameters(), lr=0.05)

    _steps_both_ways(be, make, 6, change)


def test_fit_compile_after_the_model_moved_trains_where_it_is():
    """A compiled step belongs to one placement of the model: after model.to(...) fit
    makes the step for the new place (it reused the JAX step and put the parameters
    back on JAX, or raised a raw JAX error for array-api-strict)."""
    pytest.importorskip("jax")
    import array_api_strict  # noqa: F401

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 6)).astype(np.float32), rng.integers(0, 3, 12)
    xn.use("jax")
    model = _mlp(0.0)
    opt = xn.SGD(model.parameters(), lr=0.1)
    kw = dict(loss=xn.SoftmaxCrossEntropy(), optimizer=opt, progress=False, compile=True)
    xn.fit(model, x, y, **kw)
    for backend in ("numpy", "array_api_strict", "jax"):
        model.to(backend)
        xn.fit(model, x, y, **kw)
        assert {xn.backend.backend_of(a).name for a in model.arrays()} == {backend}


def test_jax_compiles_a_model_that_starts_with_an_embedding_with_batch_callbacks():
    """fit(compile=True) on JAX for xn.models.transformer (an Embedding first: its
    backward asked a tracer for .device) with an on_batch_end callback (it read a
    donated running sum): both train, as eagerly."""
    pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (12, 6)), rng.integers(0, 11, (12, 6))

    class Losses(xn.Callback):
        def on_train_begin(self, model, optimizer):
            super().on_train_begin(model, optimizer)
            self.losses = []

        def on_batch_end(self, step, logs):
            self.losses.append(logs["loss"])

    runs = []
    for compile in (False, True):
        xn.use("jax")
        xn.seed(0)
        model = xn.models.transformer(11, embed_dim=8, num_heads=2, num_layers=1, max_len=6)
        cb = Losses()
        h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.Adam(model),
                   epochs=2, batch_size=4, compile=compile, progress=False, callbacks=[cb],
                   seed=0)
        runs.append((h["loss"], cb.losses))
    (h0, b0), (h1, b1) = runs
    assert len(b1) == len(b0) == 6
    np.testing.assert_allclose(b1, b0, rtol=1e-4)
    np.testing.assert_allclose(h1, h0, rtol=1e-4)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_compile_step_checks_clip_settings_when_made(bad):
    model = _mlp(0.0)
    opt = xn.SGD(model.parameters())
    for name in ("clip_grad_norm", "clip_grad_value"):
        with pytest.raises(ValueError, match=f"compile_step: {name} must be a finite number"):
            xn.compile_step(model, xn.SoftmaxCrossEntropy(), opt, **{name: bad})


def test_no_tracer_is_left_in_a_layer_after_a_compiled_step(be, aot_eager, recwarn):
    """Layer caches filled while tracing held JAX tracers: a later backward without a
    forward raised UnexpectedTracerError. The caches are put back as they were, so it
    says to run forward first."""
    model = _mlp(0.0)
    step = xn.compile_step(model, xn.SoftmaxCrossEntropy(), xn.SGD(model.parameters()))
    rng = np.random.default_rng(0)
    step(be.asarray(rng.standard_normal((4, 6)), dtype="float32"),
         be.asarray(rng.integers(0, 3, 4)))
    dy = be.asarray(np.ones((4, 3)), dtype="float32")
    if step.kind != "jit":  # eager (or CuPy's eager warm-up) leaves its forward's caches
        assert tuple(model.backward(dy).shape) == (4, 6)
        return
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a forward\(x, train=True\)"):
        model.backward(dy)


def _readme_scale_layer():
    """The README's own-layer example (the Scale class), as a user copies it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
                 if "class Scale(xn.Layer)" in b)
    scope: dict = {}
    exec(compile(block.split("def test_scale")[0], "README.md (Scale)", "exec"), scope)
    return scope["Scale"]


def test_the_readmes_own_layer_trains_compiled(be, aot_eager, recwarn):
    """A user's layer written as the README shows (its namespace found with
    xn.backend.backend_of(dy)) trains compiled as eagerly; backend_of raised on a JAX
    tracer inside compile_step."""
    Scale = _readme_scale_layer()

    def make():
        model = xn.Sequential(Scale(6), xn.Linear(6, 3))
        return model, xn.Adam(model, lr=0.05)

    _steps_both_ways(be, make, 5)
