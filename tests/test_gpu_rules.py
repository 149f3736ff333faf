"""Rules of the GPU libraries that xpnet must obey, checked without a GPU.

Our machines have no GPU, so each rule below is modelled on the CPU: CuPy's refusal of
cuBLAS calls while a stream captures (a capturing compiler on NumPy arrays whose capture
refuses a matmul), JAX's grab of 75% of GPU memory when it starts, the TF32 defaults of
PyTorch and JAX on CUDA devices (their flags exist in the CPU builds), the GPU bench's
compiled rows and the kit's GPU cases, and ``xpnet selftest``. The stand-in CuPy (two
devices, kernels that refuse arrays of another device, erf's float16 loop) is in
``test_cupy_kernels.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import xpnet as xn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What selftest trains: the digits need scikit-learn (the data extra), XOR nothing.
_TRAINED = "digits MLP" if importlib.util.find_spec("sklearn") else "XOR MLP"


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter from the repository root."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- 5. JAX's preallocation -----------------------------------------------------------------
_SEEN_AT_IMPORT = """
import importlib.abc, os, sys

class Watch(importlib.abc.MetaPathFinder):
    seen = "jax not imported"

    def find_spec(self, name, path=None, target=None):
        if name == "jax" and Watch.seen == "jax not imported":
            Watch.seen = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "unset")
        return None

sys.meta_path.insert(0, Watch())
import xpnet as xn
{call}
print("SEEN", Watch.seen)
"""


@pytest.mark.parametrize("call,user", [
    ("xn.available()", None), ("xn.use('jax', 'cpu')", None),
    ("xn.backends.ADAPTERS['jax'].version()", None), ("xn.available()", "true")],
    ids=["available", "use-jax-cpu", "version", "user-set"])
def test_jax_is_imported_without_preallocating_gpu_memory(call, user):
    """JAX takes 75% of every GPU's memory when its first platform starts (even
    ``jax.devices("cpu")``), leaving CuPy and torch in the same process a quarter:
    xpnet imports jax with XLA_PYTHON_CLIENT_PREALLOCATE=false, unless the user set it."""
    pytest.importorskip("jax", reason="jax is not installed")
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    if user is not None:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = user
    r = _python(_SEEN_AT_IMPORT.format(call=call), env=env)
    assert r.returncode == 0, r.stderr
    assert f"SEEN {user or 'false'}" in r.stdout, r.stdout + r.stderr


# -- 4. float32 on GPUs: full precision unless TF32 is asked for -----------------------------
@pytest.fixture
def torch_cuda_stub(monkeypatch):
    """torch's CPU build told it has one CUDA device (opening one makes no CUDA call);
    its precision flags as they were before, restored after."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    saved = [f.fp32_precision for f in flags]
    yield torch
    for f, value in zip(flags, saved):
        f.fp32_precision = value


@pytest.mark.parametrize("opt_in,expected", [(None, "ieee"), ("1", "tf32"), ("0", "ieee")])
def test_torch_cuda_computes_float32_in_float32(torch_cuda_stub, monkeypatch, opt_in, expected):
    """cuDNN's float32 convolutions default to TF32 in PyTorch (10-bit mantissa: conv
    results off by ~1e-3 against the CPU's); xpnet opens a CUDA device with TF32 off for
    matmuls and convolutions, and on with XPNET_TF32=1."""
    torch = torch_cuda_stub
    if opt_in is None:
        monkeypatch.delenv("XPNET_TF32", raising=False)
    else:
        monkeypatch.setenv("XPNET_TF32", opt_in)
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's defaults
    xn.backend.make("torch", "cpu")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # the CPU changes nothing
    be = xn.backend.make("torch", "cuda")
    assert be.device_name == "cuda:0"
    assert torch.backends.cuda.matmul.fp32_precision == expected
    assert torch.backends.cudnn.conv.fp32_precision == expected


@pytest.fixture
def jax_gpu_stub(monkeypatch):
    """JAX told it has one GPU; its default matmul precision restored after."""
    jax = pytest.importorskip("jax", reason="jax is not installed")
    from xpnet.backends.jax import JaxAdapter

    monkeypatch.setattr(JaxAdapter, "_gpus", staticmethod(lambda: ["gpu 0"]))
    saved = jax.config.jax_default_matmul_precision
    yield jax
    jax.config.update("jax_default_matmul_precision", saved)


