"""xn.export_onnx: each exported file passes onnx's checker and, run in onnxruntime,
gives what the model's own inference pass gives on the same inputs (float32 rounding)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpnet as xn

onnx = pytest.importorskip("onnx", reason="onnx is not installed (the onnx extra)")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is not installed (the onnx extra)")

RTOL, ATOL = 1e-4, 2e-5  # float32 rounding: the two run the same math in another order


@pytest.fixture(autouse=True)
def _numpy():
    with xn.use("numpy"):
        xn.seed(0)
        yield


def _session(path):
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _roundtrip(model, tmp_path, input_shape, *xs, **kw):
    """Export, check, and run each input batch (a tuple for several model inputs) in
    onnxruntime against ``model``'s inference pass; the session."""
    path = tmp_path / "model.onnx"
    proto = xn.export_onnx(model, path, input_shape, **kw)
    assert isinstance(proto, onnx.ModelProto)
    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    for x in xs:
        batch = list(x) if isinstance(x, tuple) else [x]
        got = session.run(["output"], dict(zip(names, batch, strict=True)))[0]
        want = xn.to_numpy(model(batch if len(batch) > 1 else batch[0]))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return session


def _train(model, x, y, steps=3):
    """A few Adam steps, so weights and running statistics are no longer their start."""
    loss, opt = xn.SoftmaxCrossEntropy(), xn.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        opt.step()
        opt.zero_grad()


def test_mlp_with_every_activation_and_dropout(tmp_path, rng):
    model = xn.Sequential(
        xn.Linear(10, 16), xn.ReLU(), xn.Dropout(0.3),
        xn.Linear(16, 16, bias=False), xn.Sigmoid(), xn.Linear(16, 16), xn.Tanh(),
        xn.Linear(16, 16), xn.LeakyReLU(0.2), xn.Linear(16, 16), xn.SiLU(),
        xn.Linear(16, 16), xn.GELU(), xn.Linear(16, 16), xn.GELU("tanh"),
        xn.Linear(16, 5), xn.Softmax())
    x = rng.standard_normal((7, 10)).astype(np.float32)
    _train(model, x, rng.integers(0, 5, 7))
    session = _roundtrip(model, tmp_path, (10,), x, x[:1], 3 * x)
    # the batch axis is dynamic, the feature axis fixed
    dims = session.get_inputs()[0].shape
    assert dims == ["N", 10] and session.get_outputs()[0].shape == ["N", 5]


@pytest.mark.parametrize("opset", [13, 17, 18, 20])
def test_opsets_with_and_without_the_newer_operators(tmp_path, rng, opset):
    # 13: LayerNorm and GELU composed; 17: LayerNormalization; 18: ReduceMean's axes as
    # an input; 20: the Gelu operator
    model = xn.Sequential(xn.LayerNorm(6), xn.GELU(), xn.LayerNorm(6, bias=False),
                          xn.GELU("tanh"), xn.LayerNorm(6, elementwise_affine=False))
    x = rng.standard_normal((4, 3, 6)).astype(np.float32)
    for p in model.parameters():  # not the initial ones and zeros
        p.value = p.value + rng.standard_normal(p.shape).astype(np.float32)
    _roundtrip(model, tmp_path, (3, 6), x, opset=opset)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert ("LayerNormalization" in ops) == (opset >= 17)
    assert ("Gelu" in ops) == (opset >= 20)


def test_cnn_1d_with_batchnorm_and_pooling(tmp_path, rng):
    model = xn.Sequential(
        xn.Reshape((2, 24)),
        xn.Conv1D(2, 6, 5, stride=1, padding=2), xn.BatchNorm1D(6), xn.ReLU(),
        xn.MaxPool1D(2),                                           # 24 -> 12
        xn.Conv1D(6, 6, 3, stride=2, padding=1, dilation=2, groups=3),  # 12 -> 5
        xn.BatchNorm1D(6), xn.ReLU(), xn.AvgPool1D(2, stride=1),   # 5 -> 4
        xn.Conv1D(6, 8, 1, bias=False),
        xn.Flatten(), xn.Linear(32, 12), xn.BatchNorm1D(12), xn.ReLU(), xn.Linear(12, 3))
    x = rng.standard_normal((16, 48)).astype(np.float32)
    _train(model, x, rng.integers(0, 3, 16))
    assert np.abs(xn.to_numpy(model[2].running_mean.value)).max() > 1e-3  # not the start
    _roundtrip(model, tmp_path, (48,), x, x[:3])


