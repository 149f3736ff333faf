"""Checkpoints: portable across backends, exact resume, atomic, and strict on input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

import xpnet as xn
import xpnet.backend
import xpnet.checkpoint
from xpnet.layers import LAYER_TYPES, declared_state_of, layer_config


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


@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
@pytest.mark.parametrize("kind", ["adam_cosine", "momentum", "dropout"])
def test_resume_is_exact_on_numpy(tmp_path, kind, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors is not installed")

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
        xn.save(tmp_path / f"half{suffix}", first, optimizer=opt, epoch=2)
        xn.seed(0)  # as a new process would
        ck = xn.load_checkpoint(tmp_path / f"half{suffix}")
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


# -- helpers to damage or craft a checkpoint -------------------------------------------
def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _meta(arrays):
    return json.loads(arrays["__meta__"].tobytes())


def _write(path, arrays, meta=None):
    arrays = dict(arrays)
    if meta is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:  # np.savez would append ".npz" to a path
        np.savez(f, **arrays)
    return path


def _with_adam(tmp_path):
    """A checkpoint of _model() with Adam's state (m and v) after a few steps."""
    path = tmp_path / "adam.xpnet"
    with xn.use("numpy"):
        model = _model()
        opt = xn.Adam(model, lr=0.01)
        _train(model, opt, epochs=1)
        xn.save(path, model, optimizer=opt, epoch=1)
    return path


def _never_build(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was refused")

    monkeypatch.setattr(xpnet.checkpoint, "build_layer", fail)


# -- 1: concurrent saves and stale temporary files ---------------------------------------
def test_concurrent_saves_to_one_path_never_mix(tmp_path):
    path = tmp_path / "m.xpnet"
    with xn.use("numpy"):
        models = [xn.Sequential(xn.Linear(64, 64), xn.Tanh(), xn.Linear(64, 8))
                  for _ in range(2)]
    expected = [[xn.to_numpy(p.value) for p in m.parameters()] for m in models]
    errors = []

    def save(model, barrier):
        try:
            barrier.wait()
            xn.save(path, model)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    for _ in range(25):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=save, args=(m, barrier)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        loaded = [xn.to_numpy(p.value) for p in xn.load(path, backend="numpy").parameters()]
        assert any(all(np.array_equal(a, b) for a, b in zip(loaded, want, strict=True))
                   for want in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xpnet"]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, live = child.pid, os.getpid()
    names = [f".m.xpnet.{dead}.140.0a1b.tmp", f".m.xpnet.{dead}.tmp",  # this and 0.2's form
             f".m.xpnet.{live}.140.0a1b.tmp", f".other.xpnet.{dead}.1.2.tmp", "m.xpnet.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    with xn.use("numpy"):
        xn.save(tmp_path / "m.xpnet", _model())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".m.xpnet.{live}.140.0a1b.tmp", f".other.xpnet.{dead}.1.2.tmp", "m.xpnet",
         "m.xpnet.tmp"])


def _small_checkpoint(path):
    """A one-layer model with momentum state, trained a step and saved to ``path``: the
    file's bytes and what loading it gives."""
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(2, 2))
        opt = xn.SGD(model, lr=0.1, momentum=0.9)
        x, y = _data(8)
        xn.fit(model, x[:, :2], y % 2, loss=xn.SoftmaxCrossEntropy(), optimizer=opt,
               epochs=1, batch_size=8, progress=False)
        xn.save(path, model, optimizer=opt, epoch=1)
    return path.read_bytes(), xn.load_checkpoint(path, backend="numpy")


# -- 2: damage raises CheckpointError and nothing else -----------------------------------
def test_bit_flips_load_identical_weights_or_raise_checkpoint_error(tmp_path):
    path = tmp_path / "small.xpnet"
    data, want = _small_checkpoint(path)
    bad = tmp_path / "flipped.xpnet"
    loaded = refused = 0
    for i in range(len(data)):
        for bit in {i % 8, (i * 5 + 3) % 8}:
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            bad.write_bytes(bytes(flipped))
            try:
                ck = xn.load_checkpoint(bad, backend="numpy")
            except xn.CheckpointError:
                refused += 1
                continue
            loaded += 1
            for a, b in zip(ck.model.parameters(), want.model.parameters(), strict=True):
                np.testing.assert_array_equal(a.value, b.value)
            for a, b in zip(ck.optimizer.state["momentum"], want.optimizer.state["momentum"],
                            strict=True):
                np.testing.assert_array_equal(a, b)
            assert (ck.optimizer.steps, ck.metadata) == (want.optimizer.steps, want.metadata)
    assert refused > len(data) and loaded > 0  # both outcomes were met


