"""Mixed precision against float32: test accuracy and training speed, side by side.

    python examples/mixed_precision.py --backend torch                 # 32, bf16-mixed, fp16-mixed
    python examples/mixed_precision.py --backend numpy --precisions 32,fp16-mixed
    python examples/mixed_precision.py --backend torch --device cuda   # where it pays off
    python examples/mixed_precision.py --backend torch --threads 1     # steadier CPU timings

Trains the same seeded models once per precision on two small tasks: scikit-learn's
8x8 digits (an MLP 64-256-128-10, Adam, batch 16) and MNIST-1D (the paper's CNN, Adam
1e-2, batch 100). ``fit(..., precision=...)`` keeps float32 master weights and runs the
forward and backward passes in bfloat16 or float16 (fp16 with dynamic loss scaling);
evaluation runs in float32. It prints each run's test accuracy, its difference from
float32 in points, and the speed ratio (float32 time / mixed time: above 1 is faster).

On a CPU, mixed precision is usually *slower*: NumPy has no float16 matrix kernels
(its float16 matmul runs element by element), and PyTorch's CPU kernels gain little
from 16-bit types while the casts cost time. The point of the CPU runs is that the
accuracy holds; the speed comes on GPUs with tensor cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import xpnet as xn


def digits_model() -> xn.Layer:
    return xn.Sequential(xn.Linear(64, 256, init="he"), xn.ReLU(),
                         xn.Linear(256, 128, init="he"), xn.ReLU(), xn.Linear(128, 10))


def mnist1d_model() -> xn.Layer:
    return xn.models.mnist1d_cnn(40, 25, 10)


def run(task: str, data, precision: str, epochs: int, seed: int) -> tuple[float, float]:
    """Train one model; (test accuracy, median seconds per epoch)."""
    x_train, y_train, x_test, y_test = data
    xn.seed(seed)
    if task == "digits":
        model, batch, lr = digits_model(), 16, 1e-3
    else:
        model, batch, lr = mnist1d_model(), 100, 1e-2
    history = xn.fit(model, x_train, y_train, loss=xn.SoftmaxCrossEntropy(),
                     optimizer=xn.Adam(model.parameters(), lr=lr), epochs=epochs,
                     batch_size=batch, seed=seed, progress=False, precision=precision)
    return xn.evaluate(model, x_test, y_test)["accuracy"], statistics.median(history["time"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mixed precision against float32")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precisions", default="32,bf16-mixed,fp16-mixed",
                        help="comma-separated, float32 ('32') first as the reference")
    parser.add_argument("--tasks", default="digits,mnist1d")
    parser.add_argument("--digits-epochs", type=int, default=10)
    parser.add_argument("--mnist1d-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the library's own pool (1 gives steadier "
                             "timings on a shared machine)")
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    if args.threads:
        xn.backends.limit_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if precisions[0] != "32":
        precisions.insert(0, "32")
    print(f"backend: {be.name} on {be.device_name}")
    print(f"{'task':<9}{'precision':<12}{'test acc':>9}{'vs 32':>8}{'s/epoch':>9}"
          f"{'speed vs 32':>13}")
    for task in args.tasks.split(","):
        data = xn.datasets.digits() if task == "digits" else xn.datasets.mnist1d()
        epochs = args.digits_epochs if task == "digits" else args.mnist1d_epochs
        base = None
        for precision in precisions:
            start = time.perf_counter()
            acc, per_epoch = run(task, data, precision, epochs, args.seed)
            base = base or (acc, per_epoch)
            print(f"{task:<9}{precision:<12}{acc:>9.4f}{100 * (acc - base[0]):>+8.2f}"
                  f"{per_epoch:>9.3f}{base[1] / per_epoch:>12.2f}x"
                  f"   ({time.perf_counter() - start:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
