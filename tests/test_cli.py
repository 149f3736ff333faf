"""The xpnet command: outputs, files written, and exit status 2 with one line on errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from xpnet.cli import main


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
    assert history["val_accuracy"][-1] == pytest.approx(acc, abs=5e-5)

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


def test_info_lists_every_backend(capsys):
    code, out, _ = _run(capsys, "info")
    assert code == 0
    for name in ("numpy", "cupy", "torch", "jax", "array_api_strict"):
        assert re.search(rf"^\s+{name}\s+(usable|not usable)", out, re.M), name


@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--data", "nope"], "unknown data set 'nope'"),
    (["train", "--data", "mnist:/no/such/dir"], "/no/such/dir: not a folder"),
    (["train", "--hidden", "12,x"], "--hidden expects widths"),
    (["train", "--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    (["train", "--epochs", "0"], "--epochs and --batch-size must be at least 1"),
    (["train", "--backend", "cupy"], "cupy"),
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


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "xpnet.cli", "train", "--oops"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: xpnet: unrecognized arguments")
