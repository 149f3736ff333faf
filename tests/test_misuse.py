"""Misuse that used to end in a raw library error, a silently wrong answer or lost work:
each test names the item of the hardening issue it covers (grouped by module)."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn
from xpnet.backends import ops


# -- layers/embedding.py (items 7, 15) -----------------------------------------------------
def _lm(vocab=5):
    return xn.Sequential(xn.Embedding(vocab, 3), xn.Flatten(), xn.Linear(6, 2))


def test_embedding_ids_out_of_range_on_a_device_give_nan_rows(be):
    """Item 7: -1 was the last row (torch, JAX, strict), 2**32 + 1 and 2**40 rows 1
    and 0 on JAX; now every id outside [0, num) is a NaN row, with no host read."""
    emb = xn.Embedding(4, 2)
    ids = np.array([[-1, 4, 2**32 + 1], [2**40, 1, -2**40]], dtype=np.int64)
    if ops(be.xp).on_host:  # NumPy's ids are in host memory: checked for free
        with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\], got values from "):
            emb(be.asarray(ids))
        return
    out = xn.to_numpy(emb.forward(be.asarray(ids), train=True))
    assert out.shape == (2, 3, 2)
    bad = np.ones((2, 3), dtype=bool)
    bad[1, 1] = False
    assert np.isnan(out[bad]).all(), out
    np.testing.assert_array_equal(out[1, 1], xn.to_numpy(emb.weight.value)[1])
    # the NaN rows send nothing back: only row 1 gets a gradient (not row 0 nor the last)
    emb.backward(be.asarray(np.ones((2, 3, 2)), dtype="float32"))
    grad = xn.to_numpy(emb.weight.grad)
    np.testing.assert_array_equal(grad, np.array([[0, 0], [1, 1], [0, 0], [0, 0]]))


@pytest.mark.parametrize("call", ["fit", "evaluate", "predict"])
def test_host_ids_out_of_range_are_refused_before_upload(be, call):
    """Item 7: host ids are checked in fit/evaluate/predict (as labels are), on every
    backend; the error names the bad values."""
    x = np.array([[0, 1], [2, -1], [4, 7], [3, 3]], dtype=np.int64)
    y = np.array([0, 1, 0, 1])
    model = _lm()
    pattern = rf"{call} \(x\): ids for the model's Embedding of 5 rows must lie in \[0, 4\]"
    with pytest.raises(ValueError, match=pattern + r", got -1, 7 \(2 distinct"):
        if call == "fit":
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   progress=False)
        elif call == "evaluate":
            xn.evaluate(model, x, y)
        else:
            xn.predict(model, x)


def test_ids_out_of_range_in_a_generator_batch_are_named(be):
    """Item 7 and 12: host ids from an iterable are checked as each batch is read."""
    x = np.tile(np.arange(5), 8).reshape(20, 2)
    x[13, 1] = -1  # in batch 2
    y = np.arange(20) % 2
    model = _lm()
    with pytest.raises(ValueError, match=r"fit: batch 2 of epoch 1, x: ids for the model's "
                                         r"Embedding of 5 rows must lie in \[0, 4\], got -1"):
        xn.fit(model, [(x[s:s + 8], y[s:s + 8]) for s in range(0, 20, 8)],
               loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1), progress=False)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "int64", "uint64"])
def test_embedding_takes_ids_of_any_integer_dtype(be, dtype):
    """Item 15: torch's index_select refused uint8 (and int8, int16) ids."""
    emb = xn.Embedding(4, 2)
    ids = np.array([[0, 3], [2, 1]], dtype=dtype)
    want = xn.to_numpy(emb.weight.value)[ids.astype(np.int64)]
    try:
        x = be.asarray(ids)
    except TypeError as e:  # torch has no uint16/32/64 arrays: host ids below still work
        assert "has no " + dtype in str(e)
    else:
        np.testing.assert_array_equal(xn.to_numpy(emb(x)), want)
        emb.forward(x, train=True)
        emb.backward(be.asarray(np.ones((2, 2, 2)), dtype="float32"))
        np.testing.assert_array_equal(xn.to_numpy(emb.weight.grad), np.ones((4, 2)))
    model = xn.Sequential(emb)
    np.testing.assert_array_equal(xn.to_numpy(xn.predict(model, ids)), want)


