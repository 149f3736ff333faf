"""The benchmark harnesses run and report (speed itself is measured in bench/, not here)."""

from __future__ import annotations

import types

import pytest

import xpnet as xn
from bench import gpu
from bench import run as bench_run


def test_cpu_bench_reports_every_implementation(capsys):
    code = bench_run.main(["--workloads", "a10,c100", "--rounds", "2", "--steps-scale", "0.02",
                           "--impls", "xpnet-numpy,numpy"])
    out = capsys.readouterr().out
    assert code == 0
    assert "xpnet-numpy" in out and "GEMM rate" in out
    assert "skipped: no hand-written reference for this workload" in out


def test_cpu_bench_rejects_unknown_workload():
    with pytest.raises(SystemExit):
        bench_run.main(["--workloads", "z9"])


def test_gpu_bench_without_gpu_says_why(capsys):
    _, why = gpu.usable(gpu.CASES)
    if len(why) < len(gpu.CASES):
        pytest.skip("this machine has a GPU: the GPU bench would really run")
    assert gpu.main([]) == 0
    out = capsys.readouterr().out
    assert "nothing was measured" in out and "xpnet-cupy" in out and "torch-cuda" in out


def test_gpu_bench_logic_on_cpu_backends():
    """The same timing, synchronising and interleaving code, on CPU cases."""
    pytest.importorskip("torch", reason="torch is not installed")
    cases = [("xpnet-numpy", "numpy", "cpu", "xpnet"), ("xpnet-torch", "torch", "cpu", "xpnet"),
             ("torch-eager", "torch", "cpu", "torch"), ("nowhere", "cupy", "cuda:7", "xpnet")]
    out = gpu.bench(cases, ["a10", "d128"], rounds=2, steps_scale=0.02)
    for key in ("a10", "d128"):
        assert set(out["results"][key]) == {"xpnet-numpy", "xpnet-torch", "torch-eager"}
        assert all(rate > 0 for rate in out["results"][key].values())
    assert "cupy" in out["skipped"]["nowhere"]


def test_synchronizer_waits_on_the_right_device():
    """Each adapter's synchronize, checked with stand-in devices (no GPU needed)."""
    from xpnet.backends import ADAPTERS

    calls = []
    ADAPTERS["cupy"].synchronize(types.SimpleNamespace(synchronize=lambda: calls.append("cupy")))
    assert calls == ["cupy"]
    assert ADAPTERS["numpy"].synchronize("cpu") is None
    host = xn.backend.make("numpy")
    assert gpu.synchronizer(host) == host.synchronize
    torch = pytest.importorskip("torch", reason="torch is not installed")
    seen = []
    real = torch.cuda.synchronize
    torch.cuda.synchronize = lambda d=None: seen.append(d)
    try:
        ADAPTERS["torch"].synchronize(torch.device("cuda", 1))
        ADAPTERS["torch"].synchronize(torch.device("cpu"))  # nothing queued on the CPU
    finally:
        torch.cuda.synchronize = real
    assert seen == [torch.device("cuda", 1)]


def test_cpu_bench_reports_the_transformer_rows(capsys):
    """(f) and the baby GPT (g) run through the bench for xpnet and their PyTorch models."""
    pytest.importorskip("torch", reason="torch is not installed")
    code = bench_run.main(["--workloads", "tf32,gpt12", "--rounds", "1", "--steps-scale",
                           "0.1", "--impls", "xpnet-numpy,xpnet-torch,torch", "--cpu-time"])
    out = capsys.readouterr().out
    assert code == 0
    assert "(g) baby GPT" in out and "(f) transformer block" in out
    gpt = out[out.index("(g) baby GPT"):]
    for impl in ("xpnet-numpy", "xpnet-torch", "torch"):
        assert f"\n{impl} " in gpt, impl
    assert "skipped" not in gpt


def test_torch_gpt_is_xpnets_gpt():
    """The bench's PyTorch GPT, loaded with xpnet's initial weights, computes xpnet's
    logits (inference: no dropout), with the same parameters and a tied head."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import numpy as np

    from bench import workloads as W

    w = W.WORKLOADS["gpt12"]
    x, y = W.data(W.Workload(**{**w.__dict__, "steps": 1}))
    with xn.use("numpy"):
        model = W.xpnet_model(w)
        for p, v in zip(model.parameters(), W.initial_weights(w), strict=True):
            p.value = v.copy()
        logits = model(x)
    ref = W.torch_gpt(w)
    ref.load_state_dict({k: torch.from_numpy(v)
                         for k, v in W.torch_gpt_state(W.initial_state(w)).items()})
    ref.eval()
    out = ref(torch.from_numpy(x))
    np.testing.assert_allclose(out.detach().numpy(), logits, rtol=1e-4, atol=1e-4)
    assert ref.head.weight is ref.embed.weight  # tied, as xpnet's head
    assert sum(p.numel() for p in ref.parameters()) == sum(
        int(np.prod(v.shape)) for v in W.initial_state(w).values())


def test_profile_reports_parts_and_floor(capsys):
    from bench import profile

    assert profile.main(["--workload", "tf32", "--steps", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms per step" in out and "MultiHeadAttention.forward" in out
    assert "floor on numpy's arrays" in out and "GEMMs (projections, MLP, head)" in out


def test_threads_bench_measures_a_setting():
    """One setting of bench.threads in its own process (no load), a small workload."""
    from bench import threads

    assert threads.measure("a10", "xpnet-numpy 1 thread", 1, load=False) > 0
