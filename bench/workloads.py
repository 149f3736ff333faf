"""The benchmark workloads and, for each, one training loop per implementation.

Every implementation trains the same network on the same synthetic data from the
same initial weights, for the same number of mini-batch steps, and does the same
work per step: forward, loss, backward down to the first layer's weights (no input
gradient, as autograd does), an SGD update, and a running loss sum kept on the
device. Each ``make_*`` returns ``run()``, which trains one pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str            # "mlp", "cnn1d", "cnn2d", "gru" or "transformer"
    batch: int
    steps: int
    input_shape: tuple[int, ...]
    classes: int
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    loss: str = "cross_entropy"
    lr: float = 0.01


WORKLOADS = {
    "a10": Workload("(a) 784-30-10 sigmoid/quadratic, batch 10", "mlp", 10, 600, (784,), 10,
                    (30,), "sigmoid", "quadratic", 3.0),
    "a128": Workload("(a) 784-30-10 sigmoid/quadratic, batch 128", "mlp", 128, 200, (784,), 10,
                     (30,), "sigmoid", "quadratic", 3.0),
    "b128": Workload("(b) 784-256-256-10 ReLU/CE, batch 128", "mlp", 128, 100, (784,), 10,
                     (256, 256)),
    "b1024": Workload("(b) 784-256-256-10 ReLU/CE, batch 1024", "mlp", 1024, 30, (784,), 10,
                      (256, 256)),
    "c100": Workload("(c) MNIST-1D CNN, batch 100", "cnn1d", 100, 100, (40,), 10),
    "d128": Workload("(d) Conv2D net on 28x28, batch 128", "cnn2d", 128, 20, (1, 28, 28), 10),
    "gru100": Workload("(e) MNIST-1D bidirectional GRU (hidden 6), batch 100", "gru", 100, 40,
                       (40,), 10),
    "tf32": Workload("(f) transformer block (L 64, E 128, 4 heads), batch 32", "transformer",
                     32, 10, (64, 128), 10),
}


def macs(w: Workload) -> int:
    """Multiply-adds of one example's forward pass (the GEMM work per example)."""
    if w.kind == "mlp":
        sizes = [int(np.prod(w.input_shape)), *w.hidden, w.classes]
        return sum(a * b for a, b in zip(sizes, sizes[1:]))
    if w.kind == "cnn1d":  # 40 -> 19 -> 10 -> 5 positions, 25 channels
        return 19 * 25 * 5 + 10 * 25 * 25 * 3 + 5 * 25 * 25 * 3 + 125 * 10
    if w.kind == "gru":  # 2 directions x 40 steps x 3 gates x (input + hidden), then 480 -> 10
        return 2 * 40 * 3 * 6 * (1 + 6) + 480 * 10
    if w.kind == "transformer":  # projections and MLP per token, scores and mixing, head
        length, width = w.input_shape
        return (length * 12 * width * width + 2 * length * length * width
                + length * width * w.classes)
    # cnn2d: 1->8 3x3 on 28x28, pool, 8->16 3x3 on 14x14, pool, 784 -> 10
    return 28 * 28 * 8 * 9 + 14 * 14 * 16 * 8 * 9 + 784 * 10


