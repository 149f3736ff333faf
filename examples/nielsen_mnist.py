"""The source notes' network on MNIST: 784-30-10, sigmoid units, quadratic cost,
mini-batch SGD with batch size 10 and learning rate 3.0 (Nielsen, chapter 1).

    python examples/nielsen_mnist.py --data DIR [--backend cupy] [--epochs 30]

DIR holds the four MNIST IDX files (gzipped or not):
    train-images-idx3-ubyte  train-labels-idx1-ubyte
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
xpnet never downloads them: fetch them from the MNIST page or a mirror you trust
(e.g. the copies distributed with torchvision or Keras) and point --data at the folder.
Nielsen reports about 95% test accuracy after 30 epochs. Without --data it runs the
identical recipe on the bundled 8x8 digits instead (about 87% after 30 epochs).
"""

from __future__ import annotations

import argparse

import xpnet as xn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Nielsen's 784-30-10 sigmoid network")
    parser.add_argument("--data", default=None, help="folder with the MNIST IDX files")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    print(f"backend: {be.name} on {be.device_name}")
    xn.seed(args.seed)
    if args.data:
        x_train, y_train, x_test, y_test = xn.datasets.mnist(args.data)
    else:
        print("no --data: using the bundled 8x8 digits instead of MNIST")
        x_train, y_train, x_test, y_test = xn.datasets.digits()
    n_in = x_train.shape[1]

    # a = sigma(W a + b) twice; C = 1/2n sum ||a - y||^2 with one-hot y
    model = xn.Sequential(xn.Linear(n_in, args.hidden, init="normal"), xn.Sigmoid(),
                          xn.Linear(args.hidden, 10, init="normal"), xn.Sigmoid())
    # Nielsen's eta = 3.0 multiplies the gradient of the cost averaged over the batch.
    optimizer = xn.SGD(model.parameters(), lr=args.lr)
    xn.fit(model, x_train, y_train, loss=xn.QuadraticCost(), optimizer=optimizer,
           epochs=args.epochs, batch_size=10, validation_data=(x_test, y_test),
           seed=args.seed)
    acc = xn.evaluate(model, x_test, y_test)["accuracy"]
    print(f"test accuracy {acc:.4f} ({round(acc * len(y_test))} / {len(y_test)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
