"""compile_step and fit(compile=True): the compiled step takes the eager step's steps.

On every backend case: 20 Adam steps of a compiled step from the same seed end within
float32 rounding of the eager ones, for an MLP (with Dropout), a CNN (with BatchNorm),
a GRU and a transformer block. JAX runs ``jax.jit``; torch runs ``torch.compile`` with the
``aot_eager`` backend here (the same Dynamo trace and functionalisation inductor compiles;
inductor itself takes ~15 s per model on this machine and runs in one test); NumPy and
array-api-strict run eagerly. The CUDA-graph logic (warm-up, capture, replay, static
inputs, arrays a layer rebinds) runs on NumPy arrays through a fake graph object whose
replay re-runs the captured code on the captured arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn
from xpnet.compile import TrainStep

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
    step = TrainStep(model, xn.SoftmaxCrossEntropy(), opt,
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
    expected = {"jax": "jit", "torch": "jit"}.get(be.name, "eager")
    if be.name == "torch" and name == "mlp":
        expected = "eager"  # Dropout draws: torch.compile would replay one mask
    assert step.kind == expected
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
    assert step._fn._cache_size() == 2
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
    import xpnet.compile as compile_mod

    compile_mod._said.discard("numpy")
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
        TrainStep(model, xn.QuadraticCost(), xn.SGD(other.parameters()), compiler=False)


# -- the CUDA-graph logic, on NumPy arrays ---------------------------------------------
class FakeGraphs:
    """Stands for ``backends.cupy.CudaGraphs``. Capturing runs the step's Python (as a
    real capture does) but undoes what it computed (a capture records kernels without
    running them); a launch re-runs the captured code, which reads and writes exactly
    the arrays the capture saw."""

    name = "fake CUDA graph"

    def __init__(self, arrays_of):
        self.arrays_of = arrays_of  # () -> every array the step may write
        self.captures = self.launches = self.eager_runs = 0

    def eager(self, fn):
        self.eager_runs += 1
        return fn()

    def capture(self, fn):
        self.captures += 1
        saved = [(a, a.copy()) for a in self.arrays_of()]
        fn()
        for a, old in saved:
            a[...] = old
        return fn

    def launch(self, graph):
        self.launches += 1
        graph()


def _graph_run(build, compiled, sizes, schedule=True, stream_seed=None):
    xn.use("numpy")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((sum(sizes), 8)).astype(np.float32)
    y = rng.integers(0, 3, sum(sizes))
    xn.seed(2)
    model = build()
    opt = xn.Adam(model.parameters(), lr=xn.StepLR(0.02, 4, 0.5) if schedule else 0.02)
    fake = FakeGraphs(lambda: [p.value for _, p in model.named_state()]
                      + [a for s in opt.slots for a in opt.state[s] if a is not None])
    step = TrainStep(model, xn.SoftmaxCrossEntropy(), opt, count_hits=True,
                     compiler=fake if compiled else False)
    bounds = np.cumsum((0,) + tuple(sizes))
    out = []
    for _epoch in range(3):
        for i in range(len(sizes)):
            xb = x[bounds[i]:bounds[i + 1]].copy()  # a fresh array each step, as fit's
            cost, hits = step.run(xb, y[bounds[i]:bounds[i + 1]].copy())
            out.append((float(cost), float(hits)))
    return model, out, fake, step


def test_cuda_graph_logic_replays_the_eager_steps():
    sizes = (6, 6, 4)  # two shapes: the last, smaller batch is captured on its own
    ref, ref_out, _, _ = _graph_run(_cnn, False, sizes)
    model, out, fake, step = _graph_run(_cnn, True, sizes)
    assert step.kind == "graph"
    assert fake.captures == 2 and fake.eager_runs == 2
    assert fake.launches == 3 * len(sizes) - 2  # every step after each shape's warm-up
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-7)
    for (name, a), (_, b) in zip(model.named_state(), ref.named_state(), strict=True):
        # running statistics are rebound by BatchNorm: copied back into the graph's arrays
        np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_cuda_graph_runs_eagerly_when_the_step_draws():
    with pytest.warns(UserWarning, match="draws random numbers"):
        _, out, fake, step = _graph_run(_mlp_8, True, (5, 5))
    assert step.kind == "eager" and fake.captures == 0
    _, ref_out, _, _ = _graph_run(_mlp_8, False, (5, 5))
    np.testing.assert_allclose(out, ref_out)


def _mlp_8():
    return xn.Sequential(xn.Linear(8, 8), xn.ReLU(), xn.Dropout(0.3), xn.Linear(8, 3))


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
        step = TrainStep(model, xn.SoftmaxCrossEntropy(), xn.SGD(model.parameters(), lr=0.1))
        before = len(graphs)
        for _ in range(2):  # the first step runs eagerly (it checks for random draws)
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
        (step,) = model._train_steps.values()
        # 8 batches an epoch (7 of 4, 1 of 3): calls of 3, 3, then 1 and 1 singly
        assert step._fn_many._cache_size() == 1
        assert set(step._draws.values()) == {1, 3}  # one mask a step, traced


def test_steps_per_execution_needs_compile():
    x = np.zeros((4, 6), np.float32)
    model = _mlp()
    with pytest.raises(ValueError, match="steps_per_execution=4.*compile=True"):
        xn.fit(model, x, np.zeros(4, int), loss=xn.SoftmaxCrossEntropy(),
               optimizer=xn.SGD(model.parameters(), lr=0.1), steps_per_execution=4,
               progress=False)