# -- layers/base.py: load_state_dict (item 14) ---------------------------------------------
def test_load_state_dict_takes_bfloat16_torch_tensors(be):
    """Item 14: numpy() refused torch's bfloat16 ("unsupported ScalarType BFloat16")."""
    torch = pytest.importorskip("torch")
    model = xn.Sequential(xn.Linear(3, 2))
    source = xn.Sequential(xn.Linear(3, 2))
    given = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in source.state_dict().items()}
    model.load_state_dict(given)
    for k, v in model.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, given[k].float().numpy())
    jnp = pytest.importorskip("jax.numpy")  # JAX's bfloat16 reaches NumPy as ml_dtypes'
    model.load_state_dict({k: jnp.asarray(v.float().numpy(), dtype=jnp.bfloat16)
                           for k, v in given.items()})
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, given[k].float().numpy())


def test_load_state_dict_takes_a_list_of_pairs(be):
    """Item 14: (name, value) pairs, as OrderedDict(pairs) takes them."""
    model, source = xn.Sequential(xn.Linear(3, 2)), xn.Sequential(xn.Linear(3, 2))
    model.load_state_dict(list(source.state_dict().items()))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), source.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
    with pytest.raises(TypeError, match=r"load_state_dict for Sequential: state must be a "
                                        r"mapping .*or \(name, value\) pairs; item 1 is 5 "
                                        r"\(int\)"):
        model.load_state_dict([("0.weight", np.zeros((2, 3))), 5])


def test_load_state_dict_names_a_key_that_is_not_a_string():
    model = xn.Sequential(xn.Linear(3, 2))
    state = {0: np.zeros((2, 3)), "0.bias": np.zeros(2)}
    with pytest.raises(TypeError, match=r"load_state_dict for Sequential: key 0 \(int\) is "
                                        r"not a string; .*'0.weight'"):
        model.load_state_dict(state)


# -- layers/attention.py (item 16) ---------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: xn.MultiHeadAttention(4, 2),
                                  lambda: xn.TransformerBlock(4, 2)],
                         ids=["MultiHeadAttention", "TransformerBlock"])
@pytest.mark.parametrize("train", [True, False])
def test_attention_refuses_a_length_0_sequence(be, make, train):
    """Item 16: a raw reduction error from softmax's max (GRU and LSTM name the shape)."""
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}\(.*\): expected input of shape \(N, L, 4\) "
                                         r"with L >= 1.*got \(2, 0, 4\)"):
        layer.forward(be.asarray(np.zeros((2, 0, 4)), dtype="float32"), train=train)


# -- train/callbacks.py (items 17, 18) -----------------------------------------------------
class _Epochs(xn.Callback):
    """Records the epochs that ended: none, when a callback's check refused the fit."""

    def __init__(self):
        self.ended = []

    def on_epoch_end(self, epoch, logs):
        self.ended.append(epoch)


def _fit_with(callback, epochs=1):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)
    model, spy = xn.Sequential(xn.Linear(4, 3)), _Epochs()
    with xn.use("numpy"):
        try:
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                   epochs=epochs, validation_data=(x, y), callbacks=[spy, callback],
                   progress=False)
        finally:
            assert spy.ended == [], "the callback's mistake surfaced only after training"


def test_model_checkpoint_to_a_folder_is_refused_before_training(tmp_path):
    """Item 17: the path was checked only for its parent; a whole epoch trained, then an
    OSError named a temp file."""
    with pytest.raises(IsADirectoryError, match=rf"ModelCheckpoint: the path "
                                                rf"'{tmp_path}' is a folder; name a file"):
        _fit_with(xn.ModelCheckpoint(tmp_path))


