"""fit(threads=) and xpnet train --threads: every library's CPU pool limited for the fit,
and put back as it was afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn

threadpoolctl = pytest.importorskip("threadpoolctl")

ROOT = Path(__file__).resolve().parent.parent


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


class _Seen(xn.Callback):
    """What the pools hold while fit runs."""

    def __init__(self):
        super().__init__()
        self.blas, self.torch = [], []

    def on_epoch_end(self, epoch, logs):
        self.blas.append(_blas_threads())
        if "torch" in sys.modules:
            self.torch.append(sys.modules["torch"].get_num_threads())


def _fit(**kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = xn.Sequential(xn.Linear(4, 8), xn.ReLU(), xn.Linear(8, 2))
    seen = _Seen()
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model.parameters()),
           epochs=2, batch_size=8, progress=False, callbacks=[seen], **kw)
    return seen


def test_fit_limits_the_blas_pool_and_restores_it():
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl sees is loaded")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert set(before) == {2}
        seen = _fit(threads=1)
        assert seen.blas == [[1] * len(before)] * 2
        assert _blas_threads() == before
    seen = _fit()  # threads=None: the pools are left as they are
    assert seen.blas == [_blas_threads()] * 2


def test_fit_sets_torch_threads_and_restores_them():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        seen = _fit(threads=1)
        assert seen.torch == [1, 1]
        assert torch.get_num_threads() == 3
        seen = _fit(threads=2)
        assert seen.torch == [2, 2]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


class _Fails(_Seen):
    def on_epoch_end(self, epoch, logs):
        super().on_epoch_end(epoch, logs)
        raise RuntimeError("stop here")


def test_threads_are_restored_after_an_error():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    model = xn.Sequential(xn.Linear(4, 2))
    fails = _Fails()
    try:
        torch.set_num_threads(3)
        with pytest.raises(RuntimeError, match="stop here"):
            xn.fit(model, np.zeros((4, 4), np.float32), np.zeros(4, np.int64),
                   loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model.parameters()),
                   threads=1, progress=False, callbacks=[fails])
        assert fails.torch == [1]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads, error, message", [
    (0, ValueError, "fit: threads must be >= 1, got 0"),
    (-2, ValueError, "fit: threads must be >= 1, got -2"),
    (1.5, TypeError, "fit: threads must be an integer, got 1.5"),
    ("4", TypeError, "fit: threads must be an integer, got '4'"),
    (True, TypeError, "fit: threads must be an integer, got True"),
])
def test_bad_threads_are_refused(threads, error, message):
    model = xn.Sequential(xn.Linear(4, 2))
    with pytest.raises(error) as e:
        xn.fit(model, np.zeros((4, 4), np.float32), np.zeros(4, np.int64),
               loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model.parameters()),
               threads=threads, progress=False)
    assert str(e.value) == message


def test_jax_model_warns_that_its_threads_are_fixed():
    pytest.importorskip("jax")
    with xn.use("jax"):
        model = xn.Sequential(xn.Linear(4, 2))
    with pytest.warns(UserWarning, match="XLA's CPU threads are fixed when JAX starts") as w:
        xn.fit(model, np.zeros((4, 4), np.float32), np.zeros(4, np.int64),
               loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model.parameters()),
               threads=1, epochs=1, progress=False)
    assert w[0].filename == __file__  # it points at the call of fit


def test_prefer_threads_sets_xla_flags_only_before_jax_starts():
    """In a fresh process (no jax imported), one thread turns XLA's Eigen pool off; flags
    the user set are kept."""
    code = ("import os, xpnet.backends as b; b.prefer_threads(1); "
            "print(os.environ.get('XLA_FLAGS'))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "--xla_cpu_multi_thread_eigen=false"
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=true"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "--xla_cpu_multi_thread_eigen=true"


def test_cli_threads_flag(tmp_path, capsys):
    from xpnet.cli import main, make_parser

    assert make_parser().parse_args(["train"]).threads == 1  # the default: one thread
    code = main(["train", "--threads", "0"])
    assert code == 2
    assert "argument --threads: must be at least 1, got '0'" in capsys.readouterr().err
    pytest.importorskip("torch")
    before = sys.modules["torch"].get_num_threads()
    code = main(["train", "--data", "xor", "--hidden", "4", "--epochs", "1", "--batch-size",
                 "4", "--backend", "torch", "--no-progress", "--threads", "1", "--out",
                 str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert sys.modules["torch"].get_num_threads() == before
