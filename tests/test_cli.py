"""The xpnet command: outputs, files written, and exit status 2 with one line on errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn
from xpnet import cli, datasets
from xpnet.cli import main

ROOT = Path(__file__).resolve().parent.parent

# the smallest real training run: a few seconds at most
TINY = ["--data", "xor", "--hidden", "4", "--epochs", "1", "--batch-size", "4",
        "--backend", "numpy", "--no-progress"]


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_digits_defaults_reach_the_floor(tmp_path, capsys):
    """The README's main job: defaults on NumPy, >= 97.5% test accuracy on digits."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    code, out, err = _run(capsys, "train", "--backend", "numpy", "--out", str(tmp_path),
                          "--no-progress")
    assert code == 0, err
    acc = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    assert acc >= 0.975, out
    assert {p.name for p in tmp_path.iterdir()} >= {"model.xpnet", "history.json"}
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["val_accuracy"]) == 40
    # validated on a held-out tenth of the training data (not the test set), and the
    # weights kept are the best validation epoch's
    assert "train (1211, 64)  validation (136, 64)  test (450, 64)" in out
    kept, best = re.search(r"kept epoch (\d+) of 40: validation accuracy ([0-9.]+)", out).groups()
    assert float(best) == pytest.approx(max(history["val_accuracy"]), abs=5e-5)
    assert history["val_accuracy"].index(max(history["val_accuracy"])) == int(kept) - 1
    assert xn.load_checkpoint(tmp_path / "model.xpnet").metadata["best_epoch"] == int(kept)

    code, out, err = _run(capsys, "eval", str(tmp_path / "model.xpnet"), "--backend",
                          "array_api_strict", "--device", "device1")
    assert code == 0, err
    assert float(re.search(r"accuracy: ([0-9.]+)", out).group(1)) == pytest.approx(acc, abs=5e-5)

    code, out, err = _run(capsys, "predict", str(tmp_path / "model.xpnet"), "--backend",
                          "numpy", "--output", str(tmp_path / "pred.npy"))
    assert code == 0, err
    from xpnet.datasets import digits

    y_te = digits()[3]
    assert np.mean(np.load(tmp_path / "pred.npy") == y_te) == pytest.approx(acc, abs=5e-5)


def test_train_xor_with_quadratic_cost(tmp_path, capsys):
    code, out, err = _run(capsys, "train", "--data", "xor", "--hidden", "8",
                          "--activation", "tanh", "--loss", "quadratic", "--optimizer", "sgd",
                          "--lr", "2.0", "--schedule", "none", "--epochs", "300",
                          "--batch-size", "4", "--backend", "array_api_strict", "--out",
                          str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "backend: array_api_strict" in out
    assert "validation none" in out  # four examples hold none out: the last epoch is kept
    assert "kept epoch" not in out
    assert "test accuracy: 1.0000 (4/4)" in out


def test_predict_from_npy_input(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--data", "xor", "--hidden", "8", "--epochs", "200",
                        "--batch-size", "4", "--lr", "0.05", "--backend", "numpy", "--out",
                        str(tmp_path), "--no-progress")
    assert code == 0, err
    np.save(tmp_path / "in.npy", np.array([[0, 1], [1, 1]], dtype=np.float32))
    code, out, err = _run(capsys, "predict", str(tmp_path / "model.xpnet"), "--input",
                          str(tmp_path / "in.npy"), "--backend", "numpy")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "1 0"


LIBRARIES = {"cupy": "cupy", "torch": "torch", "jax": "jax",
             "array_api_strict": "array_api_strict"}


def _installed(name):
    from importlib import metadata

    dists = ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy") if name == "cupy" else (
        name,)
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return None