@pytest.mark.parametrize("opt_in,expected", [(None, "highest"), ("1", "tensorfloat32")])
def test_jax_cuda_computes_float32_in_float32(jax_gpu_stub, monkeypatch, opt_in, expected):
    """JAX's float32 matmuls on a GPU default to reduced precision (TF32 passes); xpnet
    asks for full float32 when it opens a CUDA device, TF32 with XPNET_TF32=1."""
    jax = jax_gpu_stub
    if opt_in is None:
        monkeypatch.delenv("XPNET_TF32", raising=False)
    else:
        monkeypatch.setenv("XPNET_TF32", opt_in)
    jax.config.update("jax_default_matmul_precision", None)
    xn.backend.make("jax", "cpu")
    assert jax.config.jax_default_matmul_precision is None
    be = xn.backend.make("jax", "cuda")
    assert be.device_name == "cuda:0"
    assert jax.config.jax_default_matmul_precision == expected


# -- 1. CUDA-graph capture: CuPy refuses cuBLAS while a stream captures ----------------------
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from helpers import FakeGraphs  # noqa: E402

from xpnet import backends  # noqa: E402
from xpnet.backends.cupy import CudaGraphs  # noqa: E402
from xpnet.train import Step, TrainStep  # noqa: E402

#: CuPy 14's error (cupy_backends/cuda/libs/cublas.pyx, setStream) for any cuBLAS call
#: on a capturing stream: every matmul (CuPy's GEMMs are cuBLAS)
CUBLAS_REFUSAL = "calling cuBLAS API during stream capture is currently unsupported"
#: NumpyOps' primitives that run a matmul (the rest of the layers' matmuls are ``@``, in
#: backward, after a forward that has always run one of these first)
GEMM_PRIMITIVES = ("linear", "conv_forward", "conv_backward", "rows_add_onehot")


class RefusingGraphs(FakeGraphs):
    """``CudaGraphs`` on CuPy 14, on NumPy arrays: helpers.FakeGraphs, whose capture runs
    the step's Python and undoes what it computed, and while it captures a matmul raises
    CuPy's NotImplementedError. ``refusal`` is the real CudaGraphs', so the driver is
    asked the question it asks on a GPU."""

    name = "fake CUDA graph (cuBLAS refused while capturing)"
    refusal = CudaGraphs.refusal

    #: what a matmul raises while capturing
    error = staticmethod(lambda: NotImplementedError(CUBLAS_REFUSAL))

    def capture(self, fn):
        o = backends.ops(np)

        def refuse(*args, **kwargs):
            raise self.error()

        for name in GEMM_PRIMITIVES:
            setattr(o, name, refuse)  # an instance attribute hides the method
        try:
            return super().capture(fn)
        finally:
            for name in GEMM_PRIMITIVES:
                delattr(o, name)


def _mlp():
    return xn.Sequential(xn.Linear(8, 16), xn.Tanh(), xn.Linear(16, 3))


def _no_gemm():
    """Parameters, element-wise work and reductions, and no matmul: capturable."""
    return xn.Sequential(xn.LayerNorm(8), xn.Tanh(), xn.LayerNorm(8))


def _steps(build, compiler, sizes=(6, 6, 4), epochs=3):
    """Costs and final state of Adam steps through TrainStep with ``compiler`` (False:
    eager), on the same data from the same seed."""
    xn.use("numpy")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((sum(sizes), 8)).astype(np.float32)
    y = rng.integers(0, 3, sum(sizes))
    xn.seed(2)
    model = build()
    step = Step(model, xn.SoftmaxCrossEntropy(), xn.Adam(model.parameters(), lr=0.02))
    if compiler:
        compiler.step = step
    runner = TrainStep(step, compiler=compiler)
    bounds = np.cumsum((0,) + tuple(sizes))
    costs = []
    with xn.RandomStream(9).restart(9, 0).active():
        for _ in range(epochs):
            for i in range(len(sizes)):
                xb, yb = x[bounds[i]:bounds[i + 1]].copy(), y[bounds[i]:bounds[i + 1]].copy()
                costs.append(float(runner.run(xb, yb)))
    return costs, {n: p.value.copy() for n, p in model.named_state()}, runner


