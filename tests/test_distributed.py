"""Data-parallel training under ``mpiexec -n 2``: equal to one process on the global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn
from xpnet import distributed

WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
ROOT = WORKER.parent.parent


def _mpiexec() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install "xpnet[mpi]")')
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec on PATH (the mpich wheel provides one)")
    return exe


def _run(*args, timeout=60):
    """``mpiexec -n 2 mpi_worker.py ARGS``; a job still running after ``timeout`` seconds
    (a hung rank) fails the test, and mpiexec is told to end its ranks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(WORKER), *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: mpiexec then kills its ranks (SIGKILL would not)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"mpi_worker.py {' '.join(args)} still ran after {timeout} s "
                        f"(a rank hung):\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def mpi_ok():
    exe = _mpiexec()
    code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; n = c.allreduce(1)\n"
            "if c.rank == 0: print(n)")
    done = subprocess.run([exe, "-n", "2", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or done.stdout.split() != ["2"]:
        pytest.skip(f"MPI cannot start 2 ranks here: {done.stderr.strip()[:300]}")


def _single_process(backend, device):
    sys.path.insert(0, str(WORKER.parent))
    import mpi_worker

    with xn.use(backend, device=device):
        net = mpi_worker.model()
        x, y = mpi_worker.data()
        h = xn.fit(net, x, y, loss=xn.SoftmaxCrossEntropy(),
                   optimizer=xn.SGD(net, lr=0.1, momentum=0.9), epochs=1, batch_size=32,
                   seed=3, progress=False)
        return h, {n: xn.to_numpy(p.value) for n, p in net.named_parameters()}


@pytest.mark.parametrize("backend, device", [("numpy", None), ("array_api_strict", "device1")],
                         ids=["numpy", "strict-device1"])
def test_two_ranks_equal_one_process(mpi_ok, tmp_path, backend, device):
    if backend == "array_api_strict":
        pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    out = tmp_path / "ranks.npz"
    done = _run("train", backend, device or "-", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(out)
    h, want = _single_process(backend, device)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(got["loss"]) == pytest.approx(h["loss"][0], rel=1e-5)
    assert float(got["accuracy"]) == pytest.approx(h["accuracy"][0])


def test_a_failing_rank_ends_the_job_with_its_error(mpi_ok):
    done = _run("fail")  # a hang would hit the timeout and fail the test
    assert done.returncode != 0
    assert "rank 1 broke on purpose at step 3" in done.stderr
    assert "[rank 1] RuntimeError" in done.stderr


def test_ranks_given_different_batch_sizes_stop_before_training(mpi_ok):
    """fit's ``strategy.agree`` finds the difference and every rank raises it."""
    done = _run("disagree")
    assert done.returncode != 0
    assert "the ranks disagree on batch_size" in done.stderr, done.stderr[-2000:]
    assert "rank 0 has 32" in done.stderr and "rank 1 has 16" in done.stderr


def test_a_bad_label_on_one_rank_ends_the_job_before_training(mpi_ok):
    """An error before training (fit's host label check) ends the other rank too."""
    done = _run("labels")
    assert done.returncode != 0
    assert "[rank 1] ValueError: fit: labels must lie in [0, 2]" in done.stderr, \
        done.stderr[-2000:]


def test_single_process_strategy_is_a_no_op():
    single = distributed.resolve(False)
    assert type(single) is distributed.Strategy and single.size == 1
    a = [np.ones(3)]
    assert single.shard(a, 3) is a and single.totals([2.0, 1.0]) == [2.0, 1.0]
    single.agree({"batch_size": 32})  # nothing to compare with
    comm = distributed.SingleProcess()
    assert comm.allreduce_sum(a) is a and comm.broadcast(a) is a
    assert comm.allgather_object({"epochs": 2}) == [{"epochs": 2}]
    assert type(distributed.resolve(comm)) is distributed.Strategy  # one rank: nothing to do
    with pytest.raises(ValueError, match="boom"):
        single.fail(ValueError("boom"))
    with pytest.raises(TypeError, match="distributed must be a bool or a Communicator"):
        distributed.resolve("yes")


def test_data_parallel_shards_and_averages():
    """DataParallel's arithmetic, with a two-rank stand-in communicator that echoes."""

    class Echo(distributed.Communicator):
        rank, size = 1, 2

        def allreduce_sum(self, arrays):
            return [a * 2 for a in arrays]  # as if rank 0 sent the same values

    dp = distributed.resolve(Echo())
    assert isinstance(dp, distributed.DataParallel) and dp.rank == 1
    x = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(dp.shard([x], 5)[0], x[2:5])  # rank 1 of 2: rows 2..4
    from xpnet.train.transforms import AllReduce, Normalize, StepContext

    p = xn.Parameter("w", np.zeros(3))
    p.grad = np.full(3, 0.5) * 3  # this rank's mean over its 3 examples, weighted by them
    ctx = StepContext(total=6)  # the global batch
    for t in (AllReduce(dp.comm), Normalize()):
        t([p], ctx)
    np.testing.assert_allclose(p.grad, np.full(3, 0.5))  # (0.5*3 + 0.5*3) / 6
    empty = xn.Parameter("v", np.zeros(2))  # a rank with no examples sends zeros
    AllReduce(dp.comm)([empty], ctx)
    np.testing.assert_array_equal(empty.grad, np.zeros(2))
    assert dp.totals([1.5, 2.0]) == [3.0, 4.0]


class Gathered(distributed.Communicator):
    """Rank 1 of a stand-in job whose ranks' ``allgather_object`` results are given."""

    rank = 1

    def __init__(self, *others):
        self.others, self.size = others, len(others) + 1

    def allgather_object(self, value):
        return [*self.others, value]


def test_agree_names_every_difference_and_every_rank():
    facts = {"model": "{...}", "examples": 203, "batch_size": 32, "epochs": 2}
    dp = distributed.DataParallel(Gathered(dict(facts)))
    dp.agree(dict(facts))  # equal: no error
    dp.agree({**facts, "examples": np.int64(203)})  # equal values of other types
    with pytest.raises(ValueError) as caught:
        dp.agree({**facts, "batch_size": 16, "epochs": 3})
    assert str(caught.value) == ("fit: the ranks disagree on batch_size: rank 0 has 32, "
                                 "rank 1 has 16; epochs: rank 0 has 2, rank 1 has 3")
    with pytest.raises(ValueError, match="on dtype: rank 0 has nothing, rank 1 has 'float32'"):
        dp.agree({**facts, "dtype": "float32"})
    three = distributed.DataParallel(Gathered(dict(facts), {**facts, "batch_size": 16}))
    with pytest.raises(ValueError, match="batch_size: ranks 0, 2 have 32, rank 1 has 16$"):
        three.agree(dict(facts))


def test_agree_keeps_long_differences_apart():
    """Two model descriptions that differ only far in: cut, but told apart by hash."""
    head = '{"layers": [' + '"Linear", ' * 20
    dp = distributed.DataParallel(Gathered({"model": head + '"Tanh"]}'}))
    with pytest.raises(ValueError) as caught:
        dp.agree({"model": head + '"ReLU"]}'})
    message = str(caught.value)
    assert "Tanh" not in message and "ReLU" not in message and len(message) < 400
    hashes = [part.split(")")[0] for part in message.split("(sha256 ")[1:]]
    assert len(hashes) == 2 and hashes[0] != hashes[1]


def test_fail_raises_when_abort_returns(capsys):
    """Some MPICH builds return from MPI_Abort; fit must not then return as if trained."""

    class ReturningAbort(distributed.Communicator):
        rank, size, aborts = 1, 2, []

        def abort(self, code=1):
            self.aborts.append(code)

    comm = ReturningAbort()
    error = RuntimeError("out of memory")
    with pytest.raises(RuntimeError) as caught:
        distributed.DataParallel(comm).fail(error)
    assert caught.value is error and comm.aborts == [1]
    assert "[rank 1] RuntimeError: out of memory" in capsys.readouterr().err


def test_staging_keeps_device_arrays_on_their_device():
    """The host staging path of MPICommunicator, with a one-rank stand-in for MPI."""
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")

    class OneRank:
        def __init__(self):
            self.buffers = []

        def Allreduce(self, where, buf, op):
            self.buffers.append(type(buf))
            buf *= 2  # as if a second rank had sent the same values

        def Bcast(self, buf, root):
            self.buffers.append(type(buf))

    comm = distributed.MPICommunicator.__new__(distributed.MPICommunicator)
    comm.MPI = type("MPI", (), {"IN_PLACE": None, "SUM": None})
    comm.comm, comm.rank, comm.size, comm.local_rank = OneRank(), 0, 2, 0
    comm.direct_cuda = False
    with xn.use("array_api_strict", device="device1") as be:
        arrays = [be.asarray(np.arange(6.0).reshape(2, 3), dtype="float32"),
                  be.asarray(np.ones(4), dtype="float32")]
        out = comm.allreduce_sum(arrays)
    assert comm.comm.buffers == [np.ndarray]  # one host buffer for all arrays
    assert [o.device for o in out] == [strict.Device("device1")] * 2
    np.testing.assert_array_equal(xn.to_numpy(out[0]), 2 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(xn.to_numpy(out[1]), 2 * np.ones(4))
    host = comm.allreduce_sum([np.ones(2, dtype=np.float32)])
    assert isinstance(host[0], np.ndarray)


def test_cuda_awareness_is_asked_not_guessed(monkeypatch):
    monkeypatch.setenv("XPNET_MPI_CUDA_AWARE", "1")
    assert distributed.cuda_aware() is True
    monkeypatch.setenv("XPNET_MPI_CUDA_AWARE", "0")
    assert distributed.cuda_aware() is False
    monkeypatch.delenv("XPNET_MPI_CUDA_AWARE")
    assert isinstance(distributed.cuda_aware(), bool)


def test_local_device_follows_local_rank():
    assert distributed.local_device("numpy", None, 3) is None
    assert distributed.local_device("torch", "cuda:1", 3) == "cuda:1"  # an index wins
    pytest.importorskip("torch", reason="torch is not installed")
    assert distributed.local_device("torch", "cuda", 3) == "cuda:0"  # one (or no) GPU here
