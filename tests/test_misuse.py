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
