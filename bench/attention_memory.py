"""Peak memory of causal self-attention, forward and backward, against sequence length:
xpnet's plain path (the whole ``(N, H, L, L)`` score matrix), its blockwise path (tiles
of keys, online softmax: flash attention's algorithm in standard array calls) and, where
torch is installed, PyTorch's ``scaled_dot_product_attention``.

    python -m bench.attention_memory                       # L = 256 ... 4096
    python -m bench.attention_memory --lengths 512,2048 --heads 4 --width 64

Each measurement runs in a fresh process (so one path's freed memory cannot serve the
next) on one batch of ``(1, L, width)``: one ``MultiHeadAttention`` forward and backward
on NumPy, in float32; for PyTorch, the same ``q, k, v`` shapes through
``scaled_dot_product_attention(is_causal=True)`` and its backward on the CPU. Columns:

- ``traced``: the peak of NumPy's allocations seen by ``tracemalloc`` during the pass
  (NumPy paths only; torch allocates outside Python's allocator);
- ``rss``: the growth of the process's peak resident set (``VmHWM``) over its size just
  before the pass (after one small warm-up pass, so one-off allocations are not
  counted): every allocation, any library;
- ``s``: the pass's seconds (one run; indicative only, on a shared machine).

The ``(N, H, L, L)`` float32 score matrix alone is ``4 H L^2`` bytes; its size is printed
for reference. A path that would need more than ``--limit-gb`` by that estimate (the
plain path holds about four such matrices at once) is skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np

path, length, heads, width, block = sys.argv[1], *map(int, sys.argv[2:6])

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0

rng = np.random.default_rng(0)
if path == "torch":
    import torch
    torch.set_num_threads(1)
    d = width // heads
    def qkv(n):
        return [torch.tensor(rng.standard_normal((1, heads, n, d)), dtype=torch.float32,
                             requires_grad=True) for _ in range(3)]
    warm = torch.nn.functional.scaled_dot_product_attention(*qkv(64), is_causal=True)
    warm.backward(torch.ones_like(warm))  # torch's one-off allocations, before measuring
    q, k, v = qkv(length)
    before = status("VmRSS")
    start = time.perf_counter()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(torch.ones_like(out))
    seconds = time.perf_counter() - start
    traced = None
else:
    import xpnet as xn
    xn.use("numpy")
    xn.seed(0)
    layer = xn.MultiHeadAttention(width, heads, causal=True, block_size=block,
                                  blockwise=(path == "blockwise"))
    warm = rng.standard_normal((1, 64, width)).astype(np.float32)
    layer.forward(warm)
    layer.backward(warm)  # one small pass first, as for torch
    x = rng.standard_normal((1, length, width)).astype(np.float32)
    dy = np.ones_like(x)
    before = status("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    layer.forward(x)
    layer.backward(dy)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps({"rss": status("VmHWM") - before, "traced": traced, "seconds": seconds}))
"""

PATHS = ("plain", "blockwise", "torch")


def measure(path: str, length: int, heads: int, width: int, block: int) -> dict:
    """One pass in a fresh process: its memory and seconds (see the module docstring)."""
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    import os

    out = subprocess.run([sys.executable, "-c", CHILD, path, str(length), str(heads),
                          str(width), str(block)], capture_output=True, text=True,
                         env={**os.environ, **env}, check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--block", type=int, default=128, help="blockwise tile size")
    parser.add_argument("--limit-gb", type=float, default=6.0,
                        help="skip a path whose estimate exceeds this")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
        paths = PATHS
    except ImportError:
        paths = PATHS[:2]
        print("torch is not installed: no scaled_dot_product_attention column")
    lengths = [int(v) for v in args.lengths.split(",")]
    print(f"causal self-attention, batch 1, {args.heads} heads, width {args.width}, "
          f"float32, forward + backward; memory in MiB (tiles of {args.block} keys)")
    header = f"{'L':>6} {'L*L scores':>11}"
    for path in paths:
        header += f" | {path + ' traced':>16} {path + ' rss':>13} {'s':>6}"
    print(header)
    rows = []
    for length in lengths:
        scores = 4 * args.heads * length * length
        line = f"{length:>6} {mib(scores):>11}"
        row = {"length": length, "scores_bytes": scores}
        for path in paths:
            if path == "plain" and 4 * scores > args.limit_gb * 2**30:
                got = {"error": "skipped (--limit-gb)"}
            else:
                started = time.perf_counter()
                got = measure(path, length, args.heads, args.width, args.block)
                got.setdefault("wall", time.perf_counter() - started)
            row[path] = got
            if "error" in got:
                line += f" | {'-':>16} {'-':>13} {'-':>6}"
            else:
                line += (f" | {mib(got['traced']):>16} {mib(got['rss']):>13} "
                         f"{got['seconds']:>6.2f}")
        print(line, flush=True)
        rows.append(row)
    errors = {(r["length"], p): r[p]["error"] for r in rows for p in paths
              if "error" in r.get(p, {})}
    for (length, path), message in errors.items():
        print(f"L={length} {path}: {message}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
