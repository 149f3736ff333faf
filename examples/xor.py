"""Learn XOR with the smallest network that can: 2 inputs, 2 sigmoid hidden units,
1 sigmoid output, quadratic cost, plain gradient descent on the four examples.

    python examples/xor.py                                  # NumPy (or CuPy if a GPU is seen)
    python examples/xor.py --backend array_api_strict --device device1

Each step is the source notes' recipe: forward ``a = sigma(W a + b)`` layer by
layer, ``delta = (a - y) * sigma'(z)`` at the output, backward through every layer,
and ``W -= lr * dC/dW``.
"""

from __future__ import annotations

import argparse

import numpy as np

import xpnet as xn

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([[0], [1], [1], [0]], dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", help="numpy, cupy, torch, jax, "
                        "array_api_strict or auto (default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, device1, ...")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    print(f"backend: {be.name} on {be.device_name}" + (f"  ({be.note})" if be.note else ""))
    xn.seed(args.seed)
    model = xn.Sequential(xn.Linear(2, 2), xn.Sigmoid(), xn.Linear(2, 1), xn.Sigmoid())
    loss = xn.QuadraticCost()
    opt = xn.SGD(model.parameters(), lr=args.lr)
    x, y = be.asarray(X), be.asarray(Y)

    for step in range(1, args.steps + 1):
        opt.zero_grad()
        cost = loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        if step % 1000 == 0:
            print(f"step {step:5d}  cost {float(xn.to_numpy(cost)):.5f}")

    out = xn.to_numpy(model(x))[:, 0]
    print("\n x1 x2 | target | output")
    for (a, b), t, o in zip(X, Y[:, 0], out, strict=True):
        print(f"  {a:.0f}  {b:.0f} |   {t:.0f}    | {o:.3f}")
    solved = bool(np.all((out > 0.5) == (Y[:, 0] > 0.5)))
    print("solved" if solved else "not solved")
    return 0 if solved else 1


if __name__ == "__main__":
    raise SystemExit(main())