@pytest.mark.parametrize("field, value, error", [
    (10, 1, "entry 'param/0.weight' uses zip compression method 1, expected stored"),
    (10, 12, "entry 'param/0.weight' uses zip compression method 12, expected stored"),
    (8, 0x01, "RuntimeError: .* is encrypted"),
    (8, 0x40, r"NotImplementedError: strong encryption"),
    (6, 99, r"NotImplementedError: zip file version 9.9"),
])
def test_damaged_zip_headers_raise_checkpoint_error(tmp_path, field, value, error):
    path = _good(tmp_path)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # the central directory's entry of param/0.weight
    data[central + field:central + field + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(xn.CheckpointError, match=error):
        xn.load(path)


def test_npy_file_is_refused(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((12, 5), dtype=np.float32))
    with pytest.raises(xn.CheckpointError, match="a single .npy array, not an xpnet checkpoint"):
        xn.load(path)


def _set(keys, value):
    """A change to the description: the entry at ``keys`` becomes ``value``."""
    def change(meta):
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


LINEAR0 = ("model", "config", "layers", 0, "config")
CONFIG_CASES = {
    "model a list": (_set(("model",), []), r"'model' is \[\] \(array\), expected an object"),
    "params a string": (_set(("params",), "0.weight"), r"'params' is '0.weight' \(string\)"),
    "params naming more": (_set(("params",), ["0.weight", "0.bias", "2.weight", "2.bias", "5.w"]),
                           r"it lists \['5.w'\], which the architecture does not declare"),
    "params naming less": (_set(("params",), ["0.weight", "2.weight", "2.bias"]),
                           r"parameter list does not match the architecture: it lacks "
                           r"\['0.bias'\]$"),
    "metadata a list": (_set(("metadata",), [1]), r"'metadata' is \[1\] \(array\)"),
    "format_version a string": (_set(("format_version",), "1"),
                                r"format_version is '1' \(string\), expected an integer"),
    "layers an object": (_set(("model", "config", "layers"), {"0": 1}),
                         r"model config \(Sequential\) layers is \{'0': 1\} \(object\)"),
    "layer a string": (_set(("model", "config", "layers", 0), "Linear"),
                       r"model config layers\[0\] is 'Linear' \(string\), expected an object"),
    "config a list": (_set(("model", "config", "layers", 0, "config"), [5, 12]),
                      r"layers\[0\] \(Linear\) config is \[5, 12\] \(array\)"),
    "in_features 3.7": (_set(LINEAR0 + ("in_features",), 3.7),
                        r"model config layers\[0\] \(Linear\) in_features is 3.7 \(number\), "
                        r"expected int"),
    "in_features 5.0": (_set(LINEAR0 + ("in_features",), 5.0), r"in_features is 5.0 \(number\)"),
    "in_features true": (_set(LINEAR0 + ("in_features",), True),
                         r"in_features is True \(boolean\), expected int"),
    "in_features a string": (_set(LINEAR0 + ("in_features",), "5"), r"in_features is '5'"),
    "bias a string": (_set(LINEAR0 + ("bias",), "yes"), r"bias is 'yes' \(string\), expected bool"),
    "init a number": (_set(LINEAR0 + ("init",), 3), r"init is 3 \(integer\), expected str"),
    "dtype float16": (_set(LINEAR0 + ("dtype",), "float16"),
                      r"\(Linear\) dtype is 'float16' \(string\), expected float32 or float64"),
    "an unknown entry": (_set(LINEAR0 + ("device",), "cuda:0"),
                         r"\(Linear\) has unknown entry 'device'"),
    "a missing entry": (lambda m: m["model"]["config"]["layers"][0]["config"].pop("in_features"),
                        r"\(Linear\) lacks entry 'in_features'"),
}
OPT_CASES = {
    "optimizer a number": (_set(("optimizer",), 3), r"'optimizer' is 3 \(integer\)"),
    "steps a string": (_set(("optimizer", "steps"), "3"), r"optimizer steps is '3' \(string\)"),
    "steps negative": (_set(("optimizer", "steps"), -1), r"optimizer steps is -1, expected >= 0"),
    "lr a string": (_set(("optimizer", "lr"), "0.1"), r"optimizer lr is '0.1' \(string\)"),
    "lr zero": (_set(("optimizer", "lr"), 0), r"optimizer lr is 0 \(integer\), expected a pos"),
    "lr NaN": (_set(("optimizer", "lr"), float("nan")), r"optimizer lr is nan"),
    "params an object": (_set(("optimizer", "params"), {"a": 1}), r"optimizer params is \{"),
    "betas a number": (_set(("optimizer", "config", "betas"), 0.9),
                       r"optimizer config betas is 0.9 \(number\), expected tuple"),
    "betas of three": (_set(("optimizer", "config", "betas"), [0.9, 0.9, 0.9]),
                       r"optimizer config betas is \[0.9, 0.9, 0.9\]"),
    "type a number": (_set(("optimizer", "type"), 5), r"optimizer type is 5 \(integer\)"),
    "schedule config": (_set(("optimizer", "lr"), {"schedule": "StepLR",
                                                   "config": {"lr": 0.1, "step_size": "x"}}),
                        r"optimizer lr config step_size is 'x' \(string\), expected int"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES) + list(OPT_CASES))
def test_description_of_wrong_json_types_is_refused(tmp_path, monkeypatch, case):
    change, error = {**CONFIG_CASES, **OPT_CASES}[case]
    arrays = _arrays(_with_adam(tmp_path))
    meta = _meta(arrays)
    change(meta)
    bad = _write(tmp_path / "bad.xpnet", arrays, meta)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=error):
        xn.load_checkpoint(bad)