def test_info_lists_versions_without_importing_the_libraries():
    """`xpnet info` reads versions from the package metadata: in a fresh process it
    imports none of torch, JAX, CuPy or array-api-strict (seconds each), and still lists
    every installed version."""
    code = ("import sys; from xpnet.cli import main; code = main(['info']); "
            "print('imported:', sorted(m for m in ('torch', 'jax', 'jaxlib', 'cupy', "
            "'array_api_strict') if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "imported: []" in out
    assert re.search(rf"^  numpy\s+{re.escape(np.__version__)}\s+usable, devices: cpu$", out,
                     re.M), out
    for name in LIBRARIES:
        version = _installed(name)
        status = "installed, not opened" if version else "not installed: pip install"
        assert re.search(rf"^  {name}\s+{re.escape(version or '-')}\s+{status}", out,
                         re.M), (name, out)
    assert all(len(line) < 80 for line in out.splitlines()), out


def test_info_opens_the_backends_named(capsys):
    code, out, _ = _run(capsys, "info", "all")
    assert code == 0
    for name in ("numpy", *LIBRARIES):
        assert re.search(rf"^  {name}\s+\S+\s+(usable, devices: cpu|not usable: )", out,
                         re.M), name
    assert all(len(line) < 80 for line in out.splitlines()), out
    if _installed("torch"):
        code, out, _ = _run(capsys, "info", "pytorch")  # an alias
        assert re.search(r"^  torch\s+\S+\s+usable, devices: cpu", out, re.M), out
        assert re.search(r"^  jax\s+\S+\s+(installed, not opened|not installed)", out, re.M)
    code, _, err = _run(capsys, "info", "nope")
    assert code == 2
    assert err.strip() == ("error: info: unknown backend 'nope'; expected one of: auto, numpy, "
                           "cupy, torch, jax, array_api_strict")


@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--data", "nope"], "unknown data set 'nope'"),
    (["train", "--data", "mnist:/no/such/dir"], "/no/such/dir: not a folder"),
    (["train", "--hidden", "12,x"], "argument --hidden: expects widths"),
    (["train", "--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    (["train", "--epochs", "0"], "argument --epochs: must be at least 1"),
    (["train", "--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
    (["train", "--backend", "cupy", "--device", "cuda:99"], "cupy"),  # no GPU, or no 100th
    (["train", "--backend", "numpy", "--device", "cuda"], "numpy runs only on the CPU"),
    (["eval", "/no/such/model.xpnet", "--backend", "numpy"], "no such checkpoint file"),
    (["predict"], "the following arguments are required: checkpoint"),
    ([], "the following arguments are required: command"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"xpnet {xn.__version__}\n"


def test_train_writes_safetensors_that_eval_and_predict_read(tmp_path, capsys):
    st = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    code, out, err = _run(capsys, "train", *TINY, "--format", "safetensors", "--out",
                          str(tmp_path))
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} & {"model.xpnet", "model.safetensors"} == {
        "model.safetensors"}
    acc = re.search(r"test accuracy: ([0-9.]+)", out).group(1)
    model = str(tmp_path / "model.safetensors")
    assert sorted(k for k in st.load_file(model) if not k.startswith("optimizer.")) == [
        "0.bias", "0.weight", "2.bias", "2.weight"]
    code, out, err = _run(capsys, "eval", model, "--backend", "array_api_strict",
                          "--device", "device1")
    assert code == 0, err
    assert f"accuracy: {acc}" in out and "(4 examples)" in out
    code, out, err = _run(capsys, "predict", model, "--backend", "numpy")
    assert code == 0, err
    assert len(out.strip().splitlines()[-1].split()) == 4


def test_safetensors_format_without_the_package_fails_before_training(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import then raises ImportError
    monkeypatch.setattr(xn, "fit", lambda *a, **k: pytest.fail("trained anyway"))
    code, _, err = _run(capsys, "train", *TINY, "--format", "safetensors", "--out",
                        str(tmp_path / "run"))
    assert code == 2
    _one_error_line(err, 'pip install "xpnet[safetensors]"')
    assert not (tmp_path / "run").exists()


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "xpnet.cli", "train", "--oops"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: xpnet: unrecognized arguments")


def _one_error_line(err: str, *parts: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], err
    return lines[0]


def test_runs_in_the_same_second_get_their_own_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_timestamp", lambda: "20250101-000000")
    folders = []
    for _ in range(3):
        code, out, err = _run(capsys, "train", *TINY)
        assert code == 0, err
        folders.append(re.search(r"^wrote .* to (.+)$", out, re.M).group(1))
    assert folders == [str(Path("runs") / name) for name in
                       ("20250101-000000", "20250101-000000-1", "20250101-000000-2")]
    assert all((tmp_path / f / "model.xpnet").is_file() for f in folders)


def test_out_refuses_a_used_folder_unless_overwrite(tmp_path, capsys):
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 0, err
    before = (tmp_path / "run" / "model.xpnet").stat().st_mtime_ns
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 2
    _one_error_line(err, "not empty", "--overwrite")
    assert (tmp_path / "run" / "model.xpnet").stat().st_mtime_ns == before
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path / "run"), "--overwrite")
    assert code == 0, err
    (tmp_path / "empty").mkdir()  # an empty folder is no earlier run
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path / "empty"))
    assert code == 0, err


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"), ("--lr", "fast"),
    ("--epochs", "-3"), ("--batch-size", "0"), ("--seed", "-1"), ("--seed", "1.5"),
    ("--hidden", "100000000"), ("--hidden", "16,0"), ("--validation-split", "1"),
    ("--validation-split", "-0.1"),
])
def test_bad_numbers_are_refused_before_training(tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr(xn, "fit", lambda *a, **k: pytest.fail("trained anyway"))
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path), flag, value)
    assert code == 2
    _one_error_line(err, f"argument {flag}:", repr(value))


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 23.8 GiB for an array"),
    type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"),
    PermissionError(13, "Permission denied"),
])
def test_memory_and_os_errors_are_one_line(tmp_path, capsys, monkeypatch, error):
    def fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(xn, "fit", fit)
    code, _, err = _run(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 2
    _one_error_line(err, str(error))


@pytest.mark.parametrize("argv, message", [
    (["train", *TINY, "--out", "{tmp}/file.txt"], "not a folder"),
    (["train", *TINY, "--out", "/dev/null"], "not a folder"),
    (["train", *TINY, "--out", "{tmp}/file.txt/run"], "cannot write"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/x.npz"], "several arrays"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/junk.npy"], "not a readable .npy"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/words.npy"], "numeric array"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/nope.npy"], "no such file"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/ok.npy", "--output", "{tmp}/no/labels.npy"],
     "no folder"),
    (["predict", "{tmp}/m.xpnet", "--input", "{tmp}/ok.npy", "--output", "{tmp}"],
     "is a folder"),
    (["predict", "{tmp}/missing.xpnet", "--input", "{tmp}/ok.npy"], "no such checkpoint file"),
    (["eval", "{tmp}/file.txt"], "not a readable xpnet checkpoint"),
])
def test_file_errors_are_one_line(tmp_path, capsys, argv, message):
    xn.use("numpy")
    xn.save(tmp_path / "m.xpnet", xn.models.logistic(2, 2), data="xor")
    (tmp_path / "file.txt").write_text("not a folder")
    np.savez(tmp_path / "x.npz", a=np.zeros((2, 2)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    np.save(tmp_path / "ok.npy", np.zeros((2, 2), dtype=np.float32))
    code, _, err = _run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv],
                        "--backend", "numpy")
    assert code == 2
    _one_error_line(err, message)
    assert (tmp_path / "file.txt").read_text() == "not a folder"
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_unwritable_is_refused_before_training(capsys, monkeypatch):
    """/proc refuses new files even to root, for whom chmod would not."""
    monkeypatch.setattr(xn, "fit", lambda *a, **k: pytest.fail("trained anyway"))
    for argv in (["--out", "/proc/xpnet-run"], ["--out", "/proc", "--overwrite"]):
        code, _, err = _run(capsys, "train", *TINY, *argv)
        assert code == 2
        _one_error_line(err, "cannot write there")


