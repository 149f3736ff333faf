"""NumPy with two BLAS threads on a busy machine: the collapse of issue 23, reproduced.

    python -m bench.threads                       # row (f), every setting, 3 rounds
    python -m bench.threads --workload gpt12 --rounds 5

Each setting trains the workload in a fresh process (the BLAS reads its environment
when it loads), some passes over the data, wall time per pass, while a second process
keeps one core busy ("load") or not ("idle"). Settings alternate round by round; the
table gives the median ms per pass and its ratio to the same implementation with one
thread under the same load. Settings: OpenBLAS with 1 and 2 threads; 2 threads with
``OPENBLAS_THREAD_TIMEOUT=4`` (workers sleep after 2^4 cycles instead of spinning for
about 2^28, ~0.1 s, after each call); and PyTorch eager with 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "xpnet-numpy 1 thread": ("xpnet-numpy", {"OPENBLAS_NUM_THREADS": "1"}),
    "xpnet-numpy 2 threads": ("xpnet-numpy", {"OPENBLAS_NUM_THREADS": "2"}),
    "xpnet-numpy 2 threads, no spin": ("xpnet-numpy", {"OPENBLAS_NUM_THREADS": "2",
                                                       "OPENBLAS_THREAD_TIMEOUT": "4"}),
    "torch 1 thread": ("torch", {"OMP_NUM_THREADS": "1"}),
    "torch 2 threads": ("torch", {"OMP_NUM_THREADS": "2"}),
}


def child(workload: str, impl: str, passes: int) -> None:
    from . import run as R
    from . import workloads as W

    w = W.WORKLOADS[workload]
    x, y = W.data(w)
    runner = R.make(impl, w, x, y)
    runner()
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        runner()
        times.append(time.perf_counter() - t)
    print(json.dumps(times))


def measure(workload: str, setting: str, passes: int, load: bool) -> float:
    impl, env = SETTINGS[setting]
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                          "OPENBLAS_THREAD_TIMEOUT")}
    burner = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None)
    try:
        done = subprocess.run([sys.executable, "-m", "bench.threads", "--child", workload, impl,
                               str(passes)], env={**clean, **env}, capture_output=True,
                              text=True, check=True)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return statistics.median(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="tf32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    seen: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for load in (False, True):
            for setting in SETTINGS:
                seen.setdefault((setting, load), []).append(
                    measure(args.workload, setting, args.passes, load))
    print(f"{args.workload}: median ms per pass over the data ({args.rounds} rounds x "
          f"{args.passes} passes); ratio: 1-thread time / this time, same implementation "
          f"and load")
    print(f"{'setting':<34}{'idle ms':>9}{'vs 1':>7}{'load ms':>9}{'vs 1':>7}  rounds (load)")
    for setting, (impl, _) in SETTINGS.items():
        one = next(s for s, (i, env) in SETTINGS.items() if i == impl and "1" in env.values())
        row = f"{setting:<34}"
        for load in (False, True):
            med = statistics.median(seen[(setting, load)])
            base = statistics.median(seen[(one, load)])
            row += f"{med * 1e3:>9.1f}{base / med:>6.2f}x"
        row += "  " + ", ".join(f"{t * 1e3:.0f}" for t in seen[(setting, True)])
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