@pytest.mark.parametrize("how", ["read-only folder", "no access", "cannot create"])
def test_model_checkpoint_in_an_unwritable_folder_is_refused_before_training(
        tmp_path, monkeypatch, how):
    """Item 17: os.access W_OK, and a temp file made and removed there, before training."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    if how == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder.chmod(0o500)
    elif how == "no access":
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
    else:  # os.access says yes, but no file can be made there (/proc/self, even for root)
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        folder = "/proc/self"
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: True)
    path = os.path.join(folder, "best.xpnet")
    try:
        with pytest.raises(PermissionError, match=rf"ModelCheckpoint: cannot write "
                                                  rf"'{path}': the folder '{folder}' "):
            _fit_with(xn.ModelCheckpoint(path))
    finally:
        if how == "read-only folder":
            folder.chmod(0o700)


def test_csv_logger_append_to_a_file_that_is_not_utf8_text(tmp_path):
    """Item 18: a raw UnicodeDecodeError at on_train_begin."""
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xff\xfe\x00e\x00p\x00o\x00c\x00h\x00\n")  # UTF-16, say
    with pytest.raises(ValueError, match=rf"CSVLogger: '{path}' is not UTF-8 text.*pass "
                                         r"append=False.*or another path"):
        _fit_with(xn.CSVLogger(path, append=True))
    assert path.read_bytes().startswith(b"\xff\xfe")  # left as it was


# -- data.py: batches from an iterable (items 12, 13) --------------------------------------
def _classes(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _chunks(*arrays, size=16):
    n = len(arrays[0])
    return [tuple(a[s:s + size] for a in arrays) for s in range(0, n, size)]


@pytest.mark.parametrize("kind", ["generator", "list", "DataLoader"])
def test_evaluate_takes_an_iterable_of_batches(be, kind):
    """Item 13: evaluate(model, DataLoader) was a raw AttributeError; fit takes one."""
    x, y = _classes()
    model = xn.Sequential(xn.Linear(4, 3))
    want = xn.evaluate(model, x, y, loss=xn.SoftmaxCrossEntropy())
    if kind == "DataLoader":
        torch = pytest.importorskip("torch")
        data = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=16)
    else:
        data = _chunks(x, y)
        data = (b for b in data) if kind == "generator" else data
    got = xn.evaluate(model, data, loss=xn.SoftmaxCrossEntropy())
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5), k


@pytest.mark.parametrize("kind", ["x", "(x,)", "(x, y)", "DataLoader"])
def test_predict_takes_an_iterable_of_batches(be, kind):
    """Item 13: predict(model, generator) was a raw AttributeError."""
    x, y = _classes()
    model = xn.Sequential(xn.Linear(4, 3))
    want = xn.to_numpy(xn.predict(model, x))
    if kind == "DataLoader":
        torch = pytest.importorskip("torch")
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)),
                                           batch_size=16)  # gives [x] lists
    elif kind == "x":
        data = (b for (b,) in _chunks(x))
    else:
        data = iter(_chunks(x) if kind == "(x,)" else _chunks(x, y))
    np.testing.assert_allclose(xn.to_numpy(xn.predict(model, data)), want, rtol=1e-6)


def test_predict_takes_batches_for_a_graph_with_two_inputs(be):
    a, b = xn.Input(shape=(4,)), xn.Input(shape=(2,))
    model = xn.Graph(inputs=[a, b], outputs=xn.Linear(6, 3)(xn.Concat(axis=1)(a, b)))
    x1, _ = _classes()
    x2 = x1[:, :2] * 2
    want = xn.to_numpy(xn.predict(model, [x1, x2]))
    for data in ([[p, q] for p, q in _chunks(x1, x2)],       # [x1, x2] batches
                 [([p, q],) for p, q in _chunks(x1, x2)]):   # ([x1, x2],) batches
        np.testing.assert_allclose(xn.to_numpy(xn.predict(model, iter(data))), want, rtol=1e-6)


def test_evaluate_with_an_iterable_and_y_says_where_y_goes():
    x, y = _classes()
    with pytest.raises(ValueError, match=r"evaluate: x is an iterable of \(x, y\) batches"):
        xn.evaluate(xn.Sequential(xn.Linear(4, 3)), iter(_chunks(x, y)), y)


def _fit_batches(batches, **kw):
    model = xn.Sequential(xn.Linear(4, 3))
    xn.fit(model, iter(batches), loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
           steps_per_epoch=len(batches), progress=False, **kw)


def test_labels_out_of_range_in_a_generator_batch_are_named(be):
    """Item 12: on torch and JAX the loss turned NaN and the error blamed the rate."""
    x, y = _classes()
    y[20] = 5  # in batch 2
    with pytest.raises(ValueError, match=r"fit: batch 2 of epoch 1, y: labels must lie in "
                                         r"\[0, 2\] for 3 output\(s\), got values from 0 to 5"):
        _fit_batches(_chunks(x, y))


def test_non_finite_inputs_in_a_generator_batch_are_named(be):
    x, y = _classes()
    x[37, 1] = np.nan  # in batch 3
    with pytest.raises(ValueError, match=r"fit: batch 3 of epoch 1, x: 1 value\(s\) are NaN "
                                         r"or infinite \(the first at \[5, 1\]\)"):
        _fit_batches(_chunks(x, y))


def test_string_labels_in_a_generator_batch_are_named(be):
    """Item 12: torch's own TypeError named no batch."""
    x, y = _classes()
    batches = _chunks(x, y)
    batches[1] = (batches[1][0], np.array(["cat"] * len(batches[1][0])))
    with pytest.raises(TypeError, match=r"fit: batch 2 of epoch 1, y: expected integer labels "
                                        r"or float targets, got an array of dtype <U3"):
        _fit_batches(batches)