def test_cnn_2d_with_batchnorm_pooling_and_global_pooling(tmp_path, rng):
    body = xn.Sequential(
        xn.Conv2D(3, 8, 3, padding=1), xn.BatchNorm2D(8), xn.ReLU(), xn.MaxPool2D(2),
        xn.Conv2D(8, 8, (3, 1), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=8),
        xn.BatchNorm2D(8), xn.ReLU(), xn.AvgPool2D((2, 1)))
    model = xn.Sequential(body, xn.GlobalAvgPool2D(), xn.Linear(8, 4))
    flat = xn.Sequential(xn.Conv2D(3, 4, 3, stride=2), xn.MaxPool2D(2, stride=1),
                         xn.Flatten(), xn.Linear(4 * 2 * 2, 4))
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 10)
    _train(model, x, y)
    _train(flat, x, y)
    assert np.abs(xn.to_numpy(body[1].running_var.value) - 1).max() > 1e-3
    _roundtrip(model, tmp_path, (3, 8, 8), x, x[:1])
    _roundtrip(flat, tmp_path, (3, 8, 8), x)


def test_global_average_pool_1d(tmp_path, rng):
    model = xn.Sequential(xn.Conv1D(2, 5, 3), xn.GlobalAvgPool1D(), xn.Linear(5, 2))
    _roundtrip(model, tmp_path, (2, 9), rng.standard_normal((4, 2, 9)).astype(np.float32))


