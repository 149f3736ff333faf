"""Classify handwritten digits with a two-hidden-layer MLP: the script to copy.

    python examples/digits_mlp.py                          # auto backend
    python examples/digits_mlp.py --backend torch
    python examples/digits_mlp.py --backend array_api_strict --device device1
    python examples/digits_mlp.py --backend torch --precision bf16-mixed   # mixed precision

Uses scikit-learn's bundled 8x8 digits (offline): 1347 training and 450 test images.
A stratified tenth of the training images is held out for validation
(``validation_split``); the model trains on the rest with Adam and a cosine
learning-rate decay, the checkpoint keeps the epoch with the best validation accuracy,
and the test images are used once, at the end, to report that checkpoint's accuracy
(97.3% on NumPy with the default seed 0 and 40 epochs).
"""

from __future__ import annotations

import argparse

import xpnet as xn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MLP on the digits data set")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="digits_mlp.xpnet")
    parser.add_argument("--precision", default="32",
                        help="32 (default), bf16-mixed (torch, jax) or fp16-mixed")
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    print(f"backend: {be.name} on {be.device_name}")
    xn.seed(args.seed)
    x_train, y_train, x_test, y_test = xn.datasets.digits()

    model = xn.Sequential(
        xn.Linear(64, 256, init="he"), xn.ReLU(),     # He: keeps the variance through ReLU
        xn.Linear(256, 128, init="he"), xn.ReLU(),
        xn.Linear(128, 10),             # logits; the loss applies softmax
    )
    model.summary()
    batch_size = 16
    steps = args.epochs * -(-round(len(x_train) * 0.9) // batch_size)  # 90% train
    optimizer = xn.Adam(model.parameters(), lr=xn.CosineLR(1e-3, total_steps=steps))
    history = xn.fit(
        model, x_train, y_train,
        loss=xn.SoftmaxCrossEntropy(), optimizer=optimizer,
        epochs=args.epochs, batch_size=batch_size, seed=args.seed,
        validation_split=0.1,   # never the test set: that is for the end
        callbacks=[xn.ModelCheckpoint(args.checkpoint, monitor="val_accuracy")],
        precision=args.precision,
    )
    kept = xn.load_checkpoint(args.checkpoint, backend=be)
    print(f"best checkpoint: epoch {kept.metadata['epoch']} of {len(history.epochs)}, validation "
          f"accuracy {kept.metadata['val_accuracy']:.4f} (training "
          f"{sum(history['time']):.1f} s, precision {args.precision})")
    print(f"test accuracy {xn.evaluate(kept.model, x_test, y_test)['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