def test_capture_refused_by_cublas_runs_the_step_eagerly():
    """CuPy refuses every cuBLAS call on a capturing stream, so the first capture of any
    model with a matmul raised and fit(compile=True) crashed. The captured driver takes
    the refusal, puts the step's state back, runs that step and every later one eagerly,
    and says so once, naming why: the same steps as the eager driver."""
    from xpnet.train import compiled

    compiled._said.clear()
    ref_costs, ref_state, _ = _steps(_mlp, False)
    fake = RefusingGraphs()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        costs, state, runner = _steps(_mlp, fake)
        _steps(_mlp, RefusingGraphs())  # said once per process
    notes = [str(w.message) for w in seen if "capture" in str(w.message)]
    assert len(notes) == 1 and "cuBLAS" in notes[0] and "eagerly" in notes[0], notes
    assert runner.kind == "eager" and CUBLAS_REFUSAL in runner.refused
    assert fake.captures == 1 and fake.launches == 0  # not tried again at every step
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-6, atol=1e-7)
    for name in ref_state:
        np.testing.assert_allclose(state[name], ref_state[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_a_model_without_matmuls_is_still_captured():
    ref_costs, ref_state, _ = _steps(_no_gemm, False)
    fake = RefusingGraphs()
    costs, state, runner = _steps(_no_gemm, fake)
    assert runner.kind == "graph" and fake.captures == 2 and fake.launches == 7
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-6, atol=1e-7)
    for name in ref_state:
        np.testing.assert_allclose(state[name], ref_state[name], rtol=1e-6, atol=1e-7)


def test_fit_compile_on_a_refusing_capture_equals_fit(monkeypatch):
    """fit(compile=True) with CuPy's compiler (a refusing stand-in on NumPy): trains,
    the same epochs as fit()."""
    from xpnet.train import compiled

    compiled._said.clear()
    monkeypatch.setattr(backends.ADAPTERS["numpy"], "compiler", lambda: RefusingGraphs())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 8)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    runs = []
    for compile in (False, True):
        xn.use("numpy")
        xn.seed(5)
        model = _mlp()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(),
                          optimizer=xn.Adam(model.parameters(), lr=0.01), epochs=2,
                          batch_size=8, seed=3, progress=False, compile=compile)
        runs.append((hist.history["loss"], [p.value for p in model.parameters()]))
    (l0, p0), (l1, p1) = runs
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(p0, p1):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_other_errors_while_capturing_are_raised_and_change_nothing():
    """Only the library's refusal to capture turns a step eager; any other error in the
    capture is the step's own: raised, with the model as it was before."""
    class Broken(RefusingGraphs):
        error = staticmethod(lambda: ValueError("a bug"))

    xn.use("numpy")
    xn.seed(1)
    # BatchNorm rebinds its running statistics before the matmul fails
    model = xn.Sequential(xn.BatchNorm1D(8), xn.Linear(8, 3))
    step = Step(model, xn.SoftmaxCrossEntropy(), xn.Adam(model.parameters(), lr=0.02))
    fake = Broken(step)
    runner = TrainStep(step, compiler=fake)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    y = np.zeros(4, np.int64)
    runner.run(x, y)  # the warm-up, eager
    before = [np.array(a, copy=True) for a in step.arrays()]
    with pytest.raises(ValueError, match="a bug"):
        runner.run(x, y)
    assert runner.kind == "graph"
    after = step.arrays()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_cuda_graphs_knows_cupys_refusals():
    refusal = CudaGraphs.refusal
    assert refusal(None, NotImplementedError(CUBLAS_REFUSAL))
    assert refusal(None, NotImplementedError(
        "calling cuRAND API during stream capture is currently unsupported"))
    assert refusal(None, RuntimeError(
        "the current stream is capturing, so synchronous API calls are disallowed"))
    assert refusal(None, ValueError("shapes (3,4) and (5,6) not aligned")) is None
    assert refusal(None, NotImplementedError("something else")) is None


# -- 8. the GPU bench's compiled rows, the kit's jax-cuda case ---------------------------------
def test_gpu_bench_times_compiled_steps(monkeypatch):
    """bench.gpu has fit(compile=True) rows for CuPy (CUDA graphs) and torch (inductor)
    as bench/run.py has for the CPU; a "xpnet-compiled" case trains with compile=True."""
    from bench import gpu
    from bench import workloads as W

    rows = {label: (name, kind) for label, name, _, kind in gpu.CASES}
    assert rows["xpnet-cupy-compiled"] == ("cupy", "xpnet-compiled")
    assert rows["xpnet-torch-compiled"] == ("torch", "xpnet-compiled")
    seen = []
    real = W.make_xpnet

    def spy(*args, compile=False, **kwargs):
        seen.append(compile)
        return real(*args, compile=compile, **kwargs)

    monkeypatch.setattr(W, "make_xpnet", spy)
    out = gpu.bench([("xpnet-numpy", "numpy", "cpu", "xpnet"),
                     ("xpnet-numpy-compiled", "numpy", "cpu", "xpnet-compiled")],
                    ["a10"], rounds=1, steps_scale=0.02)
    assert seen == [False, True]
    assert set(out["results"]["a10"]) == {"xpnet-numpy", "xpnet-numpy-compiled"}