def test_eval_and_predict_use_the_recorded_data_set(tmp_path, capsys):
    """spirals: 2 inputs like xor, so only the example count tells which set was used.
    (mnist1d would do too, but generating it takes about 10 s per call.)"""
    code, _, err = _run(capsys, "train", "--data", "spirals", "--hidden", "4", "--epochs", "1",
                        "--batch-size", "64", "--backend", "numpy", "--no-progress",
                        "--out", str(tmp_path))
    assert code == 0, err
    model = str(tmp_path / "model.xpnet")
    code, out, err = _run(capsys, "eval", model, "--backend", "numpy")
    assert code == 0, err
    assert "data: spirals" in out and "(600 examples)" in out
    code, out, err = _run(capsys, "eval", model, "--backend", "numpy", "--data", "xor")
    assert code == 0, err
    assert "(4 examples)" in out
    code, out, err = _run(capsys, "predict", model, "--backend", "numpy")
    assert code == 0, err
    assert len(out.strip().splitlines()[-1].split()) == 600


def test_eval_without_recorded_data_uses_digits(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    xn.use("numpy")
    xn.save(tmp_path / "m.xpnet", xn.models.logistic(64, 10))
    code, out, err = _run(capsys, "eval", str(tmp_path / "m.xpnet"), "--backend", "numpy")
    assert code == 0, err
    assert "data: digits" in out and "(450 examples)" in out


def test_environment_picks_the_backend(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XPNET_BACKEND", "bogus")
    monkeypatch.delenv("XPNET_DEVICE", raising=False)
    argv = [a for a in TINY if a not in ("--backend", "numpy")]
    code, _, err = _run(capsys, "train", *argv, "--out", str(tmp_path / "a"))
    assert code == 2
    _one_error_line(err, "XPNET_BACKEND='bogus'", "unknown backend")
    assert not (tmp_path / "a").exists()
    code, _, err = _run(capsys, "train", *argv, "--backend", "numpy", "--out", str(tmp_path / "b"))
    assert code == 0, err  # a flag wins over the environment

    monkeypatch.setenv("XPNET_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPNET_DEVICE", "device1")
    code, out, err = _run(capsys, "eval", str(tmp_path / "b" / "model.xpnet"))
    assert code == 0, err
    assert "backend: array_api_strict on device1" in out
    monkeypatch.setenv("XPNET_DEVICE", "nowhere")
    code, _, err = _run(capsys, "eval", str(tmp_path / "b" / "model.xpnet"))
    assert code == 2
    _one_error_line(err, "XPNET_DEVICE='nowhere'")


@pytest.mark.parametrize("argv", [
    ["--model", "transformer"], ["--optimizer", "rmsprop"], ["--schedule", "linear"],
    ["--activation", "gelu"], ["--data", "digits:extra"],
])
def test_bad_flags_fail_before_any_data_is_loaded(tmp_path, capsys, monkeypatch, argv):
    calls = []
    monkeypatch.setattr(datasets, "digits", lambda *a, **k: calls.append(a) or datasets.xor())
    code, _, err = _run(capsys, "train", "--backend", "numpy", "--epochs", "1", "--hidden", "4",
                        "--no-progress", "--out", str(tmp_path / "run"), *argv)
    assert code == 2
    _one_error_line(err, argv[1])
    assert calls == []
    assert not (tmp_path / "run").exists()
    code, _, err = _run(capsys, "train", "--backend", "numpy", "--epochs", "1", "--hidden", "4",
                        "--no-progress", "--out", str(tmp_path / "run"))
    assert code == 0 and len(calls) == 1, err  # the stand-in is the loader train uses


class _FakeComm:
    """A stand-in for MPICommunicator: rank 1 of 2, and an abort that returns."""

    rank, size, local_rank = 1, 2, 1
    aborted: list[int] = []

    def bcast_object(self, value, root=0):
        return value

    def abort(self, code=1):
        self.aborted.append(code)


@pytest.mark.parametrize("argv, message", [
    (["--model", "transformer"], "unknown model"),
    (["--data", "mnist:/no/such/dir"], "/no/such/dir"),
])
def test_an_error_on_one_rank_aborts_the_job(tmp_path, capsys, monkeypatch, argv, message):
    import xpnet.distributed

    monkeypatch.setattr(xpnet.distributed, "MPICommunicator", _FakeComm)
    monkeypatch.setattr(_FakeComm, "aborted", [])
    code, _, err = _run(capsys, "train", "--distributed", "--backend", "numpy", "--out",
                        str(tmp_path), *argv)
    assert code == 2
    _one_error_line(err, "rank 1", message)
    assert _FakeComm.aborted == [2]


def test_a_nan_loss_is_one_line_and_writes_no_model(tmp_path, capsys, monkeypatch):
    def fit(*args, **kwargs):
        raise FloatingPointError("the loss is nan at epoch 1")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(xn, "fit", fit)
    code, _, err = _run(capsys, "train", *TINY)
    assert code == 2
    _one_error_line(err, "the loss is nan")
    assert list(tmp_path.rglob("*.xpnet")) == []
    assert list((tmp_path / "runs").iterdir()) == []  # no empty run folder left behind
    monkeypatch.setenv("XPNET_DEBUG", "1")
    with pytest.raises(FloatingPointError):
        main(["train", *TINY])


def test_a_diverging_run_is_one_line_and_writes_no_model(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:  # else they would reach stderr
        warnings.simplefilter("always")
        code, _, err = _run(capsys, "train", *TINY, "--lr", "1e30", "--optimizer", "sgd",
                            "--schedule", "none", "--epochs", "3", "--out", str(tmp_path))
    assert [str(w.message) for w in caught] == []
    assert code == 2
    _one_error_line(err)
    assert not (tmp_path / "model.xpnet").exists()


def test_train_gru_reads_each_input_as_a_time_step(tmp_path, capsys):
    """--model gru: MNIST-1D's bidirectional GRU, here over xor's 2 steps; it solves xor,
    and eval rebuilds the GRU from the checkpoint."""
    code, out, err = _run(capsys, "train", "--data", "xor", "--model", "gru", "--epochs", "150",
                          "--batch-size", "4", "--lr", "0.05", "--schedule", "none",
                          "--backend", "numpy", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "1: GRU(1, 6, bidirectional=True)" in out
    assert "test accuracy: 1.0000 (4/4)" in out
    code, out, err = _run(capsys, "eval", str(tmp_path / "model.xpnet"), "--backend", "numpy")
    assert code == 0, err
    assert "1.0000" in out


def test_help_shows_every_option_with_its_default():
    """--epochs, --batch-size, --seed... had neither help nor default in --help."""
    import argparse

    parser = cli.make_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        for a in sub._actions:
            assert a.help, (name, a.dest)  # every option says what it is
            if a.option_strings and a.default is not None and not isinstance(
                    a.default, bool) and a.default is not argparse.SUPPRESS:
                assert f"(default: {a.default})" in text, (name, a.dest)
    train = " ".join(commands["train"].format_help().split())
    for shown in ("--epochs EPOCHS passes over the data (default: 40)",
                  "(default: 16)", "(default: 0)", "--threads THREADS",
                  "(default: 256,128)"):
        assert shown in train
