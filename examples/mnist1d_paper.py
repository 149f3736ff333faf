"""MNIST-1D's reference models, trained with the paper's settings, on any backend.

    python examples/mnist1d_paper.py                         # all four models, 6000 steps each
    python examples/mnist1d_paper.py --model cnn --backend torch
    python examples/mnist1d_paper.py --steps 1500            # a quicker look
    python examples/mnist1d_paper.py --backend torch --precision bf16-mixed

Data: 4000 training and 1000 test sequences of length 40, generated offline by the
``mnist1d`` package with the paper's defaults. Training: Adam, learning rate 1e-2,
batch 100, 6000 steps (150 epochs). The paper reports test accuracy of 32%
(logistic), 68% (MLP), 94% (CNN) and 91% (GRU: bidirectional, hidden 6, every step's
output flattened into a Linear 480 -> 10).

(The file is not called mnist1d.py: a script of that name would shadow the mnist1d
package it generates the data with.)
"""

from __future__ import annotations

import argparse
import time

import xpnet as xn

PAPER = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}


def build(kind: str) -> xn.Layer:
    if kind == "logistic":
        return xn.models.logistic(40, 10)
    if kind == "mlp":
        return xn.models.residual_mlp(40, 100, 10)
    if kind == "gru":
        return xn.models.mnist1d_gru()
    return xn.models.mnist1d_cnn(40, 25, 10)


def train(kind: str, data, steps: int, seed: int, progress=False, precision="32"
          ) -> tuple[float, float]:
    """Train one model; return (test accuracy, seconds)."""
    x_train, y_train, x_test, y_test = data
    xn.seed(seed)
    model = build(kind)
    batch = 100
    epochs = -(-steps * batch // len(x_train))
    start = time.perf_counter()
    xn.fit(model, x_train, y_train, loss=xn.SoftmaxCrossEntropy(),
           optimizer=xn.Adam(model.parameters(), lr=1e-2), epochs=epochs, batch_size=batch,
           seed=seed, progress=progress, precision=precision)
    seconds = time.perf_counter() - start
    return xn.evaluate(model, x_test, y_test)["accuracy"], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MNIST-1D reference models")
    parser.add_argument("--model", default="all", choices=["all", "logistic", "mlp", "cnn", "gru"])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="32",
                        help="32 (default), bf16-mixed (torch, jax) or fp16-mixed")
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    print(f"backend: {be.name} on {be.device_name}")
    data = xn.datasets.mnist1d()
    kinds = ["logistic", "mlp", "cnn", "gru"] if args.model == "all" else [args.model]
    print(f"{'model':<10}{'test acc':>10}{'paper':>8}{'seconds':>10}")
    for kind in kinds:
        acc, seconds = train(kind, data, args.steps, args.seed, precision=args.precision)
        print(f"{kind:<10}{acc:>10.3f}{PAPER[kind]:>8.2f}{seconds:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