def test_deeply_nested_description_is_refused(tmp_path, monkeypatch):
    arrays = _arrays(_good(tmp_path))
    arrays["__meta__"] = np.frombuffer(b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                       dtype=np.uint8)
    with pytest.raises(xn.CheckpointError, match="description is corrupted.*RecursionError"):
        xn.load(_write(tmp_path / "deep.xpnet", arrays))
    spec = {"type": "Tanh", "config": {}}
    for _ in range(100):
        spec = {"type": "Sequential", "config": {"layers": [spec]}}
    meta = {**_meta(_arrays(_good(tmp_path))), "model": spec, "params": []}
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=r"nest more than 64 deep"):
        xn.load(_write(tmp_path / "nested.xpnet", {}, meta))


@pytest.mark.parametrize("make, error", [
    (lambda: np.zeros((12, 5), dtype=np.float16), "dtype float16, expected float32 or float64"),
    (lambda: np.full((12, 5), "x"), "dtype <U1, expected float32 or float64"),
    (lambda: np.zeros((12, 5), dtype=np.int64), "dtype int64, expected float32 or float64"),
    (lambda: np.zeros((12, 5), dtype=bool), "dtype bool, expected float32 or float64"),
    (lambda: np.zeros((12, 5), dtype=">f4"), "dtype >f4, expected float32 or float64"),
    (lambda: np.empty((12, 5), dtype=object), "dtype |O, expected float32 or float64"),
    (lambda: np.zeros((12, 5), dtype=np.float64),
     "has dtype float64, the architecture declares float32"),
])
def test_weights_of_other_dtypes_are_refused(tmp_path, monkeypatch, make, error):
    arrays = _arrays(_good(tmp_path))
    arrays["param/0.weight"] = make()
    bad = _write(tmp_path / "bad.xpnet", arrays)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=f"'param/0.weight'.*{error}".replace("|", r"\|")):
        xn.load(bad)


def test_float64_models_load_as_float64(tmp_path):
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(5, 3, dtype="float64"), xn.BatchNorm1D(3, dtype="float64"))
        xn.save(tmp_path / "m.xpnet", model)
    again = xn.load(tmp_path / "m.xpnet", backend="numpy")
    for (name, a), (_, b) in zip(again.named_state(), model.named_state(), strict=True):
        assert a.value.dtype == np.float64, name
        np.testing.assert_array_equal(a.value, b.value)


def test_models_that_load_cannot_rebuild_are_not_saved(tmp_path):
    class _Scale(xn.Layer):  # a leading underscore: not in the registry
        def forward(self, x, *, train=True):
            return 2 * x

    with xn.use("numpy"):
        with pytest.raises(xn.CheckpointError, match=r"save .*model config layers\[1\]: "
                                                     r"unknown layer type '[^']*_Scale'"):
            xn.save(tmp_path / "m.xpnet", xn.Sequential(xn.Linear(2, 2), _Scale()))
    assert list(tmp_path.iterdir()) == []


# -- 3: the optimizer must fit the model -------------------------------------------------
def test_optimizer_over_some_parameters_is_refused(tmp_path):
    arrays = _arrays(_with_adam(tmp_path))
    meta = _meta(arrays)
    meta["optimizer"]["params"].remove("2.bias")
    del arrays["opt/m/2.bias"], arrays["opt/v/2.bias"]
    bad = _write(tmp_path / "bad.xpnet", arrays, meta)
    with pytest.raises(xn.CheckpointError, match=r"optimizer holds 3 parameter\(s\), expected "
                                                 r"the model's 4 trainable ones: it lacks "
                                                 r"\['2.bias'\]"):
        xn.load_checkpoint(bad)
    with xn.use("numpy"):  # and such a checkpoint is never written
        model = _model()
        with pytest.raises(xn.CheckpointError, match=r"save .*it lacks \['2.weight', '2.bias'\]"):
            xn.save(tmp_path / "partial.xpnet", model, optimizer=xn.SGD(model[0].parameters()))
    assert not (tmp_path / "partial.xpnet").exists()


@pytest.mark.parametrize("change, error", [
    (lambda a: a.update({"opt/m/0.weight": np.zeros((3, 3), np.float32)}),
     r"array 'opt/m/0.weight' has shape \(3, 3\), the architecture expects \(12, 5\)"),
    (lambda a: a.update({"opt/v/0.bias": np.zeros(12, np.float64)}),
     r"array 'opt/v/0.bias' has dtype float64, the architecture declares float32"),
    (lambda a: a.pop("opt/v/2.weight"),
     r"Adam state of '2.weight' has slots \['m'\], expected all of \['m', 'v'\] or none"),
    (lambda a: a.update({"opt/momentum/0.weight": np.zeros((12, 5), np.float32)}),
     r"unexpected entry 'opt/momentum/0.weight'"),
])
def test_optimizer_state_arrays_must_fit(tmp_path, monkeypatch, change, error):
    arrays = _arrays(_with_adam(tmp_path))
    change(arrays)
    bad = _write(tmp_path / "bad.xpnet", arrays)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=error):
        xn.load_checkpoint(bad)


# -- 4: declared shapes are checked before anything is allocated -------------------------
def test_huge_declared_shapes_are_refused_before_building(tmp_path, monkeypatch):
    arrays = _arrays(_good(tmp_path))
    meta = _meta(arrays)
    meta["model"]["config"]["layers"][0]["config"].update(in_features=60000, out_features=60000)
    bad = _write(tmp_path / "bomb.xpnet", arrays, meta)
    assert bad.stat().st_size < 4096
    _never_build(monkeypatch)  # building would allocate 27 GiB
    with pytest.raises(xn.CheckpointError, match=r"'param/0.weight' has shape \(12, 5\), the "
                                                 r"architecture expects \(60000, 60000\)"):
        xn.load(bad)


