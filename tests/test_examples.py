"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xor_solves_on_a_fake_accelerator(capsys):
    code = _example("xor").main(["--backend", "array_api_strict", "--device", "device1"])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("solved") and "not solved" not in out
    rows = [line for line in out.splitlines() if "|" in line][1:]
    assert len(rows) == 4
    for row in rows:
        target, output = row.split("|")[1:]
        assert abs(float(target) - float(output)) < 0.1


def test_digits_mlp_example(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    code = _example("digits_mlp").main(["--backend", "numpy", "--epochs", "4",
                                        "--checkpoint", str(tmp_path / "d.xpnet")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "d.xpnet").exists()
    epoch, val = re.search(r"best checkpoint: epoch (\d+) of 4, validation accuracy "
                           r"([0-9.]+)", out).groups()
    assert 1 <= int(epoch) <= 4 and float(val) >= 0.9  # on the held-out tenth
    assert float(out.split("test accuracy ")[1].split()[0]) >= 0.9


def test_nielsen_example_on_bundled_digits(capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    code = _example("nielsen_mnist").main(["--backend", "numpy", "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "bundled 8x8 digits" in out
    assert float(out.split("test accuracy ")[1].split()[0]) > 0.3  # 10% is chance


def test_char_lm_learns_and_matches_pytorch(capsys):
    """A few steps on a slice of the standard library: the held-out bits per character
    fall well below the uniform log2(98) = 6.6, and PyTorch trained from the same
    weights on the same batches lands on the same figure (float32 rounding apart)."""
    pytest.importorskip("torch", reason="torch is not installed: no reference run")
    code = _example("char_lm").main(["--backend", "numpy", "--steps", "40", "--width", "32",
                                     "--length", "32", "--heads", "2", "--layers", "1",
                                     "--train-chars", "40000", "--val-chars", "8000"])
    out = capsys.readouterr().out
    assert code == 0
    ours = float(out.split("xpnet    held-out bits/char ")[1].split()[0])
    ref = float(out.split("pytorch  held-out bits/char ")[1].split()[0])
    assert ours < 5.0
    assert abs(ours - ref) < 0.01
    assert "sample:\ndef __init__(self" in out