@pytest.mark.parametrize("precision", ["fp16-mixed", "16-mixed", 16])
def test_inputs_beyond_float16_are_refused_under_fp16(precision):
    """Item 12: under fp16-mixed, 1e5 became inf in the cast, and the loss NaN. fit is to
    pass its precision to prepare (a hook in train/loop.py); prepare checks host arrays
    at once and each batch of an iterable as it is read."""
    from xpnet import data as data_mod

    x, y = _classes()
    x[21, 0] = -1e5
    model = xn.Sequential(xn.Linear(4, 3))
    with xn.use("numpy"):
        pattern = (r"fit \(x\): inputs reach -100000(\.0)?, beyond float16's range "
                   r"\(±65504\) for precision=" + repr(precision))
        with pytest.raises(ValueError, match=pattern):
            data_mod.prepare(model, x, y, precision=precision)
        data_mod.prepare(model, x, y, precision="bf16-mixed")  # bfloat16 has the range
        source = data_mod.prepare(model, iter(_chunks(x, y)), steps_per_epoch=3,
                                  precision=precision)
        with pytest.raises(ValueError, match=r"fit: batch 2 of epoch 1, x: inputs reach "
                                             r"-100000"), source.batches() as batches:
            list(batches)


def test_evaluate_without_y_says_it_is_missing():
    x, _ = _classes()
    with pytest.raises(ValueError, match=r"evaluate: y is missing: give labels y with the "
                                         r"arrays x, or x as an iterable of \(x, y\) batches"):
        xn.evaluate(xn.Sequential(xn.Linear(4, 3)), x)


# -- cli.py (items 2, 9, 19, 20) -----------------------------------------------------------
# a run that goes on until stopped (about 0.03 s an epoch on NumPy)
LONG = ["--data", "spirals", "--hidden", "16", "--epochs", "100000", "--backend", "numpy"]
TINY = ["--data", "xor", "--hidden", "4", "--epochs", "1", "--batch-size", "4",
        "--backend", "numpy", "--no-progress"]


def _cli(capsys, *argv):
    from xpnet.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


