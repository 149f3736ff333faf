"""The benchmark workloads on a CUDA GPU: xpnet on CuPy and on torch, and PyTorch eager.

    python -m bench.gpu                       # every workload, when a GPU is present
    python -m bench.gpu --workloads b1024,d128 --rounds 7
    python -m bench.gpu --cases xpnet-cupy,xpnet-cupy-compiled,torch-cuda
    python -m bench.gpu --capture             # a step without matmuls: eager vs CUDA graph

GPU calls return before the work is done, so every timed phase synchronises the
device before it starts and before it reads the clock. Without a usable GPU this
prints why it did nothing and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from . import workloads as W

#: (label, backend, device, kind): kind "xpnet" trains through xn.fit, "torch" is eager;
#: "xpnet-unfused" is xpnet with CuPy's fused kernels off (the standard array API path);
#: "xpnet-compiled" is fit(compile=True): a CUDA graph on CuPy (a model with a matmul runs
#: eagerly after CuPy refuses cuBLAS in the capture), torch.compile (inductor) on torch
CASES = [
    ("xpnet-cupy", "cupy", "cuda:0", "xpnet"),
    ("xpnet-cupy-unfused", "cupy", "cuda:0", "xpnet-unfused"),
    ("xpnet-cupy-compiled", "cupy", "cuda:0", "xpnet-compiled"),
    ("xpnet-torch-cuda", "torch", "cuda", "xpnet"),
    ("xpnet-torch-compiled", "torch", "cuda", "xpnet-compiled"),
    ("torch-cuda", "torch", "cuda", "torch"),
]


def synchronizer(be: Any) -> Callable[[], None]:
    """A function that waits until ``be``'s device has finished its queued work
    (the backend's adapter knows how; on the host there is nothing to wait for)."""
    return be.synchronize


def usable(cases: list[tuple[str, str, str, str]]) -> tuple[list, dict[str, str]]:
    """The cases this machine can run, and why the others cannot."""
    from xpnet.backend import BackendUnavailableError, make

    ok, why = [], {}
    for label, name, device, kind in cases:
        try:
            ok.append((label, make(name, device), kind))
        except (BackendUnavailableError, ValueError) as e:
            why[label] = str(e)
    return ok, why


def unfused(be: Any, run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` with the fused kernels of ``be``'s ops turned off while it runs (CuPy's
    ``CupyOps.fused``); a library without fused kernels runs as it is."""
    from xpnet.backends import ops

    o = ops(be.xp)
    if not hasattr(o, "fused"):
        return run

    def run_unfused() -> Any:
        o.fused = False
        try:
            return run()
        finally:
            o.fused = True

    return run_unfused


def timed(run: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def bench(cases: list[tuple[str, str, str, str]], keys: list[str], rounds: int,
          steps_scale: float = 1.0) -> dict[str, Any]:
    """Median samples/s of each usable case on each workload, interleaved per round."""
    ok, skipped = usable(cases)
    results: dict[str, dict[str, float]] = {}
    for key in keys:
        w = W.WORKLOADS[key]
        if steps_scale != 1.0:
            w = W.Workload(**{**w.__dict__, "steps": max(2, int(w.steps * steps_scale))})
        x, y = W.data(w)
        runners = {}
        for label, be, kind in ok:
            run = (W.make_torch(w, x, y, be.device_name) if kind == "torch"
                   else W.make_xpnet(w, x, y, be.name, be.device_name,
                                     compile=kind == "xpnet-compiled"))
            if kind == "xpnet-unfused":
                run = unfused(be, run)
            sync = synchronizer(be)
            timed(run, sync)  # warm-up
            runners[label] = (run, sync)
        rates: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(rounds):
            for label, (run, sync) in runners.items():
                rates[label].append(len(x) / timed(run, sync))
        results[key] = {k: statistics.median(v) for k, v in rates.items()}
    return {"results": results, "skipped": skipped}


def capture_gain(be: Any, batch: int = 128, width: int = 784, steps: int = 200,
                 rounds: int = 3) -> dict[str, tuple[float, str]]:
    """Steps per second of one training step without a matmul (the element-wise part of
    workload (a): LayerNorm and sigmoid layers, the quadratic cost, SGD; ``batch`` x
    ``width``) on ``be``, run eagerly and through ``xn.compile_step``: on CuPy a captured
    CUDA graph, which CuPy allows only without cuBLAS. ``{"eager": (rate, kind),
    "compiled": (rate, kind)}``, kind as the step reports it (``"graph"`` if captured)."""
    import numpy as np

    import xpnet as xn
    from xpnet.train import Step, TrainStep

    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((batch, width)), dtype="float32")
    y = be.asarray(rng.random((batch, width)), dtype="float32")
    sync = synchronizer(be)
    out = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        with be:
            xn.seed(0)
            model = xn.Sequential(xn.LayerNorm(width), xn.Sigmoid(), xn.LayerNorm(width),
                                  xn.Sigmoid())
        step = TrainStep(Step(model, xn.QuadraticCost(), xn.SGD(model.parameters(), lr=3.0)),
                         compiler=None if compiled else False)
        for _ in range(3):  # the warm-up, the capture and a replay
            step(x, y)

        def run(step: Any = step) -> None:
            for _ in range(steps):
                step(x, y)

        rates = [steps / timed(run, sync) for _ in range(rounds)]
        out[label] = (statistics.median(rates), step.kind)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(W.WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default=",".join(label for label, *_ in CASES),
                   help="the rows to time, by label (default: all)")
    p.add_argument("--capture", action="store_true",
                   help="time a step without matmuls eagerly and as a CUDA graph instead")
    args = p.parse_args(argv)
    chosen = [c for c in CASES if c[0] in args.cases.split(",")]
    ok, why = usable(chosen)
    if not ok:
        print("bench/gpu.py: no GPU case can run here, so nothing was measured:")
        for label, reason in why.items():
            print(f"  {label}: {reason}")
        return 0
    if args.capture:
        for label, be, kind in ok:
            if kind == "xpnet" and be.name == "cupy":
                gain = capture_gain(be, rounds=args.rounds)
                (eager, _), (graph, how) = gain["eager"], gain["compiled"]
                print(f"{label}: one step without matmuls (LayerNorm/sigmoid/quadratic/SGD, "
                      f"128x784): eager {eager:,.0f} steps/s, compile_step ({how}) "
                      f"{graph:,.0f} steps/s, {graph / eager:.2f}x")
        return 0
    out = bench(chosen, [k for k in args.workloads.split(",") if k], args.rounds)
    for key, rates in out["results"].items():
        print(W.WORKLOADS[key].name)
        base = rates.get("torch-cuda")
        for label, rate in rates.items():
            ratio = f"{rate / base:.2f}x torch" if base else ""
            print(f"  {label:<18}{rate:>14,.0f} samples/s  {ratio}")
    for label, reason in out["skipped"].items():
        print(f"  {label}: skipped: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