def test_array_headers_declaring_more_than_the_file_holds_are_refused(tmp_path):
    good = _good(tmp_path)
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (60000, 60000)})
    members["param/0.weight.npy"] = header.getvalue() + b"\0" * 240
    bad = tmp_path / "bomb.xpnet"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    tracemalloc.start()
    try:
        with pytest.raises(xn.CheckpointError) as refused:
            xn.load(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # not the 13 GiB the header asks for
    assert refused.match(r"'param/0.weight' declares shape \(60000, 60000\) \(14400000000 "
                         r"bytes of data\), but holds 240 bytes")


def _graph_model():
    inp = xn.Input(shape=(6,))
    h = xn.Linear(6, 4)(inp)
    side = xn.Sequential(xn.Linear(4, 4, bias=False), xn.BatchNorm1D(4))(h)
    joined = xn.Add()(xn.Tanh()(h), side)
    return xn.Graph(inputs=inp, outputs=xn.Linear(4, 2)(joined))


@pytest.mark.parametrize("make", [
    lambda: xn.Sequential(xn.Conv1D(2, 3, 3), xn.BatchNorm1D(3), xn.ReLU(), xn.Flatten(),
                          xn.Sequential(xn.Linear(12, 4), xn.Tanh(), xn.Linear(4, 2))),
    lambda: xn.Sequential(xn.Conv2D(1, 2, (3, 2), bias=False), xn.BatchNorm2D(2), xn.Flatten()),
    _graph_model,
    lambda: xn.Sequential(xn.Tanh(), _graph_model(), xn.Linear(2, 3, dtype="float64")),
])
def test_declared_state_names_match_named_state(tmp_path, make):
    with xn.use("numpy"):
        model = make()
        xn.save(tmp_path / "m.xpnet", model)
    meta = _meta(_arrays(tmp_path / "m.xpnet"))
    declared = declared_state_of(meta["model"])
    assert list(declared) == [name for name, _ in model.named_state()]
    assert declared == {name: (p.shape, str(p.value.dtype)) for name, p in model.named_state()}
    again = xn.load(tmp_path / "m.xpnet", backend="numpy")
    for (n, a), (m, b) in zip(again.named_state(), model.named_state(), strict=True):
        assert n == m
        np.testing.assert_array_equal(a.value, b.value)


def test_graph_descriptions_are_checked(tmp_path, monkeypatch):
    with xn.use("numpy"):
        xn.save(tmp_path / "g.xpnet", _graph_model())
    arrays = _arrays(tmp_path / "g.xpnet")
    _never_build(monkeypatch)
    cases = [
        (("output",), 99, r"model config \(Graph\) output is 99, expected a node index"),
        (("inputs",), [], r"model config \(Graph\) inputs is \[\], expected distinct input"),
        (("nodes", 1, "inputs"), [5], r"\(Graph\) nodes\[1\] reads nodes \[5\], expected "
                                      r"indices of earlier nodes \(0 to 0\)"),
        (("nodes", 0, "input_shape"), [0], r"nodes\[0\] is an input of shape \[0\]"),
        (("nodes", 0, "input_shape"), [6.0], r"nodes\[0\] input_shape is \[6.0\]"),
    ]
    for keys, value, error in cases:
        meta = _meta(arrays)
        _set(("model", "config") + keys, value)(meta)
        with pytest.raises(xn.CheckpointError, match=error):
            xn.load(_write(tmp_path / "bad.xpnet", arrays, meta))


# -- safetensors ---------------------------------------------------------------------------
def _st():
    return pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")


def _bn_model():
    """Trainable and non-trainable state (running statistics) both."""
    return xn.Sequential(xn.Linear(5, 12), xn.BatchNorm1D(12), xn.Tanh(), xn.Linear(12, 3))


def _st_trained(path, epochs=1):
    """A safetensors checkpoint of _bn_model() with Adam's state, and the model."""
    model = _bn_model()
    opt = xn.Adam(model, lr=0.01)
    _train(model, opt, epochs=epochs)
    xn.save(path, model, optimizer=opt, note="st")
    return model, opt


def test_safetensors_round_trip_on_any_backend(be, tmp_path):
    st = _st()
    path = tmp_path / "m.safetensors"
    model, opt = _st_trained(path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors file, not an npz one
    state = {name: xn.to_numpy(p.value) for name, p in model.named_state()}
    stored = st.load_file(path)
    assert {k: v for k, v in stored.items() if not k.startswith("optimizer.")}.keys() == \
        state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(stored[name], value)
        assert stored[name].dtype == value.dtype
    np.testing.assert_array_equal(stored["optimizer.m.0.weight"], xn.to_numpy(opt.state["m"][0]))
    for backend, place in ((be, (be.name, be.device_name)), ("numpy", ("numpy", "cpu"))):
        ck = xn.load_checkpoint(path, backend=backend)
        assert ck.metadata == {"note": "st"} and ck.optimizer.steps == opt.steps
        for (name, a), b in zip(ck.model.named_state(), state.values(), strict=True):
            got = xpnet.backend.backend_of(a.value)
            assert (got.name, got.device_name) == place, name
            np.testing.assert_array_equal(xn.to_numpy(a.value), b)
        for slot in ("m", "v"):
            for a, b in zip(ck.optimizer.state[slot], opt.state[slot], strict=True):
                np.testing.assert_array_equal(xn.to_numpy(a), xn.to_numpy(b))


def test_safetensors_torch_load_file_gives_the_state(tmp_path):
    _st()
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    with xn.use("numpy"):
        model, _ = _st_trained(path)
    stored = load_file(path)
    assert all(isinstance(v, torch.Tensor) for v in stored.values())
    for name, p in model.named_state():
        np.testing.assert_array_equal(stored[name].numpy(), p.value)


def test_safetensors_bit_flips_load_identical_weights_or_raise_checkpoint_error(tmp_path):
    _st()
    path = tmp_path / "small.safetensors"
    data, want = _small_checkpoint(path)
    bad = tmp_path / "flipped.safetensors"
    refused = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i * 5 + 3) % 8
        bad.write_bytes(bytes(flipped))
        try:
            ck = xn.load_checkpoint(bad, backend="numpy")
        except xn.CheckpointError:
            refused += 1
            continue
        for a, b in zip(ck.model.parameters(), want.model.parameters(), strict=True):
            np.testing.assert_array_equal(a.value, b.value)
        for a, b in zip(ck.optimizer.state["momentum"], want.optimizer.state["momentum"],
                        strict=True):
            np.testing.assert_array_equal(a, b)
        assert (ck.optimizer.steps, ck.metadata) == (want.optimizer.steps, want.metadata)
    assert refused > len(data) // 2


def test_safetensors_checksum_covers_tensor_bytes(tmp_path):
    """A flip in the data where safetensors itself sees nothing wrong."""
    _st()
    path = tmp_path / "m.safetensors"
    with xn.use("numpy"):
        xn.save(path, _model())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(xn.CheckpointError, match="corrupted: the contents' SHA-256 is [0-9a-f]"):
        xn.load(path)


def test_safetensors_damaged_or_foreign_files_are_refused(tmp_path):
    st = _st()
    path = tmp_path / "m.safetensors"
    with xn.use("numpy"):
        xn.save(path, _model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(xn.CheckpointError, match="not a readable safetensors file"):
        xn.load(path)
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(xn.CheckpointError, match="not a readable xpnet checkpoint"):
        xn.load(path)
    path.write_bytes(st.save({"w": np.zeros(3, dtype=np.float32)}))
    with pytest.raises(xn.CheckpointError, match="without xpnet's metadata"):
        xn.load(path)


def _write_st(path, tensors, doc):
    """A safetensors checkpoint with a valid checksum, whatever it holds."""
    doc = json.dumps(doc).encode()
    digest = xpnet.checkpoint._digest(doc, tensors)
    path.write_bytes(_st().save(tensors, metadata={"xpnet": doc.decode(),
                                                   "xpnet.sha256": digest}))
    return path


@pytest.mark.parametrize("dtype", [np.float16, np.int64])
def test_safetensors_of_other_dtypes_are_refused(tmp_path, monkeypatch, dtype):
    meta = _meta(_arrays(_good(tmp_path)))
    bad = _write_st(tmp_path / "bad.safetensors", {"0.weight": np.zeros((12, 5), dtype)}, meta)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match="'0.weight' has dtype [FI](16|64), expected F32"):
        xn.load(bad)


def test_safetensors_description_is_checked_as_for_npz(tmp_path, monkeypatch):
    """The shared checks run: shapes against the description, the optimizer's coverage."""
    arrays = _arrays(_with_adam(tmp_path))
    meta = _meta(arrays)
    tensors = {xpnet.checkpoint._st_name(k): v for k, v in arrays.items() if k != "__meta__"}
    _never_build(monkeypatch)
    shape = _write_st(tmp_path / "shape.safetensors",
                      {**tensors, "0.weight": np.zeros((3, 3), np.float32)}, meta)
    with pytest.raises(xn.CheckpointError, match=r"0.weight.*shape \(3, 3\).*expects \(12, 5\)"):
        xn.load(shape)
    del tensors["optimizer.v.2.bias"]
    slots = _write_st(tmp_path / "slots.safetensors", tensors, meta)
    with pytest.raises(xn.CheckpointError, match=r"'2.bias' has slots \['m'\], expected all"):
        xn.load(slots)


# -- each layer type declares its arrays once --------------------------------------
def _shared_graph():
    """A Graph with a layer called at two nodes (a same_layer_as node)."""
    a, b = xn.Input(shape=(3,)), xn.Input(shape=(3,))
    f = xn.Linear(3, 2)
    return xn.Graph(inputs=[a, b], outputs=xn.Concat()(f(a), xn.Tanh()(f(b))))


#: Small instances of every built-in layer type (several where the config changes the
#: arrays: bias, bidirectional, groups, dtype).
BUILT_IN = {
    "Linear": [lambda: xn.Linear(3, 2), lambda: xn.Linear(3, 2, bias=False, dtype="float64")],
    "Conv1D": [lambda: xn.Conv1D(4, 6, 3, groups=2)],
    "Conv2D": [lambda: xn.Conv2D(2, 3, (3, 2), bias=False, dtype="float64")],
    "BatchNorm1D": [lambda: xn.BatchNorm1D(3)],
    "BatchNorm2D": [lambda: xn.BatchNorm2D(2, dtype="float64")],
    "LayerNorm": [lambda: xn.LayerNorm(4), lambda: xn.LayerNorm((5,), dtype="float64")],
    "Embedding": [lambda: xn.Embedding(7, 3)],
    "GRU": [lambda: xn.GRU(3, 4), lambda: xn.GRU(3, 4, bidirectional=True, bias=False)],
    "LSTM": [lambda: xn.LSTM(3, 4, bidirectional=True)],
    "MultiHeadAttention": [lambda: xn.MultiHeadAttention(4, 2),
                           lambda: xn.MultiHeadAttention(4, 1, bias=False, dtype="float64")],
    "PositionalEmbedding": [lambda: xn.PositionalEmbedding(5, 4)],
    "TransformerBlock": [lambda: xn.TransformerBlock(4, 2, 3, True, 0.1, dtype="float64")],
    "Sequential": [lambda: xn.Sequential(xn.Linear(2, 3), xn.Tanh(),
                                         xn.Sequential(xn.BatchNorm1D(3), xn.Linear(3, 1)))],
    "Graph": [_graph_model, _shared_graph],
    "ReLU": [xn.ReLU], "Sigmoid": [xn.Sigmoid], "Tanh": [xn.Tanh], "Softmax": [xn.Softmax],
    "GELU": [xn.GELU], "SiLU": [xn.SiLU], "LeakyReLU": [xn.LeakyReLU],
    "Dropout": [xn.Dropout], "Flatten": [xn.Flatten], "Reshape": [lambda: xn.Reshape((2, 3))],
    "MaxPool1D": [lambda: xn.MaxPool1D(2)], "MaxPool2D": [lambda: xn.MaxPool2D(2)],
    "AvgPool1D": [lambda: xn.AvgPool1D(2)], "AvgPool2D": [lambda: xn.AvgPool2D(2)],
    "GlobalAvgPool1D": [xn.GlobalAvgPool1D], "GlobalAvgPool2D": [xn.GlobalAvgPool2D],
    "Add": [xn.Add], "Concat": [xn.Concat],
}


def test_the_table_covers_every_built_in_layer_type():
    built_in = {name for name, cls in LAYER_TYPES.items()
                if "." not in name and cls.__module__.startswith("xpnet.")}
    assert set(BUILT_IN) == built_in, f"add to BUILT_IN: {sorted(built_in - set(BUILT_IN))}"


@pytest.mark.parametrize("kind", list(BUILT_IN))
def test_declared_state_is_the_built_state(kind):
    """What a layer type declares for a config (read back from JSON) is what a layer made
    with that config holds: names in named_state order, shapes, dtypes."""
    for make in BUILT_IN[kind]:
        with xn.use("numpy"):
            layer = make()
        spec = json.loads(json.dumps(layer_config(layer)))
        assert spec["type"] == kind and LAYER_TYPES[kind] is type(layer)
        held = [(n, (p.shape, str(p.value.dtype))) for n, p in layer.named_state()]
        assert list(type(layer).declared_state(spec["config"]).items()) == held, layer
        assert list(declared_state_of(spec).items()) == held


class _Undeclared(xn.Layer):
    """Makes a parameter and declares none (the rule the Layer docstring states)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.w = self._new_parameter("w", np.ones(n), "float32")

    def forward(self, x, *, train=True):
        return x * self.w.value

    def get_config(self):
        return {"n": self.n}


class _Misdeclared(_Undeclared):
    """Declares a shape other than the one it makes."""

    @classmethod
    def param_shapes(cls, config):
        return {"w": (config["n"] + 1,)}


class _SubclassAddsOne(xn.Linear):
    """A Linear with one more parameter, its declaration inherited unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = self._new_parameter("scale", np.ones(1), "float32")


def test_a_layer_whose_arrays_differ_from_its_declaration_fails_when_made():
    with xn.use("numpy"):
        with pytest.raises(TypeError, match=r"_Undeclared makes parameters \['w'\] but declares "
                                            r"none: a layer declares every array it holds in a "
                                            r"classmethod param_shapes\(config\)"):
            _Undeclared(3)
        with pytest.raises(TypeError, match=r"_Misdeclared holds arrays \{'w': \(3,\)\} but "
                                            r"param_shapes\(get_config\(\)\) declares "
                                            r"\{'w': \(4,\)\}"):
            _Misdeclared(3)
        with pytest.raises(TypeError, match=r"_SubclassAddsOne holds arrays .*'scale': \(1,\)\} "
                                            r"but param_shapes\(get_config\(\)\) declares "
                                            r"\{'weight': \(2, 3\), 'bias': \(2,\)\}"):
            _SubclassAddsOne(3, 2)


class DeclaredScaleForCheckpoints(xn.Layer):
    """A user layer that keeps the rule: saved and loaded like a built-in one."""

    def __init__(self, features: int, *, dtype: str = "float32"):
        super().__init__()
        self.features, self.dtype = features, dtype
        shapes = self.param_shapes(self.get_config())
        self.w = self._new_parameter("w", np.arange(1.0, 1.0 + shapes["w"][0]), dtype)

    @classmethod
    def param_shapes(cls, config):
        return {"w": (config["features"],)}

    def forward(self, x, *, train=True):
        return x * self.w.value

    def get_config(self):
        return {"features": self.features, "dtype": self.dtype}


def test_a_user_layer_that_declares_its_arrays_round_trips(tmp_path, monkeypatch):
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(2, 3), DeclaredScaleForCheckpoints(3, dtype="float64"))
        xn.save(tmp_path / "m.xpnet", model)
        back = xn.load(tmp_path / "m.xpnet")
    np.testing.assert_array_equal(back[1].w.value, [1.0, 2.0, 3.0])
    assert back[1].w.value.dtype == np.float64
    arrays = _arrays(tmp_path / "m.xpnet")  # the declaration is what a file is held to
    arrays["param/1.w"] = np.zeros(4)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=r"'param/1.w' has shape \(4,\), the "
                                                 r"architecture expects \(3,\)"):
        xn.load(_write(tmp_path / "bad.xpnet", arrays))