def test_gpu_bench_times_capture_against_eager():
    """``python -m bench.gpu --capture``: one GEMM-free step (what CuPy can capture)
    eagerly and as compile_step's graph; here on NumPy, which has no compiler."""
    from bench import gpu

    out = gpu.capture_gain(xn.backend.make("numpy"), batch=8, width=16, steps=3, rounds=1)
    assert set(out) == {"eager", "compiled"}
    for rate, kind in out.values():
        assert rate > 0 and kind == "eager"


def test_the_kit_lists_jax_on_cuda():
    from xpnet.testing import CASES, open_case

    case = next(c for c in CASES if c.id == "jax-cuda")
    assert (case.name, case.device) == ("jax", "cuda")
    try:
        be = open_case(case)
    except pytest.skip.Exception as e:  # no GPU JAX here: skipped, saying why
        assert str(e).startswith("jax-cuda: jax") or "not selected" in str(e), str(e)
    else:
        assert be.device_name == "cuda:0"


# -- 9. xpnet selftest ------------------------------------------------------------------------
#: What the CI runs per backend: every layer where that is quick; on JAX (each operation
#: compiled on its first use: ~60 s for all 32 layers) and torch a few, as the rest of
#: their layers go through check_layer in the ordinary tests of their cases anyway
SELFTEST_LAYERS = {"numpy": None, "array_api_strict": None,
                   "torch": None,
                   "jax": "Linear,Dropout"}


@pytest.mark.parametrize("name", list(SELFTEST_LAYERS))
def test_selftest_passes_on_each_installed_backend(name, capsys, monkeypatch):
    from xpnet.cli import main

    try:
        xn.backend.make(name)
    except xn.BackendUnavailableError as e:
        pytest.skip(f"{name} is not usable here: {e}")
    if name == "torch":  # inductor takes ~45 s per model on 2 cores; the trace is the same
        from xpnet.backends.torch import TorchCompiler

        monkeypatch.setattr(TorchCompiler, "backend", "aot_eager")
    argv = ["selftest", "--backend", name]
    if SELFTEST_LAYERS[name]:
        argv += ["--layers", SELFTEST_LAYERS[name]]
    with _fewer_xla_passes(name == "jax"):  # compiling each operation is most of the time
        code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith(f"xpnet selftest: {name} on ") and lines[2].startswith("check")
    assert lines[-1].startswith("all ") and "checks held" in lines[-1], out
    for line in lines[3:-1]:
        assert line[35:41].strip() in ("OK", "SKIP"), line
    for must in ("versions", "compiled step: MLP", "compiled step: no matmul",
                 "no host reads in a step", f"training: {_TRAINED}"):
        assert any(line.startswith(must) for line in lines), must
    if SELFTEST_LAYERS[name] is None:
        from xpnet.selftest import layer_cases

        for layer_name, *_ in layer_cases():
            assert any(line.startswith(f"layer {layer_name} ") for line in lines), layer_name


@contextlib.contextmanager
def _fewer_xla_passes(on: bool):
    if not on:
        yield
        return
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def test_selftest_fails_with_the_check_named(capsys, monkeypatch):
    """A layer whose gradient is wrong: its row FAILs, the others still run, exit 1."""
    from xpnet import selftest
    from xpnet.cli import main

    class Wrong(xn.Linear):
        def backward(self, dy):
            return 2 * super().backward(dy)  # the input gradient doubled

    monkeypatch.setattr(selftest, "layer_cases", lambda: [
        ("Linear", lambda: xn.Linear(4, 3), (3, 4)),
        ("Wrong", lambda: Wrong(4, 3), (3, 4))])
    code = main(["selftest", "--backend", "numpy"])
    out = capsys.readouterr().out
    assert code == 1
    wrong = next(line for line in out.splitlines() if line.startswith("layer Wrong"))
    assert " FAIL " in wrong and "gradient" in wrong, wrong
    assert out.splitlines()[-1].startswith("FAILED: 1 of ") and "layer Wrong" in out
    assert f"training: {_TRAINED}" in out  # the checks after it ran


def test_selftest_of_an_unusable_backend_is_one_line(capsys):
    from xpnet.cli import main

    assert main(["selftest", "--backend", "cupy", "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cupy" in err[0]
    assert main(["selftest", "--backend", "numpy", "--layers", "Nope"]) == 2
    assert "no layer case Nope" in capsys.readouterr().err
