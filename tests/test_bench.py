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