def test_names_imported_from_the_single_module_still_import():
    from xpnet.checkpoint import (  # noqa: F401 - the import is the test
        FORMAT,
        FORMAT_VERSION,
        MAX_DEPTH,
        PARAM_DTYPES,
        SAFETENSORS_SUFFIX,
        Checkpoint,
        CheckpointError,
        _declared_state,
        _digest,
        _safetensors,
        _st_name,
        build_layer,
        load,
        load_checkpoint,
        save,
    )

    assert (FORMAT, FORMAT_VERSION, MAX_DEPTH) == ("xpnet-checkpoint", 1, 64)
    assert CheckpointError is xn.CheckpointError and issubclass(CheckpointError, RuntimeError)
    assert _st_name("opt/m/0.weight") == "optimizer.m.0.weight"
    with pytest.raises(CheckpointError, match=r"^who: model config: unknown layer type 'X'"):
        _declared_state("who", {"type": "X"})


# -- files in the first format (before the loss was recorded) ---------------------
#: The document as the first format wrote it (no "loss"): a Graph with a shared layer
#: and a TransformerBlock, spelled out here rather than made by today's save.
OLD_MODEL = {"type": "Sequential", "config": {"layers": [
    {"type": "Graph", "config": {"nodes": [
        {"name": "input_1", "inputs": [], "input_shape": [3, 4]},
        {"name": "linear_1", "inputs": [0], "layer": {"type": "Linear", "config": {
            "in_features": 4, "out_features": 4, "bias": True, "init": "pytorch",
            "dtype": "float32"}}},
        {"name": "linear_2", "inputs": [1], "same_layer_as": 1},
        {"name": "add_1", "inputs": [1, 2], "layer": {"type": "Add", "config": {}}}],
        "inputs": [0], "output": 3, "multi": False}},
    {"type": "TransformerBlock", "config": {"embed_dim": 4, "num_heads": 2, "mlp_ratio": 2,
                                            "causal": True, "dropout": 0.0,
                                            "dtype": "float32"}},
    {"type": "Conv1D", "config": {"in_channels": 3, "out_channels": 2, "kernel_size": 2,
                                  "stride": 1, "padding": 0, "bias": True, "init": "pytorch",
                                  "dtype": "float32"}}]}}
