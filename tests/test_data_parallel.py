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


# -- NCCL for CuPy arrays, through a stand-in cupy -----------------------------------------
class _DeviceArray(np.ndarray):
    """A stand-in CuPy array: NumPy memory behind a ``.data.ptr``."""

    @property
    def data(self):  # noqa: D401 - CuPy's memory pointer
        _MEMORY[id(self.base if self.base is not None else self)] = self
        return type("Ptr", (), {"ptr": id(self.base if self.base is not None else self)})()


_MEMORY: dict[int, np.ndarray] = {}


def _fake_cupy(calls, size=2):
    """``cupy`` with ``cuda.nccl`` (its collectives act as if every rank sent the same
    buffer), streams and events that record the order things were asked in."""
    import types

    class Stream:
        def __init__(self, non_blocking=False, name="nccl"):
            self.name, self.ptr = name, 7

        def wait_event(self, event):
            calls.append(("wait", self.name, event.where))

    current = Stream(name="current")

    class Event:
        def __init__(self):
            self.where = None

        def record(self, stream=None):
            self.where = (stream or current).name
            calls.append(("record", self.where))

    class Communicator:
        def __init__(self, n, uid, rank):
            calls.append(("init", n, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (CuPy's)
            calls.append(("allReduce", count, dtype, op, stream))
            _MEMORY[recv].reshape(-1)[:] = _MEMORY[send].reshape(-1) * size

        def bcast(self, buf, count, dtype, root, stream):
            calls.append(("bcast", count, dtype, root))

    nccl = types.SimpleNamespace(available=True, get_unique_id=lambda: (1, 2, 3),
                                 NcclCommunicator=Communicator, NCCL_SUM="sum",
                                 NCCL_FLOAT32="f32", NCCL_FLOAT64="f64", NCCL_FLOAT16="f16",
                                 NCCL_INT32="i32", NCCL_INT64="i64")
    cuda = types.SimpleNamespace(nccl=nccl, Stream=Stream, Event=Event,
                                 get_current_stream=lambda: current)
    module = types.ModuleType("cupy")
    module.cuda = cuda
    module.ndarray = _DeviceArray
    module.concatenate = lambda arrays: np.concatenate(arrays).view(_DeviceArray)
    return module, nccl


def test_nccl_sums_cupy_buckets_on_its_own_stream(monkeypatch):
    """The NCCL communicator's logic (no GPU): the id goes from rank 0 over MPI, a
    bucket's sum runs on NCCL's stream after the current stream's work (an event) and
    the current stream waits for it only when the result is asked for; other arrays and
    Python values go over MPI."""
    import sys

    from xpnet.backends.base import Communicator
    from xpnet.backends.cupy import CupyNCCL

    calls = []
    cupy, nccl = _fake_cupy(calls)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)

    class Boot(Communicator):  # rank 1 of 2 over "MPI": rank 0's values win
        rank, size, name = 1, 2, "MPI"

        def bcast_object(self, value, root=0):
            return (1, 2, 3) if value is None else value

        def allreduce_sum(self, arrays):
            calls.append(("mpi", len(arrays)))
            return [a * 2 for a in arrays]

    comm = CupyNCCL(Boot())
    assert calls == [("init", 2, (1, 2, 3), 1)]
    calls.clear()
    bucket = np.arange(6, dtype=np.float32).view(_DeviceArray)
    pending = comm.start_allreduce(bucket)
    assert calls == [("record", "current"), ("wait", "nccl", "current"),
                     ("allReduce", 6, "f32", "sum", 7), ("record", "nccl")]
    calls.clear()
    np.testing.assert_array_equal(pending.wait(), np.arange(6) * 2)
    assert calls == [("wait", "current", "nccl")]  # asked for: now the stream waits
    a, b = (np.ones((2, 2), np.float64).view(_DeviceArray),
            np.full(3, 2.0).view(_DeviceArray))
    summed = comm.allreduce_sum([a, b])
    np.testing.assert_array_equal(summed[0], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(summed[1], np.full(3, 4.0))
    calls.clear()
    comm.allreduce_sum([np.ones(2)])  # a host array: over MPI
    assert calls == [("mpi", 1)]


def test_an_argument_error_on_one_rank_ends_the_job(tmp_path):
    """``mpiexec -n 1 xpnet train --distributed ... : -n 1 xpnet train --distributed ...
    --lr -1``: rank 1 printed its argument error and exited before MPI started, and rank
    0 waited forever. The CLI now joins the job first, so the error ends every rank."""
    cmd = _command("mpiexec")
    exe = cmd[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "xpnet.cli", "train", "--distributed", "--data", "xor",
             "--epochs", "1"]
    job = [exe, "-n", "1", *train, "--out", str(tmp_path / "a"), ":",
           "-n", "1", *train, "--out", str(tmp_path / "b"), "--lr", "-1"]
    start = time.perf_counter()
    try:
        done = subprocess.run(job, capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("rank 0 was left waiting after rank 1's argument error")
    assert done.returncode != 0
    assert "--lr" in done.stderr, done.stderr[-2000:]
    assert time.perf_counter() - start < 40
