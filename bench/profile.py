"""Where a training step's time goes, and the floor it is measured against.

    OMP_NUM_THREADS=1 python -m bench.profile --workload gpt12 --backend numpy
    OMP_NUM_THREADS=1 python -m bench.profile --workload tf32 --backend torch --steps 30

Profile: ``fit`` trains the bench's workload (bench/workloads.py) with a timer around
every layer's forward and backward and around the adapter's primitives (``linear``,
``gelu``, the Adam update...), the loss, gradient clipping and the optimizer step. Each
timer records its own (exclusive) time: a TransformerBlock's own time is its residual
adds, a MultiHeadAttention's own time is its attention core (head split and merge,
scores, softmax, the batched products, dropout masks) without its projections, which
count under ``linear`` and the weight-gradient GEMMs of its backward. What no timer
covers (the fit loop, zeroing gradients, the metric sums) is "other". All in one
process, timed by the thread's CPU time (with one BLAS thread, as the commands above
set, every step's work runs on it), so other processes on the machine do not inflate
it; ``--wall`` times the wall clock instead (several threads).

Floor: the same step's work at this machine's measured rates: every GEMM of the step
timed alone at its own shape (best of several), the attention's batched products at
theirs, and the element-wise passes as the bytes they must move (each array read or
written once per pass: the minimum, not what any implementation does) at the copy
bandwidth measured on arrays of the same size.
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from typing import Any

import numpy as np

from . import workloads as W

#: The clock: this thread's CPU time, which other processes on the machine do not
#: inflate (with one BLAS thread all of a step's work runs on this thread);
#: ``--wall`` for wall time (several threads).
clock = time.thread_time


class Timers:
    """Exclusive time per label (:data:`clock`), for nested calls in one thread."""

    def __init__(self) -> None:
        self.own: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._stack: list[list[Any]] = []  # [label, start, time of children]
        self.sync = lambda: None

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.sync()
            self._stack.append([label, clock(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                name, start, children = self._stack.pop()
                spent = clock() - start
                self.own[name] += spent - children
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][2] += spent

        setattr(owner, attr, timed)


def instrument(model: Any, loss: Any, opt: Any, be: Any, timers: Timers) -> None:
    import xpnet.train.transforms as transforms
    from xpnet.backends import ops

    for layer in model.layers():
        kind = type(layer).__name__
        if kind in ("Sequential",):
            continue
        for attr in ("forward", "backward", "backward_params"):
            if hasattr(layer, attr):
                timers.wrap(layer, attr, f"{kind}.{attr.split('_')[0]}")
    o = ops(be.xp)
    for attr in ("linear", "gelu", "gelu_grad", "adam_update_", "sgd_update_", "rows_add",
                 "softmax_xent", "softmax_xent_grad", "sum_axes"):
        timers.wrap(o, attr, f"ops.{attr}")
    timers.wrap(loss, "forward", "loss.forward")
    timers.wrap(loss, "backward", "loss.backward")
    timers.wrap(opt, "step", "optimizer.step (besides ops)")
    timers.wrap(transforms, "clip_grad_norm", "clip_grad_norm")


def profile(w: W.Workload, backend: str, steps: int, repeats: int) -> tuple[dict, float]:
    """``(own seconds per step by label, total seconds per step)``, the median pass."""
    import xpnet as xn

    x, y = W.data(W.Workload(**{**w.__dict__, "steps": steps}))
    be = xn.use(backend)
    model = W.xpnet_model(w)
    for p, v in zip(model.parameters(), W.initial_weights(w), strict=True):
        p.value = be.asarray(v)
    loss = xn.SoftmaxCrossEntropy()
    opt = W.xpnet_optimizer(w, model)
    timers = Timers()
    if backend != "numpy":
        timers.sync = lambda: be.synchronize()
    instrument(model, loss, opt, be, timers)
    xd, yd = be.asarray(x), be.asarray(y)
    clip = W.GPT["clip"] if w.kind == "gpt" else None
    passes = []
    for r in range(repeats + 1):
        timers.own.clear()
        start = clock()
        xn.fit(model, xd, yd, loss=loss, optimizer=opt, epochs=1, batch_size=w.batch,
               shuffle=False, progress=False, metrics=(), clip_grad_norm=clip)
        be.synchronize()
        total = clock() - start
        if r:  # the first pass warms up
            passes.append((total, dict(timers.own)))
    total, own = sorted(passes, key=lambda p: p[0])[len(passes) // 2]
    own = {k: v / steps for k, v in own.items()}
    own["other (fit loop, zero_grad, ...)"] = total / steps - sum(own.values())
    return own, total / steps


# -- the floor --------------------------------------------------------------------------
def best_time(fn, repeats: int = 30) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def gemms(w: W.Workload) -> list[tuple[str, int, tuple[int, int, int]]]:
    """``(what, count per step, (m, k, n))`` of every plain GEMM of a training step:
    forward ``X W^T``, backward ``dY^T X`` and ``dY W`` (no input gradient for the first
    layer's input, as in every implementation)."""
    if w.kind == "gpt":
        rows, e, v = w.batch * w.input_shape[0], W.GPT["width"], w.classes
        blocks = W.GPT["layers"]
    else:
        rows, e = w.batch * w.input_shape[0], w.input_shape[1]
        blocks = 1
    out = []
    for what, n_in, n_out in (("in-projection", e, 3 * e), ("out-projection", e, e),
                              ("linear1", e, 4 * e), ("linear2", 4 * e, e)):
        out += [(f"{what} forward", blocks, (rows, n_in, n_out)),
                (f"{what} weight grad", blocks, (n_out, rows, n_in)),
                (f"{what} input grad", blocks, (rows, n_out, n_in))]
    if w.kind == "gpt":
        out += [("tied head forward", 1, (rows, e, v)), ("tied head weight grad", 1, (v, rows, e)),
                ("tied head input grad", 1, (rows, v, e))]
    else:
        flat = w.input_shape[0] * e
        out += [("head forward", 1, (w.batch, flat, w.classes)),
                ("head weight grad", 1, (w.classes, w.batch, flat)),
                ("head input grad", 1, (w.batch, w.classes, flat))]
    return out


def floor(w: W.Workload, backend: str) -> list[tuple[str, float, str]]:
    """``(part, seconds per step, how)`` of the step's floor on ``backend``'s arrays."""
    if backend == "torch":
        import torch

        def arr(*shape):
            return torch.rand(*shape)
    else:
        rng = np.random.default_rng(0)

        def arr(*shape):
            return rng.random(shape, dtype=np.float32)

    rows = []
    gemm_total, flops = 0.0, 0
    for _what, count, (m, k, n) in gemms(w):
        a, b = arr(m, k), arr(k, n)
        gemm_total += count * best_time(lambda a=a, b=b: a @ b)
        flops += count * 2 * m * k * n
    rows.append(("GEMMs (projections, MLP, head)", gemm_total,
                 f"{flops / 1e6:.0f} MFLOP at {flops / gemm_total / 1e9:.0f} GFLOP/s "
                 "(each shape timed alone)"))
    length = w.input_shape[0]
    e = W.GPT["width"] if w.kind == "gpt" else w.input_shape[1]
    heads, blocks = 4, (W.GPT["layers"] if w.kind == "gpt" else 1)
    d = e // heads
    nh = w.batch * heads
    q, kt = arr(nh, length, d), arr(nh, d, length)
    p, v = arr(nh, length, length), arr(nh, length, d)
    # forward S = Q K^T, O = P V; backward dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    att = blocks * (2 * best_time(lambda: q @ kt) + 4 * best_time(lambda: p @ v))
    att_flops = blocks * 6 * 2 * nh * length * length * d
    rows.append(("attention's batched products", att,
                 f"{att_flops / 1e6:.0f} MFLOP at {att_flops / att / 1e9:.0f} GFLOP/s "
                 f"({nh} products of {length}x{d}x{length})"))
    tokens = w.batch * length
    big, small = arr(tokens * 4 * e), arr(tokens * 4 * e)
    bandwidth = 2 * big.nbytes / best_time(lambda: big.__iadd__(small))  # read 2, write 1: 3
    bandwidth *= 1.5
    f32 = 4
    # minimum bytes per pass: read inputs once, write outputs once
    act, hidden, scores = tokens * e * f32, tokens * 4 * e * f32, nh * length * length * f32
    passes = {
        "softmax (fwd: read S, write P; bwd: read dP, P, write dS)": blocks * 5 * scores,
        "GELU (fwd: read h, write y, keep Phi; bwd: read dy, h, Phi, write dh)":
            blocks * 7 * hidden,
        "LayerNorm x2 (fwd: read x, write y; bwd: read dy, x, write dx)": blocks * 2 * 5 * act,
        "residual adds, head split/merge copies": blocks * (4 * 3 * act + 2 * 2 * act),
    }
    if w.kind == "gpt":
        n_params = sum(int(np.prod(v.shape)) for v in W.initial_state(w).values())
        drop = (1 + 2 * blocks) * act + blocks * scores  # masks: written once, read twice
        passes["dropout masks (write, apply fwd and bwd)"] = 3 * drop
        passes["AdamW (read w, g, m, v; write w, m, v)"] = 7 * n_params * f32
        passes["clip (read g twice, write g)"] = 3 * n_params * f32
        passes["embeddings, loss (logits fwd and bwd)"] = 4 * tokens * w.classes * f32
    for what, nbytes in passes.items():
        rows.append((what, nbytes / bandwidth, f"{nbytes / 1e6:.1f} MB at "
                                               f"{bandwidth / 1e9:.0f} GB/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="gpt12", choices=list(W.WORKLOADS))
    p.add_argument("--backend", default="numpy")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wall", action="store_true",
                   help="wall time instead of this thread's CPU time (several threads)")
    args = p.parse_args(argv)
    global clock
    if args.wall:
        clock = time.perf_counter
    w = W.WORKLOADS[args.workload]
    own, total = profile(w, args.backend, args.steps, args.repeats)
    print(f"{w.name} on xpnet-{args.backend}: {total * 1e3:.2f} ms per step")
    print(f"{'part (exclusive time)':<44}{'ms/step':>9}{'share':>8}")
    for k, v in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"{k:<44}{v * 1e3:>9.2f}{v / total:>8.1%}")
    rows = floor(w, args.backend)
    least = sum(r[1] for r in rows)
    print(f"\nfloor on {args.backend}'s arrays: {least * 1e3:.2f} ms per step "
          f"(the step runs at {least / total:.0%} of it)")
    for what, t, how in rows:
        print(f"  {what:<70}{t * 1e3:>8.2f} ms   {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