OLD_SHAPES = {"0.0.weight": (4, 4), "0.0.bias": (4,),
              "1.self_attn.in_proj_weight": (12, 4), "1.self_attn.in_proj_bias": (12,),
              "1.self_attn.out_proj.weight": (4, 4), "1.self_attn.out_proj.bias": (4,),
              "1.linear1.weight": (8, 4), "1.linear1.bias": (8,),
              "1.linear2.weight": (4, 8), "1.linear2.bias": (4,),
              "1.norm1.weight": (4,), "1.norm1.bias": (4,),
              "1.norm2.weight": (4,), "1.norm2.bias": (4,),
              "2.weight": (2, 3, 2), "2.bias": (2,)}


@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
def test_files_in_the_first_format_load_unchanged(tmp_path, suffix):
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in OLD_SHAPES.items()}
    opt = {f"opt/momentum/{n}": np.zeros(s, np.float32) for n, s in OLD_SHAPES.items()}
    doc = {"format": "xpnet-checkpoint", "format_version": 1, "xpnet_version": "0.1.0",
           "backend": "numpy", "device": "cpu", "dtype": "float32", "model": OLD_MODEL,
           "params": list(OLD_SHAPES), "metadata": {"epoch": 3},
           "optimizer": {"type": "SGD", "lr": 0.1, "config": {"momentum": 0.9},
                         "steps": 7, "params": list(OLD_SHAPES)}}
    arrays = {**{f"param/{n}": a for n, a in params.items()}, **opt}
    if suffix == ".xpnet":
        path = _write(tmp_path / "old.xpnet", arrays, doc)
    else:
        _st()
        path = _write_st(tmp_path / "old.safetensors",
                         {xpnet.checkpoint._st_name(k): v for k, v in arrays.items()}, doc)
    ck = xn.load_checkpoint(path, backend="numpy")
    assert [n for n, _ in ck.model.named_state()] == list(OLD_SHAPES)
    for name, p in ck.model.named_state():
        np.testing.assert_array_equal(p.value, params[name])
    assert ck.model.loss is None and ck.metadata == {"epoch": 3} and ck.optimizer.steps == 7
    again = layer_config(ck.model)
    conv = again["config"]["layers"][2]["config"]
    assert (conv.pop("dilation"), conv.pop("groups")) == (1, 1)  # written before they existed
    assert again == OLD_MODEL


