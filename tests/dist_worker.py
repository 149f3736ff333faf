"""Run by tests/test_data_parallel.py under ``mpiexec -n 2`` or ``torchrun
--nproc_per_node=2``; not collected by pytest. The launcher decides the communicator
(``fit(distributed=True)`` detects it).

    dist_worker.py train BACKEND OUT.npz   one data-parallel epoch; rank 0 writes
    dist_worker.py interrupt               rank 1 gets SIGINT in its third step
    dist_worker.py exit                    rank 1 calls sys.exit(3) in its third step
    dist_worker.py early OUT               EarlyStopping on rank 0 only, per-rank val sets
    dist_worker.py plateau OUT             ReduceLROnPlateau on per-rank val sets
    dist_worker.py batchhook OUT           an on_batch_end callback on rank 0 only
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import xpnet as xn
from xpnet import distributed


def data(seed=0, n=203):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)  # 6 batches of 32, then 11
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def model():
    xn.seed(7)
    return xn.Sequential(xn.Linear(8, 16), xn.Tanh(), xn.Linear(16, 3))


def fit(net, x, y, **kw):
    kw.setdefault("optimizer", xn.SGD(net, lr=0.1, momentum=0.9))
    kw.setdefault("epochs", 1)
    return xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(), batch_size=32, seed=3,
                  progress=False, distributed=True, **kw)


def train(backend: str, out: str) -> None:
    with xn.use(backend):
        net = model()
        if distributed.detect().rank == 1:  # rank 0's initial weights must win
            for p in net.parameters():
                p.value = p.value + 1.0
        x, y = data()
        h = fit(net, x, y)
        comm = distributed.detect()
        if comm.rank == 0:
            np.savez(out, loss=h["loss"][0], accuracy=h["accuracy"][0], launcher=comm.name,
                     **{n: xn.to_numpy(p.value) for n, p in net.named_parameters()})


class OnRankOne(xn.Callback):
    """Does ``act()`` on rank 1 at its third batch."""

    def __init__(self, act):
        self.act = act

    def on_batch_end(self, step, logs):
        if self.rank == 1 and step == 2:
            self.act()


def interrupt() -> None:
    with xn.use("numpy"):
        net = model()
        fit(net, *data(), epochs=50, callbacks=[OnRankOne(
            lambda: os.kill(os.getpid(), signal.SIGINT))])


def exit_() -> None:
    with xn.use("numpy"):
        net = model()
        fit(net, *data(), epochs=50, callbacks=[OnRankOne(lambda: sys.exit(3))])


def _report(out: str, net, opt, h) -> None:
    rank = distributed.detect().rank
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"epochs": len(h.epochs), "lr": float(opt.lr),
                   "w": xn.to_numpy(net.parameters()[0].value).ravel()[:5].tolist()}, f)


def early(out: str) -> None:
    rank = distributed.detect().rank
    with xn.use("numpy"):
        net = model()
        opt = xn.SGD(net, lr=0.5)
        cbs = [xn.EarlyStopping("val_loss", patience=1)] if rank == 0 else []
        val = data(seed=10 + rank, n=40)  # each rank its own validation set
        h = fit(net, *data(), optimizer=opt, epochs=40, callbacks=cbs, validation_data=val)
        _report(out, net, opt, h)


def plateau(out: str) -> None:
    rank = distributed.detect().rank
    with xn.use("numpy"):
        net = model()
        opt = xn.SGD(net, lr=0.5)
        val = data(seed=10 + rank, n=40)
        cb = xn.ReduceLROnPlateau("val_loss", factor=0.1, patience=0, min_delta=10.0)
        h = fit(net, *data(), optimizer=opt, epochs=3, callbacks=[cb], validation_data=val)
        _report(out, net, opt, h)


class Reader(xn.Callback):
    def on_batch_end(self, step, logs):
        logs["loss"]  # noqa: B018 (a host read each batch, on rank 0 only)


def batchhook(out: str) -> None:
    rank = distributed.detect().rank
    with xn.use("numpy"):
        net = model()
        opt = xn.SGD(net, lr=0.1)
        h = fit(net, *data(), optimizer=opt, epochs=2,
                callbacks=[Reader()] if rank == 0 else [])
        _report(out, net, opt, h)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"train": train, "interrupt": interrupt, "exit": exit_, "early": early,
     "plateau": plateau, "batchhook": batchhook}[mode](*args)