class _Training:
    """``xpnet train`` in a subprocess, its output collected by a thread."""

    def __init__(self, *argv):
        import subprocess
        import sys
        import threading

        env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "xpnet.cli", "train", *map(str, argv)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.out: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.append(line)

    def wait_for(self, text, timeout=120.0):
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.out):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"no {text!r} in the output of xpnet train: {''.join(self.out)}"
                             f"{self.err}")

    def finish(self, timeout=60.0):
        self.proc.wait(timeout)
        self._reader.join(5)
        self.err = self.proc.stderr.read()
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish()


def test_a_second_train_into_the_folder_of_a_running_one_is_refused(tmp_path, capsys):
    """Item 2: both passed the "not empty" check (nothing is written until the end) and
    the last writer won."""
    first = _Training(*LONG, "--out", tmp_path)
    try:
        first.wait_for("epoch 1/")
        code, _, err = _cli(capsys, "train", *TINY, "--out", tmp_path)
        assert code == 2, err
        assert err.count("\n") == 1, err
        assert f"--out {tmp_path}: another xpnet train (pid {first.proc.pid}) is writing " \
               f"into this folder" in err, err
        assert first.proc.poll() is None  # the first goes on
    finally:
        first.stop()


def test_a_stale_train_lock_is_taken_over_and_the_lock_goes_at_the_end(tmp_path, capsys):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / ".xpnet-train.lock").write_text(f"{gone.stdout.strip()} localhost\n")
    code, out, err = _cli(capsys, "train", *TINY, "--out", tmp_path)
    assert code == 0, err
    assert "stale" in out
    assert not (tmp_path / ".xpnet-train.lock").exists()
    assert (tmp_path / "model.xpnet").is_file()


def test_ctrl_c_during_train_is_one_line_and_exit_130(tmp_path):
    """Item 20: a 32-64 line traceback and exit -2."""
    import signal

    run = _Training(*LONG, "--out", tmp_path / "run")
    try:
        run.wait_for("epoch 2/")  # epoch 3 at least has started
        run.proc.send_signal(signal.SIGINT)
        code = run.finish(timeout=60)
    finally:
        run.stop()
    assert code == 130, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    epoch = int(lines[0].split("interrupted in epoch ")[1].split()[0])
    assert epoch >= 3
    assert lines[0] == f"error: interrupted in epoch {epoch} of 100000; nothing was saved " \
                       f"(the model is written when training ends)", lines[0]
    assert not (tmp_path / "run").exists()  # the folder it made, empty, is gone


def _checkpoint(tmp_path, capsys):
    code, _, err = _cli(capsys, "train", *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    return tmp_path / "run" / "model.xpnet"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_inputs(tmp_path, capsys, value):
    """Item 9: NaN inputs printed labels "0 0 0" and exit 0."""
    model = _checkpoint(tmp_path, capsys)
    x = np.zeros((3, 2), dtype=np.float32)
    x[1, 0] = value
    np.save(tmp_path / "in.npy", x)
    code, out, err = _cli(capsys, "predict", model, "--input", tmp_path / "in.npy",
                          "--backend", "numpy")
    assert code == 2
    assert out == ""  # no labels: refused before the model loads
    assert err == f"error: --input {tmp_path / 'in.npy'}: 1 value(s) are NaN or infinite " \
                  f"(the first in example 1); predictions from them mean nothing\n", err


@pytest.mark.parametrize("shape", [(0,), (0, 2), (0, 0)])
def test_predict_refuses_an_empty_input(tmp_path, capsys, shape):
    """Item 19: a NumPy reshape message."""
    model = _checkpoint(tmp_path, capsys)
    np.save(tmp_path / "in.npy", np.zeros(shape, dtype=np.float32))
    code, _, err = _cli(capsys, "predict", model, "--input", tmp_path / "in.npy",
                        "--backend", "numpy")
    assert code == 2
    assert err == f"error: --input {tmp_path / 'in.npy'}: holds no examples (shape " \
                  f"{shape}); give at least one\n", err