# -- the loss the model was trained with -----------------------------------------
@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
@pytest.mark.parametrize("loss", [xn.BinaryCrossEntropy(from_logits=True),
                                  xn.BinaryCrossEntropy(from_logits=False), xn.QuadraticCost(),
                                  xn.SoftmaxCrossEntropy()], ids=repr)
def test_the_loss_round_trips(tmp_path, suffix, loss):
    if suffix == ".safetensors":
        _st()
    path = tmp_path / f"m{suffix}"
    with xn.use("numpy"):
        model = _model()
        assert model.loss is None  # the class default: none yet
        model.loss = loss
        xn.save(path, model)
        back = xn.load(path)
    assert type(back.loss) is type(loss) and back.loss is not loss
    assert back.loss.get_config() == loss.get_config()
    assert repr(back.loss) == repr(loss)
    with xn.use("numpy"):  # a model without one saves none, and loads without one
        xn.save(path, _model())
        assert xn.load(path).loss is None


def test_the_loss_is_written_as_type_and_config(tmp_path):
    with xn.use("numpy"):
        model = _model()
        model.loss = xn.BinaryCrossEntropy(from_logits=False)
        xn.save(tmp_path / "m.xpnet", model)
    assert _meta(_arrays(tmp_path / "m.xpnet"))["loss"] == {
        "type": "BinaryCrossEntropy", "config": {"from_logits": False}}


