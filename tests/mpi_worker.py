"""Run by tests/test_distributed.py under ``mpiexec -n 2``; not collected by pytest.

    mpi_worker.py train BACKEND DEVICE OUT.npz   one data-parallel epoch; rank 0 writes
    mpi_worker.py fail                           rank 1 raises in the middle of an epoch
    mpi_worker.py disagree                       the ranks are given different batch sizes
    mpi_worker.py labels                         rank 1 has an out-of-range label
"""

from __future__ import annotations

import sys

import numpy as np

import xpnet as xn
from xpnet.backend import backend_of
from xpnet.distributed import DataParallel, MPICommunicator


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((203, 8)).astype(np.float32)  # 6 batches of 32, then 11
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def model():
    xn.seed(7)
    return xn.Sequential(xn.Linear(8, 16), xn.Tanh(), xn.Linear(16, 3))


def train(backend: str, device: str, out: str) -> None:
    comm = MPICommunicator()
    if backend == "array_api_strict":
        import array_api_strict

        array_api_strict.set_array_api_strict_flags(api_version="2024.12")
    with xn.use(backend, device=None if device == "-" else device) as be:
        net = model()
        if comm.rank == 1:  # rank 0's initial weights must win the broadcast
            for p in net.parameters():
                p.value = p.value + 1.0
        x, y = data()
        opt = xn.SGD(net, lr=0.1, momentum=0.9)
        h = xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=1,
                   batch_size=32, seed=3, progress=False, distributed=comm)
        # the staging path hands results back on the device they came from
        summed = comm.allreduce_sum([be.asarray(np.full(3, comm.rank + 1.0), dtype="float32")])
        where = backend_of(summed[0])
        assert (where.name, where.device_name) == (be.name, be.device_name), where
        assert np.array_equal(xn.to_numpy(summed[0]), [3.0, 3.0, 3.0])
        assert all(backend_of(p.value) == be for p in net.parameters())
        assert comm.allgather_object({"rank": comm.rank}) == [{"rank": 0}, {"rank": 1}]
        DataParallel(comm).agree({"batch_size": 32, "shape": [8]})  # equal: no error
        if comm.rank == 0:
            np.savez(out, loss=h["loss"][0], accuracy=h["accuracy"][0],
                     direct=comm.direct_cuda,
                     **{n: xn.to_numpy(p.value) for n, p in net.named_parameters()})


class FailingLoss(xn.SoftmaxCrossEntropy):
    """Raises on rank 1 at its third step."""

    def __init__(self, rank):
        super().__init__()
        self.rank, self.calls = rank, 0

    def forward(self, pred, target):
        self.calls += 1
        if self.rank == 1 and self.calls == 3:
            raise RuntimeError("rank 1 broke on purpose at step 3")
        return super().forward(pred, target)


def fail() -> None:
    comm = MPICommunicator()
    with xn.use("numpy"):
        net = model()
        x, y = data()
        xn.fit(net, x, y, loss=FailingLoss(comm.rank), optimizer=xn.SGD(net, lr=0.1),
               epochs=5, batch_size=32, progress=False, distributed=True)


def disagree() -> None:
    comm = MPICommunicator()
    with xn.use("numpy"):
        net = model()
        x, y = data()
        xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(net, lr=0.1),
               epochs=1, batch_size=32 if comm.rank == 0 else 16, progress=False,
               distributed=comm)


def labels() -> None:
    comm = MPICommunicator()
    with xn.use("numpy"):
        net = model()
        x, y = data()
        if comm.rank == 1:
            y[5] = 7  # 3 classes: fit's host label check fails on this rank only
        xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(net, lr=0.1),
               epochs=1, batch_size=32, progress=False, distributed=comm)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(*sys.argv[2:5])
    else:
        {"fail": fail, "disagree": disagree, "labels": labels}[sys.argv[1]]()
