"""MNIST-1D's reference models against accuracy floors, on NumPy.

The paper reports 32% (logistic), 68% (MLP) and 94% (CNN) after 6000 Adam steps.
The default run trains 1500 steps against looser floors; the ``slow`` run is the
paper's full setting against the floors 30% / 63% / 90%.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import xpnet as xn

pytest.importorskip("mnist1d", reason="mnist1d is not installed (pip install 'xpnet[data]')")

_spec = importlib.util.spec_from_file_location(
    "mnist1d_paper", Path(__file__).resolve().parent.parent / "examples" / "mnist1d_paper.py")
paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper)


@pytest.fixture(scope="module")
def data():
    return xn.datasets.mnist1d()


QUICK = {"logistic": 0.28, "mlp": 0.55, "cnn": 0.80}
FULL = {"logistic": 0.30, "mlp": 0.63, "cnn": 0.90}


@pytest.mark.parametrize("kind", ["logistic", "mlp", "cnn"])
def test_quick(data, kind):
    with xn.use("numpy"):
        acc, _ = paper.train(kind, data, steps=1500, seed=0)
    assert acc >= QUICK[kind], f"{kind}: {acc:.3f} < {QUICK[kind]}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "mlp", "cnn"])
def test_paper_setting(data, kind):
    with xn.use("numpy"):
        acc, _ = paper.train(kind, data, steps=6000, seed=0)
    assert acc >= FULL[kind], f"{kind}: {acc:.3f} < {FULL[kind]}"


def test_cli_trains_the_cnn(tmp_path, capsys):
    from xpnet.cli import main

    code = main(["train", "--data", "mnist1d", "--model", "cnn", "--epochs", "2",
                 "--batch-size", "100", "--lr", "0.01", "--schedule", "none", "--backend",
                 "numpy", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Conv1D" in out and "test accuracy:" in out
    acc = float(out.split("test accuracy: ")[1].split()[0])
    assert acc > 0.3  # 10% is chance; two epochs already do far better
    model = xn.load(tmp_path / "model.xpnet", backend="numpy")
    assert any(isinstance(layer, xn.Conv1D) for layer in model.layers())