LOSS_CASES = {
    "unknown type": ({"type": "HuberLoss", "config": {}},
                     r"unknown loss type 'HuberLoss'; known: QuadraticCost, "
                     r"SoftmaxCrossEntropy, BinaryCrossEntropy"),
    "type a number": ({"type": 3, "config": {}}, r"loss type is 3 \(integer\), expected str"),
    "bad config value": ({"type": "BinaryCrossEntropy", "config": {"from_logits": "yes"}},
                         r"loss config \(BinaryCrossEntropy\) from_logits is 'yes' \(string\), "
                         r"expected bool"),
    "unknown config entry": ({"type": "QuadraticCost", "config": {"reduction": "sum"}},
                             r"loss config \(QuadraticCost\) has unknown entry 'reduction'"),
    "no config": ({"type": "SoftmaxCrossEntropy"}, r"loss lacks entry 'config'"),
    "an extra entry": ({"type": "QuadraticCost", "config": {}, "weight": 2},
                       r"loss has unknown entry 'weight'"),
    "not an object": ("QuadraticCost", r"the description's 'loss' is 'QuadraticCost' "
                                       r"\(string\), expected an object"),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_a_crafted_loss_is_refused(tmp_path, monkeypatch, case):
    spec, error = LOSS_CASES[case]
    arrays = _arrays(_good(tmp_path))
    meta = {**_meta(arrays), "loss": spec}
    bad = _write(tmp_path / "bad.xpnet", arrays, meta)
    _never_build(monkeypatch)
    with pytest.raises(xn.CheckpointError, match=f"^{re.escape(str(bad))}: {error}"):
        xn.load_checkpoint(bad)


class _HuberLoss(xn.Loss):
    """A loss of the user's, not registered in LOSS_TYPES."""


def test_a_loss_checkpoints_cannot_rebuild_is_left_out_with_a_warning(tmp_path):
    """The weights are what matter (a ModelCheckpoint of a model trained with a loss of
    the user's must still write them): the loss is left out, saying so."""
    path = tmp_path / "m.xpnet"
    with xn.use("numpy"):
        model = _model()
        model.loss = _HuberLoss()
        with pytest.warns(UserWarning, match=r"save .*m.xpnet: the loss _HuberLoss\(\) "
                                             r"cannot be saved: .*LOSS_TYPES.*saved without"):
            xn.save(path, model)
        loaded = xn.load(path)
    assert loaded.loss is None
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)


# -- loading builds only what the file names, on the backend asked for ------------------
def test_loading_a_graph_needs_only_the_backend_asked_for(tmp_path, monkeypatch):
    import contextvars

    with xn.use("numpy"):
        inp = xn.Input(shape=(3,))
        model = xn.Graph(inputs=inp, outputs=xn.ReLU()(xn.Linear(3, 2)(inp)))
        xn.save(tmp_path / "g.xpnet", model)
    monkeypatch.setattr(xpnet.backend, "_from_environment", None)
    monkeypatch.setenv("XPNET_BACKEND", "cupy")  # not usable here; must not be touched
    loaded = contextvars.Context().run(xn.load, tmp_path / "g.xpnet", backend="numpy")
    np.testing.assert_array_equal(loaded.parameters()[0].value, model.parameters()[0].value)


def test_a_user_class_cannot_take_over_a_registered_name(tmp_path):
    class ReLU(xn.Layer):  # the same short name as xpnet's
        def forward(self, x, *, train=True):
            return x

    class Doubler(xn.Layer):
        def forward(self, x, *, train=True):
            return 2 * x

    from xpnet.layers import LAYER_TYPES

    assert LAYER_TYPES["ReLU"] is xn.ReLU and "Merge" not in LAYER_TYPES
    with xn.use("numpy"):
        path = tmp_path / "m.xpnet"
        xn.save(path, xn.Sequential(xn.Linear(2, 2), xn.ReLU(), ReLU(), Doubler()))
        loaded = xn.load(path)
    assert [type(layer) for layer in loaded] == [xn.Linear, xn.ReLU, ReLU, Doubler]
