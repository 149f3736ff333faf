"""What a user reads: summary tables and epoch lines under 80 columns, with units and
full metric names; results on standard output; summary's totals."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn
from xpnet.train import Progress

ROOT = Path(__file__).resolve().parent.parent


def _readme_models():
    """The models the README and ``xpnet train --model`` show."""
    tour = xn.Sequential(xn.Linear(64, 256, init="he"), xn.ReLU(),
                         xn.Linear(256, 128, init="he"), xn.ReLU(), xn.Linear(128, 10))
    return [(tour, None), (xn.models.mlp(64, [256, 128], 10), None),
            (xn.models.logistic(40, 10), None), (xn.models.residual_mlp(40, 100, 10), None),
            (xn.models.mnist1d_cnn(40, 25, 10), (40,)), (xn.models.mnist1d_gru(40, 6, 10), (40,))]


def test_summary_of_every_readme_model_fits_80_columns():
    with xn.use("numpy"):
        for model, shape in _readme_models():
            text = model.summary(input_shape=shape, print_fn=None)
            assert all(len(line) < 80 for line in text.splitlines()), text
            assert "?" not in text


def test_summary_of_the_tour_model():
    with xn.use("numpy"):
        model = _readme_models()[0][0]
        text = model.summary(print_fn=None)
    rule = "-" * 79
    assert text.splitlines() == [
        "Layer" + " " * 53 + "Output shape  Param #", rule,
        "0: Linear(64, 256)" + " " * 40 + "(N, 256)       16,640",
        "1: ReLU()" + " " * 49 + "(N, 256)            0",
        "2: Linear(256, 128)" + " " * 39 + "(N, 128)       32,896",
        "3: ReLU()" + " " * 49 + "(N, 128)            0",
        "4: Linear(128, 10)" + " " * 40 + "(N, 10)         1,290",
        rule, "Total params: 50,826", "Trainable params: 50,826", "Non-trainable params: 0"]


def test_summary_of_a_float64_model_with_running_statistics():
    """A float64 model failed (a float32 probe); BatchNorm's running mean and variance are
    non-trainable: 4*3 + 3 + 3 + 3 trainable, 3 + 3 not."""
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3, dtype="float64"),
                              xn.BatchNorm1D(3, dtype="float64"))
        text = model.summary(print_fn=None)
    lines = text.splitlines()
    assert lines[2].startswith("0: Linear(4, 3)") and lines[2].endswith("(N, 3)             15")
    assert lines[3].startswith("1: BatchNorm1D(3)") and lines[3].endswith("12")
    assert lines[-3:] == ["Total params: 27", "Trainable params: 21", "Non-trainable params: 6"]


def test_summary_counts_frozen_parameters_as_non_trainable():
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(10, 5), xn.ReLU(), xn.Linear(5, 2))
        for p in list(model.layers())[1].parameters():
            p.trainable = False
        text = model.summary(print_fn=None)
    assert text.splitlines()[-3:] == ["Total params: 67", "Trainable params: 12",
                                      "Non-trainable params: 55"]


def test_summary_says_input_shape_is_needed_for_question_marks():
    with xn.use("numpy"):
        model = xn.models.mnist1d_cnn(40, 25, 10)
        text = model.summary(print_fn=None)
        assert "Output shapes are ? without input_shape=" in text
        assert all(line.split()[-2] == "?" for line in text.splitlines()[2:11])
        assert all(len(line) < 80 for line in text.splitlines())
        shaped = model.summary(input_shape=(40,), print_fn=None)
    assert "input_shape=" not in shaped and "(N, 25, 19)" in shaped
    assert "1: Conv1D(1, 25, 5, stride=2, padding=1)" in shaped


def test_a_nested_model_is_one_row():
    with xn.use("numpy"):
        block = xn.Sequential(xn.Linear(8, 4), xn.ReLU())
        model = xn.Sequential(block, xn.Linear(4, 2))
        text = model.summary(print_fn=None)
    assert text.splitlines()[2].startswith("0: Sequential(...)  ")
    assert text.splitlines()[2].endswith("(N, 4)             36")
    assert "Total params: 46" in text


def test_a_long_layer_description_wraps_in_its_column():
    with xn.use("numpy"):
        x = xn.Input(shape=(8,))
        a = xn.Linear(8, 8, name="a_rather_long_layer_name_for_the_first_projection")(x)
        b = xn.Linear(8, 8, name="another_rather_long_layer_name_on_the_other_path")(x)
        model = xn.Graph(inputs=x, outputs=xn.Add()(a, b))
        text = model.summary(print_fn=None)
    assert all(len(line) < 80 for line in text.splitlines()), text
    assert "Trainable params: 144" in text


def _epoch_lines(metrics, epochs=2, initial_epoch=0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    out = io.StringIO()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 8), xn.ReLU(), xn.Linear(8, 6))
        sys_stdout, sys.stdout = sys.stdout, out
        try:
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.Adam(model),
                   epochs=epochs, initial_epoch=initial_epoch, batch_size=16,
                   validation_data=(x, y), metrics=metrics, progress="lines")
        finally:
            sys.stdout = sys_stdout
    return out.getvalue().splitlines()


def test_epoch_lines_are_a_table_under_80_columns_with_units():
    lines = _epoch_lines(("accuracy",))
    assert len(lines) == 3
    assert lines[0].split() == ["loss", "accuracy", "val_loss", "val_accuracy", "time",
                                "samples/s"]
    for line, n in zip(lines[1:], (1, 2), strict=True):
        words = line.split()
        assert words[:2] == ["epoch", f"{n}/2"] and words[7] in ("s", "ms"), line
        assert float(words[6]) >= 0 and int(words[8].replace(",", "")) > 0
    assert all(len(line) < 80 for line in lines)
    # the columns line up under their headings: cells end where their headings end
    def ends(line):  # cells are parted by two spaces or more ("91.3 ms" is one cell)
        return [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)]

    assert ends(lines[0]) == ends(lines[1])[1:] == ends(lines[2])[1:]


def test_epoch_lines_with_several_metrics_wrap_under_80_columns():
    top2 = xn.metrics.TopKAccuracy(2, name="top_2_accuracy")
    lines = _epoch_lines(("accuracy", "top_k_accuracy", top2), epochs=12, initial_epoch=10)
    assert all(len(line) < 80 for line in lines), lines
    text = "\n".join(lines)
    for name in ("loss", "accuracy", "top_k_accuracy", "top_2_accuracy", "val_loss",
                 "val_accuracy", "val_top_k_accuracy", "val_top_2_accuracy"):
        assert f" {name} " in text.replace("\n", " ")
    assert lines[0].startswith("epoch 11/12  loss ")
    starts = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert starts[0] == 0 and len(starts) == 2
    assert all(line.startswith(" " * 13) for i, line in enumerate(lines) if i not in starts)
    assert re.search(r" [0-9.]+ m?s\n", text) and "samples/s" in text  # the time's unit


def test_the_bar_shows_full_metric_names(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed (the data extra)")
    bar = Progress("bar", epochs=1, steps=4, stream=io.StringIO())
    bar.start(0)
    bar.step(2, {"loss": 0.123456, "accuracy": 0.5})
    assert bar.bar.postfix == "loss=0.123, accuracy=0.500"
    bar.end(0, {"loss": 0.1, "time": 1.0})


def test_cli_epoch_lines_go_to_stdout_while_the_bar_is_on_stderr(tmp_path):
    """`xpnet train | tee log`: stderr a terminal (so the bar shows there), stdout a pipe;
    the epoch lines and results are in the pipe."""
    pty = pytest.importorskip("pty")
    pytest.importorskip("tqdm", reason="tqdm is not installed (the data extra)")
    master, slave = pty.openpty()
    seen = []

    def drain():  # the bar's output, read so the terminal's buffer never fills
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "xpnet.cli", "train", "--data", "xor", "--hidden", "4",
             "--epochs", "2", "--batch-size", "4", "--backend", "numpy", "--out",
             str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=slave, env=env,
            timeout=300)
    finally:
        os.close(slave)
        reader.join(5)
        os.close(master)
    out = done.stdout.decode()
    assert done.returncode == 0, out
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("epoch ")] == [
        ["epoch", "1/2"], ["epoch", "2/2"]]
    assert any(line.startswith("test accuracy: ") for line in lines)
    table = lines[lines.index(next(x for x in lines if x.split()[:1] == ["loss"])):][:3]
    assert all(len(line) < 80 for line in table), out
    assert b"epoch 2/2 " not in b"".join(seen)  # the terminal had only the bar


_PLOT = """
import io, sys
import xpnet as xn
h = xn.History()
h.append(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.4})
h.append(1, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.7})
png = h.plot()._repr_png_()
import matplotlib.image
pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
print(png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", pixels.shape[:2], "matplotlib.pyplot" in sys.modules)
"""


def test_history_plot_displays_in_a_fresh_notebook_kernel():
    """A fresh kernel has no PNG formatter for Figure until pyplot is imported; the figure
    plot() returns renders itself (_repr_png_, through Agg) and imports no pyplot."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    done = subprocess.run([sys.executable, "-c", _PLOT], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "(360,", "1000)", "False"]  # 10 x 3.6 in, 100 dpi


def test_ipython_shows_the_history_plot_as_an_image():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    formatters = pytest.importorskip("IPython.core.formatters",
                                     reason="IPython is not installed")
    h = xn.History()
    h.append(0, {"loss": 1.0})
    data, _ = formatters.DisplayFormatter().format(h.plot())
    assert data["image/png"][:4] == b"\x89PNG"