def data(w: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = w.batch * w.steps
    x = rng.random((n, *w.input_shape), dtype=np.float32)
    y = rng.integers(0, w.classes, size=n)
    return x, y


# -- xpnet ------------------------------------------------------------------------------
def xpnet_model(w: Workload):
    import xpnet as xn

    if w.kind == "mlp":
        model = xn.models.mlp(w.input_shape[0], list(w.hidden), w.classes, w.activation)
        return xn.Sequential(model, xn.Sigmoid()) if w.loss == "quadratic" else model
    if w.kind == "cnn1d":
        return xn.models.mnist1d_cnn(w.input_shape[0], 25, w.classes)
    if w.kind == "gru":
        return xn.models.mnist1d_gru()
    if w.kind == "transformer":
        length, width = w.input_shape
        return xn.Sequential(xn.TransformerBlock(width, 4), xn.Flatten(),
                             xn.Linear(length * width, w.classes))
    return xn.Sequential(
        xn.Conv2D(1, 8, 3, padding=1), xn.ReLU(), xn.MaxPool2D(2),
        xn.Conv2D(8, 16, 3, padding=1), xn.ReLU(), xn.MaxPool2D(2),
        xn.Flatten(), xn.Linear(784, w.classes))


def initial_weights(w: Workload) -> list[np.ndarray]:
    """The initial parameters every implementation starts from (xpnet's, seed 0)."""
    return [v for name, v in initial_state(w).items()]


def initial_state(w: Workload) -> dict[str, np.ndarray]:
    """``initial_weights`` by xpnet's (PyTorch's) parameter names."""
    import xpnet as xn

    with xn.use("numpy"):
        xn.seed(0)
        return {name: p.value.copy() for name, p in xpnet_model(w).named_parameters()}


def make_xpnet(w: Workload, x: np.ndarray, y: np.ndarray, backend: str,
               device: str | None = None, compile: bool = False,
               steps_per_execution: int = 1) -> Callable[[], Any]:
    import xpnet as xn

    be = xn.use(backend, device=device)
    model = xpnet_model(w)
    for p, v in zip(model.parameters(), initial_weights(w), strict=True):
        p.value = be.asarray(v)
    loss = xn.QuadraticCost() if w.loss == "quadratic" else xn.SoftmaxCrossEntropy()
    opt = xn.SGD(model.parameters(), lr=w.lr)
    xd, yd = be.asarray(x), be.asarray(y)

    def run():
        xn.fit(model, xd, yd, loss=loss, optimizer=opt, epochs=1, batch_size=w.batch,
               shuffle=False, progress=False, metrics=(), compile=compile,
               steps_per_execution=steps_per_execution)
        be.synchronize()  # JAX returns before its queued steps have run
        return model

    return run


# -- hand-written NumPy ------------------------------------------------------------------
def make_numpy(w: Workload, x: np.ndarray, y: np.ndarray) -> Callable[[], Any] | None:
    """The source notes' equations in plain NumPy (MLP workloads only)."""
    if w.kind != "mlp":
        return None
    params = initial_weights(w)
    Ws, bs = params[0::2], params[1::2]
    onehot = np.eye(w.classes, dtype=np.float32)[y]
    sigmoid = w.activation == "sigmoid"

    def run():
        total = np.float32(0)
        for s in range(0, len(x), w.batch):
            a = x[s:s + w.batch]
            acts = [a]
            for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
                z = a @ W.T + b
                last = i == len(Ws) - 1
                if last and w.loss == "cross_entropy":
                    a = z
                elif sigmoid or last:
                    a = 1.0 / (1.0 + np.exp(-z))
                else:
                    a = np.maximum(z, 0)
                acts.append(a)
            t = onehot[s:s + w.batch]
            n = len(t)
            if w.loss == "quadratic":
                total += np.sum((a - t) ** 2) / (2 * n)
                delta = (a - t) / n * a * (1 - a)
            else:
                e = np.exp(a - a.max(axis=1, keepdims=True))
                p = e / e.sum(axis=1, keepdims=True)
                total += -np.sum(t * np.log(p)) / n
                delta = (p - t) / n
            for i in range(len(Ws) - 1, -1, -1):
                gW, gb = delta.T @ acts[i], delta.sum(axis=0)
                if i > 0:
                    h = acts[i]
                    d = delta @ Ws[i]
                    delta = d * (h * (1 - h)) if sigmoid else d * (h > 0)
                Ws[i] -= w.lr * gW
                bs[i] -= w.lr * gb
        return total

    return run


# -- PyTorch eager ---------------------------------------------------------------------------
def torch_model(w: Workload):
    import torch.nn as nn

    class SequenceGRU(nn.GRU):
        """nn.GRU giving only its output sequence, so it fits in nn.Sequential."""

        def forward(self, x):
            return super().forward(x)[0]

    if w.kind == "mlp":
        act = nn.Sigmoid if w.activation == "sigmoid" else nn.ReLU
        layers, width = [], w.input_shape[0]
        for h in w.hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, w.classes))
        if w.loss == "quadratic":
            layers.append(nn.Sigmoid())
        return nn.Sequential(*layers)
    if w.kind == "cnn1d":
        return nn.Sequential(nn.Unflatten(1, (1, w.input_shape[0])),
                             nn.Conv1d(1, 25, 5, 2, 1), nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1),
                             nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(125, w.classes))
    if w.kind == "gru":
        return nn.Sequential(nn.Unflatten(1, (w.input_shape[0], 1)),
                             SequenceGRU(1, 6, batch_first=True, bidirectional=True),
                             nn.Flatten(), nn.Linear(w.input_shape[0] * 12, w.classes))
    if w.kind == "transformer":
        length, width = w.input_shape
        block = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        return nn.Sequential(block, nn.Flatten(), nn.Linear(length * width, w.classes))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(784, w.classes))


