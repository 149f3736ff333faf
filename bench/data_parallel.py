"""Data-parallel step time: 2 ranks against 1, and the gradient sum in one buffer against
buckets, on the bench's MLPs, with the bytes each step reduces.

    mpiexec -n 1 python -m bench.data_parallel          # the one-rank baseline
    mpiexec -n 2 python -m bench.data_parallel          # two ranks
    mpiexec -n 2 python -m bench.data_parallel --backend torch --buffers one,25

``--buffers``: bucket sizes in MiB to compare (``one``: every gradient in one buffer,
as before buckets). Each rank holds the whole model and takes half of every global
batch; the table (rank 0) gives the median ms per step over ``--rounds`` epochs and
the bytes summed over the ranks per step. Runs under torchrun as well (gloo).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from . import workloads as W


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="a128,b128,b1024")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--buffers", default="one,25")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import xpnet as xn
    from xpnet import distributed
    from xpnet.train import transforms

    comm = distributed.detect()
    rows = []
    for name in args.workloads.split(","):
        w = W.WORKLOADS[name]
        x, y = W.data(w)
        for buffer in args.buffers.split(","):
            transforms.BUCKET_BYTES = 2**62 if buffer == "one" else int(float(buffer) * 2**20)
            with xn.use(args.backend) as be:
                model = W.xpnet_model(w)
                opt = xn.SGD(model.parameters(), lr=w.lr)
                loss = xn.QuadraticCost() if w.loss == "quadratic" else xn.SoftmaxCrossEntropy()
                times = []
                for _ in range(args.rounds + 1):  # the first round warms up
                    start = time.perf_counter()
                    xn.fit(model, x, y, loss=loss, optimizer=opt, epochs=1, batch_size=w.batch,
                           shuffle=False, progress=False, metrics=(), distributed=comm)
                    be.synchronize()
                    times.append((time.perf_counter() - start) / w.steps)
            grads = sum(int(np.prod(p.shape)) for p in model.parameters()) * 4
            rows.append((name, buffer, statistics.median(times[1:]) * 1e3, grads))
    if comm.rank == 0:
        print(f"{comm.size} rank(s), {comm.name}, {args.backend}")
        print(f"{'workload':10} {'buffers':>8} {'ms/step':>9} {'bytes/step':>12}")
        for name, buffer, ms, grads in rows:
            label = "one" if buffer == "one" else f"{buffer} MiB"
            print(f"{name:10} {label:>8} {ms:9.3f} {grads if comm.size > 1 else 0:12,}")


if __name__ == "__main__":
    main()
