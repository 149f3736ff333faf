"""Training from a 1 GB ``np.memmap`` (streamed) against the same data in memory.

    python -m bench.memmap                     # 1 GB, NumPy backend, 3 rounds
    python -m bench.memmap --gb 0.25 --backend torch --rounds 2 --json memmap.json

Writes float32 inputs of shape (n, 784), about ``--gb`` GiB, to a file in a temporary
directory (``--dir`` to choose where; deleted at the end), and reads it once so it
sits in the page cache. Then trains workload (b)'s MLP (784-256-256-10 ReLU,
cross-entropy, SGD, batch 128 by default) one shuffled epoch per call, alternating:

- ``memmap``: ``x`` and ``y`` are ``np.memmap`` arrays: a reader thread gathers each
  batch's rows, converts and uploads them, two batches ahead;
- ``in memory``: the same data loaded with ``np.fromfile`` beforehand: the one-upload
  path (one gather on the device per epoch).

Each row gives the median samples/s over the rounds with its range (and the median of
the per-round ratios), and, measured in a fresh process per path, the growth of
anonymous memory (``RssAnon``: its peak, sampled every 2 ms during one epoch, minus its
value just before): what training holds besides the data (the in-memory path's data,
1 GiB, is loaded before and not counted; its per-epoch gather is).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WIDTH, CLASSES = 784, 10
PAUSE = 0.3  # seconds between timed phases (OpenBLAS threads spin ~0.1 s after work)


def rss_anon() -> int:
    """Resident anonymous memory of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon (Linux only)")


def write_data(path: Path, rows: int, seed: int = 0) -> None:
    """Random float32 rows written in 64 MiB chunks (never the whole in memory) to
    ``path``, and int64 labels to ``path`` + ``.labels``."""
    rng = np.random.default_rng(seed)
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, WIDTH))
    step = max(1, (64 << 20) // (4 * WIDTH))
    for s in range(0, rows, step):
        e = min(s + step, rows)
        out[s:e] = rng.random((e - s, WIDTH), dtype=np.float32)
    out.flush()
    del out
    rng.integers(0, CLASSES, size=rows).tofile(f"{path}.labels")


def load(path: Path | str, rows: int, streamed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels: memmaps (streamed), or both read into memory."""
    if streamed:
        return (np.memmap(path, dtype=np.float32, mode="r", shape=(rows, WIDTH)),
                np.memmap(f"{path}.labels", dtype=np.int64, mode="r", shape=(rows,)))
    return (np.fromfile(path, dtype=np.float32).reshape(rows, WIDTH),
            np.fromfile(f"{path}.labels", dtype=np.int64))


def warm_page_cache(x: np.memmap) -> None:
    """Touch every page once, so the timed epochs read from memory, not the disk."""
    step = max(1, (64 << 20) // (4 * WIDTH))
    for s in range(0, len(x), step):
        x[s:s + step].sum()


def timed_epoch(fit, model, opt, loss, x, y, batch: int) -> tuple[float, float]:
    """(samples/s, anonymous-memory growth in MiB) of one shuffled epoch."""
    before, peak, done = rss_anon(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        fit(model, x, y, loss=loss, optimizer=opt, batch_size=batch, progress=False, seed=0,
            metrics=())
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        watcher.join()
    return len(y) / elapsed, (max(peak[0], rss_anon()) - before) / 2**20


def memory_child(path: str, rows: int, mode: str, batch: int, backend: str,
                 device: str | None) -> None:
    """In this fresh process: one epoch of ``mode`` ("memmap" or "memory") after a short
    warm-up; prints the anonymous-memory growth as JSON."""
    import xpnet as xn

    xn.use(backend, device=device)
    x, y = load(path, rows, streamed=mode == "memmap")
    xn.seed(0)
    model = xn.models.mlp(WIDTH, [256, 256], CLASSES, "relu")
    opt, loss = xn.SGD(model, lr=0.01), xn.SoftmaxCrossEntropy()
    xn.fit(model, x[:20 * batch], y[:20 * batch], loss=loss, optimizer=opt, batch_size=batch,
           progress=False, seed=0)
    rate, growth = timed_epoch(xn.fit, model, opt, loss, x, y, batch)
    print(json.dumps({"growth_mib": growth, "samples_per_sec": rate}))


def memory(path: Path, rows: int, mode: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "bench.memmap", "--memory-child", str(path), str(rows), mode,
           "--batch", str(args.batch), "--backend", args.backend]
    if args.device:
        cmd += ["--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_mib"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memmap",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0, help="size of the input file, GiB")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--device", default=None)
    p.add_argument("--dir", default=None, help="where the temporary file goes")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        path, rows, mode = args.memory_child
        memory_child(path, int(rows), mode, args.batch, args.backend, args.device)
        return 0

    import xpnet as xn

    be = xn.use(args.backend, device=args.device)
    rows = int(args.gb * 2**30) // (4 * WIDTH)
    folder = Path(tempfile.mkdtemp(prefix="xpnet-memmap-", dir=args.dir))
    try:
        path = folder / "x.f32"
        write_data(path, rows)
        x_map, y_map = load(path, rows, streamed=True)
        warm_page_cache(x_map)
        x_mem, y_mem = load(path, rows, streamed=False)
        print(f"{rows:,} rows x {WIDTH} float32 = {path.stat().st_size / 2**30:.2f} GiB in "
              f"{folder} (page cache warm); {be}, batch {args.batch}", flush=True)
        xn.seed(0)
        model = xn.models.mlp(WIDTH, [256, 256], CLASSES, "relu")
        opt, loss = xn.SGD(model, lr=0.01), xn.SoftmaxCrossEntropy()
        paths = {"memmap": (x_map, y_map), "in memory": (x_mem, y_mem)}
        for x, y in paths.values():  # warm-up: first calls, thread start, allocations
            xn.fit(model, x[:20 * args.batch], y[:20 * args.batch], loss=loss,
                   optimizer=opt, batch_size=args.batch, progress=False, seed=0)
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for r in range(args.rounds):
            for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                time.sleep(PAUSE)
                rate, _ = timed_epoch(xn.fit, model, opt, loss, *paths[name], args.batch)
                rates[name].append(rate)
                print(f"  round {r + 1}: {name:<10} {rate:>10,.0f} samples/s", flush=True)
        del x_mem, y_mem, paths
        grown = {name: memory(path, rows, mode, args)
                 for name, mode in (("memmap", "memmap"), ("in memory", "memory"))}
        out = {"rows": rows, "bytes": path.stat().st_size, "backend": str(be),
               "batch": args.batch, "results": {}}
        print(f"\n{'path':<12}{'samples/s':>12}{'range':>24}{'memory growth (MiB)':>22}")
        for name in rates:
            med = statistics.median(rates[name])
            out["results"][name] = {"median": med, "min": min(rates[name]),
                                    "max": max(rates[name]), "growth_mib": grown[name]}
            print(f"{name:<12}{med:>12,.0f}{min(rates[name]):>12,.0f} - "
                  f"{max(rates[name]):<10,.0f}{grown[name]:>20,.1f}")
        ratio = statistics.median(a / b for a, b in zip(rates["memmap"], rates["in memory"]))
        out["memmap_vs_memory"] = ratio
        print(f"memmap / in memory: {ratio:.2f}x (median of the per-round ratios)")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
