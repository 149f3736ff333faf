"""Offline data sets and the IDX reader (on small files the tests write)."""

from __future__ import annotations

import gzip
import random
import struct

import numpy as np
import pytest

import xpnet as xn
from xpnet.datasets import DatasetError, read_idx


def _write_idx(path, array, code=0x08, gz=False):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_set(root, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, gz=gz)
        _write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        parts[split] = (images, labels)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader(tmp_path, gz):
    parts = _write_set(tmp_path, gz=gz)
    x_tr, y_tr, x_te, y_te = xn.datasets.mnist(tmp_path)
    assert x_tr.shape == (6, 784) and x_tr.dtype == np.float32
    assert y_tr.dtype == np.int64 and x_te.shape == (4, 784)
    np.testing.assert_allclose(x_tr[2], parts["train"][0][2].reshape(-1) / 255.0)
    np.testing.assert_array_equal(y_te, parts["t10k"][1])
    images = xn.datasets.fashion_mnist(tmp_path, flatten=False)[0]
    assert images.shape == (6, 1, 28, 28)


def test_idx_reader_other_dtypes(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a.idx", a, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)


def test_idx_errors_name_the_file(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: missing"):
        xn.datasets.mnist(tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(DatasetError, match=r"bad: not an IDX file .*12 34 56 78"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros((3, 4), dtype=np.uint8))
    short.write_bytes(short.read_bytes()[:-2])
    with pytest.raises(DatasetError, match=r"short: expected 24 bytes for shape \(3, 4\).*got 22"):
        read_idx(short)
    with pytest.raises(DatasetError, match="not a folder"):
        xn.datasets.mnist(tmp_path / "nowhere")


def test_digits_split():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    x_tr, y_tr, x_te, y_te = xn.datasets.digits()
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # stratified: every class has about a quarter of its examples in the test set
    for c in range(10):
        frac = np.sum(y_te == c) / (np.sum(y_te == c) + np.sum(y_tr == c))
        assert abs(frac - 0.25) < 0.01
    again = xn.datasets.digits()
    np.testing.assert_array_equal(again[1], y_tr)


def test_mnist1d_restores_global_random_state():
    pytest.importorskip("mnist1d", reason="mnist1d is not installed")
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    x_tr, y_tr, x_te, y_te = xn.datasets.mnist1d()
    assert (np.random.random(), random.random()) == (expect_np, expect_py)
    assert x_tr.shape == (4000, 40) and x_te.shape == (1000, 40)
    assert sorted(np.unique(y_tr)) == list(range(10)) and x_tr.dtype == np.float32


def test_small_sets():
    x, y, _, _ = xn.datasets.xor()
    np.testing.assert_array_equal(y, (x[:, 0] != x[:, 1]).astype(np.int64))
    x_tr, y_tr, x_te, y_te = xn.datasets.spirals(100, seed=1)
    assert x_tr.shape == (240, 2) and x_te.shape == (60, 2)
    assert set(np.unique(y_tr)) == {0, 1, 2}
    np.testing.assert_array_equal(xn.datasets.spirals(100, seed=1)[0], x_tr)


def test_missing_data_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import now fails
    with pytest.raises(ImportError, match=r'pip install "xpnet\[data\]"'):
        xn.datasets.digits()