@pytest.mark.parametrize("cell", [xn.GRU, xn.LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_recurrent_sequences_and_last_states(tmp_path, rng, cell, bidirectional,
                                             return_sequences):
    rnn = cell(3, 5, bidirectional=bidirectional, return_sequences=return_sequences)
    width = 5 * (2 if bidirectional else 1)
    head = [xn.Flatten(), xn.Linear(6 * width, 2)] if return_sequences else \
        [xn.Linear(width, 2)]
    model = xn.Sequential(rnn, *head)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    _train(model, x, rng.integers(0, 2, 4))
    _roundtrip(model, tmp_path, (6, 3), x, x[:1])
    # the recurrent layer on its own, over sequences of any length
    _roundtrip(xn.Sequential(rnn), tmp_path, (None, 3), x, x[:, :2], 2 * x[:2, :1])


@pytest.mark.parametrize("cell", [xn.GRU, xn.LSTM])
def test_recurrent_without_bias(tmp_path, rng, cell):
    model = cell(2, 4, bias=False, bidirectional=True)
    _roundtrip(model, tmp_path, (5, 2), rng.standard_normal((3, 5, 2)).astype(np.float32))


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_block_and_attention(tmp_path, rng, causal):
    model = xn.Sequential(xn.TransformerBlock(16, 4, 2, causal=causal, dropout=0.1),
                          xn.MultiHeadAttention(16, 2, causal=causal, bias=False))
    x = rng.standard_normal((3, 7, 16)).astype(np.float32)
    _roundtrip(model, tmp_path, (None, 16), x, x[:, :1], x[:1, :4])
    if causal:  # the first positions do not see the later ones, in the file too
        got = _session(tmp_path / "model.onnx").run(None, {"input": x[:, :4]})[0]
        np.testing.assert_allclose(got, xn.to_numpy(model(x))[:, :4], rtol=RTOL, atol=ATOL)


def test_small_language_model_with_tied_head(tmp_path, rng):
    model = xn.models.gpt(13, context=12, width=16, heads=2, layers=2, dropout=0.1)
    ids = rng.integers(0, 13, (4, 12))
    _train(model, ids, rng.integers(0, 13, (4, 12)))
    session = _roundtrip(model, tmp_path, (None,), ids, ids[:1, :5], ids[:, :1])
    assert session.get_inputs()[0].type == "tensor(int64)"
    # the tied table is stored once, under its state_dict name; every array is there
    stored = {t.name for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert set(model.state_dict()) <= stored
    assert not set(model.ties()) & stored


def test_transformer_language_model(tmp_path, rng):
    model = xn.models.transformer(11, embed_dim=16, num_heads=2, num_layers=1, max_len=9)
    ids = rng.integers(0, 11, (3, 9))
    _train(model, ids, rng.integers(0, 11, (3, 9)))
    _roundtrip(model, tmp_path, (9,), ids)


def test_graph_with_fan_out_and_merges(tmp_path, rng):
    inp = xn.Input(shape=(6,))
    shared = xn.Linear(8, 8)
    h = xn.Tanh()(xn.Linear(6, 8)(inp))
    h = xn.Add()(h, xn.ReLU()(shared(h)), shared(h))      # a shared layer, three paths
    both = xn.Concat(axis=1)(h, xn.Sigmoid()(xn.Linear(8, 3)(h)))
    model = xn.Graph(inputs=inp, outputs=xn.Linear(11, 4)(both))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    _train(model, x, rng.integers(0, 4, 5))
    _roundtrip(model, tmp_path, None, x)  # a Graph's Input gives the shape
    _roundtrip(model, tmp_path, (6,), x)


def test_graph_of_two_inputs_with_nested_sequential(tmp_path, rng):
    a, b = xn.Input(shape=(2, 9), name="signal"), xn.Input(shape=(3, 9), name="extra")
    conv = xn.Sequential(xn.Conv1D(2, 4, 3, padding=1), xn.BatchNorm1D(4))
    joined = xn.Concat(axis=-2)(conv(a), b)
    out = xn.Linear(63, 2)(xn.Flatten()(xn.Tanh()(joined)))
    model = xn.Graph(inputs=[a, b], outputs=out)
    xa = rng.standard_normal((3, 2, 9)).astype(np.float32)
    xb = rng.standard_normal((3, 3, 9)).astype(np.float32)
    _train(model, [xa, xb], rng.integers(0, 2, 3))
    session = _roundtrip(model, tmp_path, [(2, 9), (3, 9)], (xa, xb))
    assert [i.name for i in session.get_inputs()] == ["signal", "extra"]


def test_export_from_torch_copies_the_weights_to_the_host(tmp_path, rng):
    pytest.importorskip("torch", reason="torch is not installed")
    with xn.use("torch"):
        model = xn.Sequential(xn.Conv1D(1, 3, 3), xn.BatchNorm1D(3), xn.ReLU(), xn.Flatten(),
                              xn.Linear(18, 4), xn.GELU(), xn.Linear(4, 2))
    x = rng.standard_normal((5, 1, 8)).astype(np.float32)
    _train(model, model.backend.asarray(x), model.backend.asarray(rng.integers(0, 2, 5)))
    path = tmp_path / "torch.onnx"
    xn.export_onnx(model, path, (1, 8))
    got = _session(path).run(None, {"input": x})[0]
    want = xn.to_numpy(xn.predict(model, x))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_float64_models_export_as_float32_by_default_or_as_float64(tmp_path, rng):
    model = xn.Sequential(xn.Linear(4, 3, dtype="float64"), xn.Tanh(), xn.Softmax())
    x = rng.standard_normal((2, 4))
    want = xn.to_numpy(model(x))
    xn.export_onnx(model, tmp_path / "m.onnx", (4,))
    session = _session(tmp_path / "m.onnx")
    assert session.get_inputs()[0].type == "tensor(float)"
    got = session.run(None, {"input": x.astype(np.float32)})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    xn.export_onnx(model, tmp_path / "m64.onnx", (4,), dtype="float64")
    got = _session(tmp_path / "m64.onnx").run(None, {"input": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


class Cube(xn.Layer):
    """A user's own layer: the exporter cannot know what it computes."""

    def forward(self, x, *, train=True):
        return x * x * x


class MyLinear(xn.Linear):
    """A subclass of a built-in layer, which may compute something else."""


def test_unsupported_layers_are_named(tmp_path):
    model = xn.Sequential(xn.Linear(4, 4), Cube(), xn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"cannot export layer 1, Sequential\[1\] Cube\(\) "
                                        r"\(class test_onnx\.Cube\): no ONNX conversion"):
        xn.export_onnx(model, tmp_path / "m.onnx", (4,))
    assert not (tmp_path / "m.onnx").exists()
    inp = xn.Input(shape=(4,))
    graph = xn.Graph(inputs=inp, outputs=MyLinear(4, 2, name="head")(xn.ReLU()(inp)))
    with pytest.raises(TypeError, match=r"cannot export layer head, .*MyLinear.*a subclass "
                                        r"of one is refused"):
        xn.export_onnx(graph, None)
    with pytest.raises(TypeError, match=r"cannot export the model, Cube\(\)"):
        xn.export_onnx(Cube(), None, (4,))


def test_bad_arguments_are_refused(tmp_path):
    model = xn.Sequential(xn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"input_shape is needed"):
        xn.export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"does not take inputs of shape \('N', 5\).*"
                                         r"expected input of shape \(batch, 4\)"):
        xn.export_onnx(model, tmp_path / "m.onnx", (5,))
    with pytest.raises(ValueError, match=r"opset must be an int from 13 to \d+.*got 11"):
        xn.export_onnx(model, tmp_path / "m.onnx", (4,), opset=11)
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'int8'"):
        xn.export_onnx(model, tmp_path / "m.onnx", (4,), dtype="int8")
    with pytest.raises(ValueError, match=r"positive ints .* got \(4, 0\)"):
        xn.export_onnx(model, tmp_path / "m.onnx", (4, 0))
    with pytest.raises(TypeError, match=r"model must be an xpnet Layer.*got dict"):
        xn.export_onnx({}, tmp_path / "m.onnx", (4,))
    inp = xn.Input(shape=(4,), name="x")
    graph = xn.Graph(inputs=inp, outputs=xn.Linear(4, 2)(inp))
    with pytest.raises(ValueError, match=r"input x of the Graph has shape \(N, 4\); "
                                         r"input_shape gives \(3,\)"):
        xn.export_onnx(graph, None, (3,))


def test_several_inputs_need_several_shapes_and_onnx_is_named_when_missing(monkeypatch):
    a, b = xn.Input(shape=(2,), name="a"), xn.Input(shape=(3,), name="b")
    graph = xn.Graph(inputs=[a, b], outputs=xn.Concat()(a, b))
    with pytest.raises(ValueError, match=r"takes 2 inputs; input_shape must be a list of 2 "
                                         r"shapes, got \(2, 3\)"):
        xn.export_onnx(graph, None, (2, 3))
    proto = xn.export_onnx(graph, None, [(2,), (3,)])
    assert [i.name for i in proto.graph.input] == ["a", "b"]
    x = xn.Input(shape=(2,), name="output")
    with pytest.raises(ValueError, match=r"an Input named 'output'"):
        xn.export_onnx(xn.Graph(inputs=x, outputs=xn.ReLU()(x)), None)
    x = xn.Input(shape=(2,), name="0.weight")  # a name the initializers would take
    proto = xn.export_onnx(xn.Graph(inputs=x, outputs=xn.Linear(2, 1, name="0")(x)), None)
    assert proto.graph.input[0].name == "0.weight"
    assert "0.weight" not in {t.name for t in proto.graph.initializer}
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'needs the onnx package: pip install "xpnet\[onnx\]"'):
        xn.export_onnx(graph, None)


def test_importing_xpnet_does_not_import_onnx():
    root = str(Path(xn.__file__).resolve().parents[1])  # this checkout's xpnet
    code = "import sys, xpnet; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.split() == ["False", "False"]
