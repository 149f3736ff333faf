"""Benchmark xpnet against hand-written NumPy, PyTorch eager and jitted JAX.

    python -m bench                          # every workload, every implementation
    python -m bench --workloads b128,b1024 --rounds 7 --json bench.json
    python -m bench --memory                 # also peak memory on (b) and (d)

Implementations run interleaved (A B C A B C ...) for several rounds, with a pause
between timed phases so OpenBLAS's spinning worker threads from one phase do not
slow the next. Each row reports the median samples/s with its range, the median of
the per-round ratios to PyTorch and to the hand-written NumPy loop, and the fraction
of the GEMM roofline: the rate if
every step cost only its 6 x batch x weights FLOPs at the float32 GEMM rate measured
in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from . import workloads as W

IMPLS = ("xpnet-numpy", "xpnet-torch", "xpnet-jax", "xpnet-jax-compiled",
         "xpnet-jax-compiled-x8", "xpnet-torch-compiled", "numpy", "torch", "jax")
PAUSE = 0.3  # seconds between timed phases (OpenBLAS threads spin ~0.1 s after work)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def make(impl: str, w: W.Workload, x: np.ndarray, y: np.ndarray):
    """The runner of one implementation, or a string saying why there is none."""
    if impl == "xpnet-numpy":
        return W.make_xpnet(w, x, y, "numpy")
    if impl == "xpnet-torch":
        return W.make_xpnet(w, x, y, "torch") if have("torch") else "torch not installed"
    if impl == "xpnet-torch-compiled":  # fit(compile=True): torch.compile (inductor)
        return (W.make_xpnet(w, x, y, "torch", compile=True) if have("torch")
                else "torch not installed")
    if impl in ("xpnet-jax", "xpnet-jax-compiled"):  # eager, and fit(compile=True): jax.jit
        return (W.make_xpnet(w, x, y, "jax", compile=impl.endswith("compiled"))
                if have("jax") else "jax not installed")
    if impl == "xpnet-jax-compiled-x8":  # and steps_per_execution=8: 8 steps per call
        return (W.make_xpnet(w, x, y, "jax", compile=True, steps_per_execution=8)
                if have("jax") else "jax not installed")
    if impl == "numpy":
        return W.make_numpy(w, x, y) or "no hand-written reference for this workload"
    if impl == "torch":
        return W.make_torch(w, x, y) if have("torch") else "torch not installed"
    if impl == "jax":
        if not have("jax"):
            return "jax not installed"
        return W.make_jax(w, x, y) or "no hand-written JAX step for this workload"
    raise ValueError(f"unknown implementation {impl!r}")


#: GEMM shapes (m, k, n) timed for the roofline: square ones and the MLP's own
GEMM_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (1024, 784, 256), (1024, 256, 784))


def gemm_rate(repeats: int = 6) -> float:
    """The best float32 GEMM FLOP/s seen, over several shapes, NumPy and torch alike."""
    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in GEMM_SHAPES:
        a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        pairs = [(a, b)]
        if have("torch"):
            import torch

            pairs.append((torch.from_numpy(a), torch.from_numpy(b)))
        for left, right in pairs:
            time.sleep(PAUSE)
            left @ right  # warm-up: threads started, pages touched
            for _ in range(repeats):
                t = time.perf_counter()
                left @ right
                best = max(best, 2 * m * k * n / (time.perf_counter() - t))
    return best


#: What a phase is timed by: wall time, or (``--cpu-time``) the process's CPU time, which
#: other processes do not inflate on a busy machine (meaningful with one thread per
#: library: with more, spinning BLAS workers count too).
clock = time.perf_counter


def bench_workload(w: W.Workload, impls: list[str], rounds: int) -> dict:
    x, y = W.data(w)
    n = len(x)
    runners, skipped = {}, {}
    for impl in impls:
        r = make(impl, w, x, y)
        if isinstance(r, str):
            skipped[impl] = r
        else:
            r()  # warm-up: caches, lazy init, JIT
            runners[impl] = r
    rates: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for i in range(rounds):
        rot = order[i % len(order):] + order[:i % len(order)]
        for impl in rot:
            time.sleep(PAUSE)
            t = clock()
            runners[impl]()
            rates[impl].append(n / (clock() - t))
    out = {"workload": w.name, "batch": w.batch, "steps": w.steps, "skipped": skipped,
           "results": {}}
    for impl, rs in rates.items():
        entry = {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}
        for ref, key in (("torch", "vs_torch"), ("numpy", "vs_numpy"), ("jax", "vs_jax")):
            if ref in rates:  # ratios within a round, then their median
                entry[key] = statistics.median(a / b for a, b in zip(rs, rates[ref],
                                                                     strict=True))
        out["results"][impl] = entry
    return out


def memory_child(key: str, impl: str) -> None:
    """Run one implementation in this fresh process; print RSS figures (MiB).

    ``training`` is the peak during two passes over the data minus the resident size
    just before the first (libraries imported, data and model built): what training
    costs. (jax compiles its step while its runner is built, before that point.)
    """
    w = W.WORKLOADS[key]
    x, y = W.data(w)
    run = make(impl, w, x, y)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    run()
    run()
    peak = _status("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "training": max(peak - before, 0.0)}))


def _status(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory(keys: list[str], impls: list[str]) -> dict:
    out = {}
    for key in keys:
        for impl in impls:
            done = subprocess.run([sys.executable, "-m", "bench.run", "--memory-child", key, impl],
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip().startswith("{"):
                out[f"{key}/{impl}"] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def report(results: list[dict], rate: float, mem: dict) -> str:
    lines = [f"float32 GEMM rate: {rate / 1e9:.0f} GFLOP/s (best of NumPy and torch over "
             f"{len(GEMM_SHAPES)} shapes)", ""]
    head = (f"{'implementation':<21}{'samples/s':>12}{'range':>22}{'vs torch':>10}"
            f"{'vs numpy':>10}{'vs jax':>10}{'roofline':>10}")
    for r in results:
        w = next(v for v in W.WORKLOADS.values() if v.name == r["workload"])
        ceiling = rate / (6 * W.macs(w))
        lines += [r["workload"] + f"  ({r['steps']} steps)", head]
        for impl, e in r["results"].items():
            ratio = f"{e['vs_torch']:.2f}x" if "vs_torch" in e else "-"
            vs_np = f"{e['vs_numpy']:.2f}x" if "vs_numpy" in e else "-"
            vs_jax = f"{e['vs_jax']:.2f}x" if "vs_jax" in e else "-"
            lines.append(f"{impl:<21}{e['median']:>12,.0f}{e['min']:>11,.0f} - {e['max']:<8,.0f}"
                         f"{ratio:>10}{vs_np:>10}{vs_jax:>10}{e['median'] / ceiling:>10.1%}")
        for impl, why in r["skipped"].items():
            lines.append(f"{impl:<21}{'skipped: ' + why:>12}")
        lines.append("")
    if mem:
        lines.append("memory (MiB): resident before training, peak while training, and the "
                     "growth (peak - before)")
        base = {k.split("/")[0]: v["training"] for k, v in mem.items() if k.endswith("/torch")}
        for k, v in mem.items():
            ratio = (f"{v['training'] / base[k.split('/')[0]]:.2f}x torch"
                     if base.get(k.split("/")[0]) else "")
            lines.append(f"  {k:<20} before {v['before']:7.1f}  peak {v['peak']:7.1f}  "
                         f"growth {v['training']:7.1f}  {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(W.WORKLOADS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every step count")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--memory", action="store_true", help="peak RSS on (b) and (d)")
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--cpu-time", action="store_true",
                   help="time by the process's CPU time, not wall time (a busy machine; "
                        "use with one thread: OMP_NUM_THREADS=1)")
    args = p.parse_args(argv)
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in keys if k not in W.WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(W.WORKLOADS)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    rate = gemm_rate()
    results = []
    for key in keys:
        w = W.WORKLOADS[key]
        if args.steps_scale != 1.0:
            w = W.Workload(**{**w.__dict__, "steps": max(2, int(w.steps * args.steps_scale))})
            W.WORKLOADS[key] = w
        results.append(bench_workload(w, impls, args.rounds))
        print(report([results[-1]], rate, {}).split("\n", 2)[2], flush=True)
    mem = memory([k for k in ("b128", "d128") if k in keys], impls) if args.memory else {}
    text = report(results, rate, mem)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_flops": rate, "results": results, "memory": mem}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
