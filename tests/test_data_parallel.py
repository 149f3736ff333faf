"""Data parallelism the way GPU users run it: the same worker under ``mpiexec -n 2``
(MPI) and ``torchrun --nproc_per_node=2`` (torch.distributed, gloo on the CPU). Two ranks
equal one process; any rank's failure ends the job within seconds with its message;
decisions that change training are the same on every rank whatever the callbacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
ROOT = WORKER.parent.parent
LAUNCHERS = ["mpiexec", "torchrun"]


def _command(launcher: str) -> list[str]:
    if launcher == "mpiexec":
        pytest.importorskip("mpi4py", reason='mpi4py is not installed (pip install "xpnet[mpi]")')
        exe = shutil.which("mpiexec")
        if exe is None:
            pytest.skip("no mpiexec on PATH (the mpich wheel provides one)")
        return [exe, "-n", "2", sys.executable]
    pytest.importorskip("torch", reason="torch is not installed (torchrun comes with it)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2", "--monitor-interval=0.2"]


def _launch(launcher: str, *args: str, timeout: float = 90):
    """The worker under ``launcher``; a job still running after ``timeout`` seconds (a
    rank left waiting) fails the test. Returns (CompletedProcess, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [*_command(launcher), str(WORKER), *args]
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{launcher} dist_worker.py {' '.join(args)} still ran after "
                        f"{timeout} s (a rank was left waiting):\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), \
        time.perf_counter() - start


def _one_process(backend: str):
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    with xn.use(backend):
        net = dist_worker.model()
        x, y = dist_worker.data()
        h = xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(),
                   optimizer=xn.SGD(net, lr=0.1, momentum=0.9), epochs=1, batch_size=32,
                   seed=3, progress=False)
        return h, {n: xn.to_numpy(p.value) for n, p in net.named_parameters()}


@pytest.mark.parametrize("launcher, backend", [("torchrun", "numpy"), ("torchrun", "torch"),
                                               ("mpiexec", "numpy")])
def test_two_ranks_equal_one_process(tmp_path, launcher, backend):
    """torchrun (gloo) and mpiexec: the data-parallel epoch is the one-process epoch on
    the global batch, to float32 rounding, gradients summed in buckets."""
    if backend == "torch":
        pytest.importorskip("torch")
    out = tmp_path / "ranks.npz"
    done, _ = _launch(launcher, "train", backend, str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    assert str(got["launcher"]) == {"torchrun": "torch.distributed", "mpiexec": "MPI"}[launcher]
    h, want = _one_process(backend)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(got["loss"]) == pytest.approx(h["loss"][0], rel=1e-5)


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("mode, message", [("interrupt", "KeyboardInterrupt"),
                                           ("exit", "SystemExit")])
def test_an_interrupted_or_exiting_rank_ends_the_job(launcher, mode, message):
    """SIGINT (kill -INT of one rank) or sys.exit on one rank: fit caught only
    Exception, and the other rank waited forever. The job now ends, with the message,
    within 10 s of the failure (the rest is two Pythons starting)."""
    done, seconds = _launch(launcher, mode, timeout=60)
    assert done.returncode != 0
    assert f"[rank 1] {message}" in done.stderr, done.stderr[-3000:]
    assert seconds < 40


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_early_stopping_on_one_rank_stops_every_rank(tmp_path, launcher):
    """EarlyStopping on rank 0 only, with a validation set per rank: one rank stopped and
    the other waited forever. The validation sums are reduced over the ranks and a stop
    on any rank stops all: the ranks end at the same epoch with the same weights."""
    done, _ = _launch(launcher, "early", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r.{k}").read_text()) for k in (0, 1))
    assert r0["epochs"] == r1["epochs"] < 40
    np.testing.assert_allclose(r0["w"], r1["w"], rtol=1e-6)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_plateau_lowers_the_rate_alike_on_every_rank(tmp_path, launcher):
    """ReduceLROnPlateau on per-rank validation sets ended with different rates (1e-4
    against 1e-6) and different weights: the decision is now taken from reduced metrics
    and rank 0's rate is every rank's."""
    done, _ = _launch(launcher, "plateau", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r.{k}").read_text()) for k in (0, 1))
    assert r0["lr"] == r1["lr"] < 0.5
    np.testing.assert_allclose(r0["w"], r1["w"], rtol=1e-6)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_batch_callback_on_one_rank_keeps_the_collectives_in_step(tmp_path, launcher):
    """An on_batch_end callback on rank 0 only put the ranks' collective calls out of
    step ("Message truncated", or a hang): every rank now joins the per-batch vote."""
    done, _ = _launch(launcher, "batchhook", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r.{k}").read_text()) for k in (0, 1))
    assert r0["epochs"] == r1["epochs"] == 2
    np.testing.assert_allclose(r0["w"], r1["w"], rtol=1e-6)


def test_buckets_are_bounded_and_reduce_as_one_sum():
    """Gradients packed into buckets of at most bucket_bytes (one dtype each, last layer
    first), one collective each, unpacked into the right parameters."""
    from xpnet.backends.base import Communicator
    from xpnet.train.transforms import AllReduce, StepContext

    class Twice(Communicator):
        rank, size, name = 0, 2, "stand-in"

        def __init__(self):
            self.calls = []

        def allreduce_sum(self, arrays):
            self.calls.append([a.shape for a in arrays])
            return [a * 2 for a in arrays]

    params = [xn.Parameter(f"p{i}", np.zeros(shape, np.float32))
              for i, shape in enumerate([(3, 4), (4,), (100,), (5, 2)])]
    for i, p in enumerate(params):
        p.grad = np.full(p.shape, i + 1.0, np.float32)
    comm = Twice()
    t = AllReduce(comm, bucket_bytes=200)  # 50 float32s a bucket
    # in backward's order (the last layer first); a new bucket where the next would pass
    # 200 bytes; the 400-byte gradient is a bucket of its own
    assert t.buckets([p.grad for p in params]) == [[3], [2], [1, 0]]
    t(params, StepContext())
    assert comm.calls == [[(10,)], [(100,)], [(16,)]]  # one collective a bucket
    assert t.bytes == (10 + 100 + 16) * 4
    for i, p in enumerate(params):
        np.testing.assert_array_equal(p.grad, np.full(p.shape, 2 * (i + 1.0)))
