"""Checkpoints: portable across backends, exact resume, atomic, and strict on input."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import xpnet as xn


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def _model():
    return xn.Sequential(xn.Linear(5, 12), xn.Tanh(), xn.Linear(12, 3))


def test_save_on_any_backend_load_on_numpy(be, tmp_path):
    x, y = _data()
    model = _model()
    opt = xn.Adam(model, lr=0.01)
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=1, batch_size=32,
           progress=False)
    path = tmp_path / "m.xpnet"
    xn.save(path, model, optimizer=opt, note="hello")
    ck = xn.load_checkpoint(path, backend="numpy")
    assert ck.metadata == {"note": "hello"}
    ref = xn.to_numpy(model(be.asarray(x)))
    np.testing.assert_allclose(ck.model(x), ref, rtol=1e-5, atol=1e-6)
    assert ck.optimizer.steps == opt.steps == 3
    for a, b in zip(ck.optimizer.state["v"], opt.state["v"], strict=True):
        np.testing.assert_array_equal(a, xn.to_numpy(b))
    # and back onto the same backend and device
    again = xn.load(path, backend=be)
    np.testing.assert_allclose(xn.to_numpy(again(be.asarray(x))), ref, rtol=1e-6)
    assert xn.to_numpy(again[0].weight.value).dtype == np.float32


def _train(model, opt, epochs, initial_epoch=0):
    x, y = _data()
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=epochs,
           initial_epoch=initial_epoch, batch_size=10, progress=False, seed=5)


@pytest.mark.parametrize("kind", ["adam_cosine", "momentum", "dropout"])
def test_resume_is_exact_on_numpy(tmp_path, kind):
    def make_opt(model):
        if kind == "adam_cosine":
            return xn.Adam(model, lr=xn.CosineLR(0.01, total_steps=40))
        return xn.SGD(model, lr=0.05, momentum=0.9, nesterov=True)

    def make_model():
        if kind == "dropout":  # masks are keyed by (seed, epoch): resumed runs redraw them
            return xn.Sequential(xn.Linear(5, 12), xn.Tanh(), xn.Dropout(0.3), xn.Linear(12, 3))
        return _model()

    with xn.use("numpy"):
        xn.seed(0)
        straight = make_model()
        _train(straight, make_opt(straight), epochs=4)

        xn.seed(0)
        first = make_model()
        opt = make_opt(first)
        _train(first, opt, epochs=2)
        xn.save(tmp_path / "half.xpnet", first, optimizer=opt, epoch=2)
        xn.seed(0)  # as a new process would
        ck = xn.load_checkpoint(tmp_path / "half.xpnet")
        _train(ck.model, ck.optimizer, epochs=4, initial_epoch=ck.metadata["epoch"])
    for a, b in zip(straight.parameters(), ck.model.parameters(), strict=True):
        np.testing.assert_array_equal(a.value, b.value)


def test_loading_does_not_disturb_the_seeded_generator(tmp_path):
    with xn.use("numpy"):
        xn.save(tmp_path / "m.xpnet", _model())
        xn.seed(9)
        a = xn.Linear(3, 3).weight.value
        xn.seed(9)
        xn.load(tmp_path / "m.xpnet")
        b = xn.Linear(3, 3).weight.value
    np.testing.assert_array_equal(a, b)


def test_failed_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.xpnet"
    with xn.use("numpy"):
        model = _model()
        xn.save(path, model, epoch=1)
        before = path.read_bytes()
        model[0].weight.value = model[0].weight.value + 1

        real_savez = np.savez

        def crash_midway(f, **arrays):
            real_savez(f, **arrays)
            f.truncate(100)  # a partial write, then the "crash"
            raise OSError("disk full")

        monkeypatch.setattr(np, "savez", crash_midway)
        with pytest.raises(OSError, match="disk full"):
            xn.save(path, model, epoch=2)
        monkeypatch.setattr(np, "savez", real_savez)

        def no_rename(src, dst):
            raise OSError("rename failed")

        monkeypatch.setattr(os, "replace", no_rename)
        with pytest.raises(OSError, match="rename failed"):
            xn.save(path, model, epoch=3)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xpnet"]  # no temp files left
    assert xn.load_checkpoint(path).metadata["epoch"] == 1


def test_unserialisable_metadata_is_refused_before_writing(tmp_path):
    path = tmp_path / "m.xpnet"
    with xn.use("numpy"):
        model = _model()
        xn.save(path, model)
        before = path.read_bytes()
        with pytest.raises(xn.CheckpointError, match="not JSON-serialisable"):
            xn.save(path, model, bad=object())
    assert path.read_bytes() == before


def _good(tmp_path):
    path = tmp_path / "good.xpnet"
    with xn.use("numpy"):
        xn.save(path, _model(), optimizer=None)
    return path


def test_truncated_file(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(xn.CheckpointError, match="truncated, corrupted"):
        xn.load(path)


def test_corrupted_bytes(tmp_path):
    path = _good(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/0.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the stored array
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(xn.CheckpointError, match="corrupted"):
        xn.load(path)


def test_foreign_files(tmp_path):
    junk = tmp_path / "junk.xpnet"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(xn.CheckpointError, match="not a readable xpnet checkpoint"):
        xn.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(xn.CheckpointError, match="no __meta__"):
        xn.load(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "xpnet-checkpoint"}], dtype=object))
    with pytest.raises(xn.CheckpointError):
        xn.load(pickled)  # object arrays would need pickle: refused, never executed
    with pytest.raises(xn.CheckpointError, match="no such checkpoint file"):
        xn.load(tmp_path / "missing.xpnet")


def test_architecture_and_arrays_must_agree(tmp_path):
    path = _good(tmp_path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/0.weight"] = np.zeros((3, 3), dtype=np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(xn.CheckpointError, match=r"0.weight.*shape \(3, 3\).*expects \(12, 5\)"):
        xn.load(bad)
    arrays["__meta__"] = np.frombuffer(
        arrays["__meta__"].tobytes().replace(b"Linear", b"Lineaz"), dtype=np.uint8)
    np.savez(bad, **arrays)
    with pytest.raises(xn.CheckpointError, match="unknown layer type 'Lineaz'"):
        xn.load(bad)