def make_torch(w: Workload, x: np.ndarray, y: np.ndarray,
               device: str = "cpu") -> Callable[[], Any]:
    import torch

    model = torch_model(w).to(device)
    if w.kind in ("gru", "transformer"):  # the same names as xpnet's (PyTorch's layouts)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in initial_state(w).items()})
    else:
        with torch.no_grad():
            for p, v in zip(model.parameters(), initial_weights(w), strict=True):
                p.copy_(torch.from_numpy(v))
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    onehot = torch.nn.functional.one_hot(yt, w.classes).float()
    opt = torch.optim.SGD(model.parameters(), lr=w.lr)

    def run():
        total = torch.zeros((), device=device)
        for s in range(0, len(xt), w.batch):
            xb = xt[s:s + w.batch]
            out = model(xb)
            if w.loss == "quadratic":
                loss = ((out - onehot[s:s + w.batch]) ** 2).sum() / (2 * len(xb))
            else:
                loss = torch.nn.functional.cross_entropy(out, yt[s:s + w.batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        return total

    return run


# -- JAX, one jitted step ---------------------------------------------------------------------
def make_jax(w: Workload, x: np.ndarray, y: np.ndarray) -> Callable[[], Any] | None:
    """A hand-written jitted step (MLP and conv workloads only)."""
    if w.kind not in ("mlp", "cnn1d", "cnn2d"):
        return None
    import jax
    import jax.numpy as jnp

    params = [jnp.asarray(v) for v in initial_weights(w)]
    onehot = np.eye(w.classes, dtype=np.float32)[y]

    def forward(ps, xb):
        if w.kind == "mlp":
            a = xb
            for i in range(0, len(ps), 2):
                a = a @ ps[i].T + ps[i + 1]
                last = i == len(ps) - 2
                if not last:
                    a = jax.nn.sigmoid(a) if w.activation == "sigmoid" else jax.nn.relu(a)
            return jax.nn.sigmoid(a) if w.loss == "quadratic" else a
        dims = ("NCH", "OIH", "NCH") if w.kind == "cnn1d" else ("NCHW", "OIHW", "NCHW")
        a = xb[:, None, :] if w.kind == "cnn1d" else xb
        convs = 3 if w.kind == "cnn1d" else 2
        for i in range(convs):
            W, b = ps[2 * i], ps[2 * i + 1]
            stride = (2,) if w.kind == "cnn1d" else (1, 1)
            pad = [(1, 1)] * (1 if w.kind == "cnn1d" else 2)
            a = jax.lax.conv_general_dilated(a, W, stride, pad, dimension_numbers=dims)
            a = jax.nn.relu(a + b.reshape((1, -1) + (1,) * (a.ndim - 2)))
            if w.kind == "cnn2d":
                a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                          "VALID")
        a = a.reshape(a.shape[0], -1)
        return a @ ps[-2].T + ps[-1]

    def loss_fn(ps, xb, tb):
        out = forward(ps, xb)
        if w.loss == "quadratic":
            return jnp.sum((out - tb) ** 2) / (2 * xb.shape[0])
        return -jnp.mean(jnp.sum(tb * jax.nn.log_softmax(out), axis=1))

    @jax.jit
    def step(ps, xb, tb):
        loss, grads = jax.value_and_grad(loss_fn)(ps, xb, tb)
        return [p - w.lr * g for p, g in zip(ps, grads, strict=True)], loss

    xs = [jnp.asarray(x[s:s + w.batch]) for s in range(0, len(x), w.batch)]
    ts = [jnp.asarray(onehot[s:s + w.batch]) for s in range(0, len(x), w.batch)]
    state = {"params": params}

    def run():
        ps, total = state["params"], 0.0
        for xb, tb in zip(xs, ts, strict=True):
            ps, loss = step(ps, xb, tb)
            total = total + loss
        state["params"] = ps
        jax.block_until_ready(total)
        return total

    run()  # compile outside the timed runs
    return run
