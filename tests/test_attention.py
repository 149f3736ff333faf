"""MultiHeadAttention, TransformerBlock, PositionalEmbedding, models.transformer and the
sequence form of SoftmaxCrossEntropy: check_layer on every backend case, NumPy loop
references, PyTorch's modules in float64, checkpoints and a small training run."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xpnet as xn
from xpnet.layers import build_layer, layer_config
from xpnet.testing import check_layer
from xpnet.train.metrics import Accuracy, MetricSet, positions

#: small, and one size throughout: JAX compiles each operation once per shape
N, L, E, HEADS = 2, 4, 4, 2


@pytest.fixture
def on_numpy():
    """NumPy current for a test that needs one backend only (``auto`` may pick CuPy)."""
    with xn.use("numpy") as be:
        xn.seed(0)
        yield be


def _dtype(be):
    """float64 where the case has it (PyTorch comparisons to 1e-9), else float32."""
    return ("float64", 1e-9) if be.supports("float64") else ("float32", 1e-4)


def _set_biases(layer, rng):
    """Random biases (PyTorch starts attention biases at zero, which would hide them)."""
    state = layer.state_dict()
    for name, value in state.items():
        if name.endswith("bias"):
            state[name] = rng.standard_normal(value.shape)
    layer.load_state_dict(state)


# -- MultiHeadAttention ----------------------------------------------------------------------
def _softmax_rows(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mha_reference(state, x, heads, causal):
    """Self-attention written out with loops over examples and heads, in float64."""
    w_in, b_in = state["in_proj_weight"], state.get("in_proj_bias", 0.0)
    w_out, b_out = state["out_proj.weight"], state.get("out_proj.bias", 0.0)
    n, length, e = x.shape
    d = e // heads
    out = np.zeros((n, length, e))
    for i in range(n):
        qkv = x[i] @ w_in.T + b_in
        q, k, v = qkv[:, :e], qkv[:, e:2 * e], qkv[:, 2 * e:]
        joined = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(d)
            if causal:
                s[np.triu_indices(length, 1)] = -np.inf
            joined.append(_softmax_rows(s) @ v[:, cols])
        out[i] = np.concatenate(joined, axis=1) @ w_out.T + b_out
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_check_layer_and_loop_reference(be, rng, causal):
    layer = xn.MultiHeadAttention(E, HEADS, causal=causal)
    _set_biases(layer, rng)
    x_host = rng.standard_normal((N, L, E))
    x = be.asarray(x_host, dtype="float32")
    check_layer(layer, x)
    state = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    expect = _mha_reference(state, x_host.astype(np.float32).astype(np.float64), HEADS, causal)
    np.testing.assert_allclose(xn.to_numpy(layer(x)), expect, rtol=1e-5, atol=1e-5)


def _torch_attention_pair(be, rng, causal, bias=True):
    """(xpnet layer loaded from a torch module, that torch module) with random weights."""
    torch = pytest.importorskip("torch")
    dtype, _ = _dtype(be)
    t = torch.nn.MultiheadAttention(E, HEADS, bias=bias, batch_first=True,
                                    dtype=torch.float64)
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.5))
    layer = xn.MultiHeadAttention(E, HEADS, causal=causal, bias=bias, dtype=dtype)
    layer.load_state_dict(t.state_dict())
    return layer, t


def _compare_with_torch(be, rng, layer, run_torch, torch_params):
    """Outputs, input gradient and every parameter gradient, by name."""
    import torch

    dtype, tol = _dtype(be)
    x_host, dy_host = rng.standard_normal((N, L, E)), rng.standard_normal((N, L, E))
    y = layer.forward(be.asarray(x_host, dtype=dtype))
    dx = layer.backward(be.asarray(dy_host, dtype=dtype))
    xt = torch.tensor(x_host, requires_grad=True)
    yt = run_torch(xt)
    yt.backward(torch.from_numpy(dy_host))
    np.testing.assert_allclose(xn.to_numpy(y), yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(xn.to_numpy(dx), xt.grad.numpy(), rtol=tol, atol=tol)
    grads = dict(torch_params)
    assert sorted(n for n, _ in layer.named_parameters()) == sorted(grads)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(xn.to_numpy(p.grad), grads[name].grad.numpy(), rtol=tol,
                                   atol=tol, err_msg=name)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_torch(be, rng, causal):
    import_torch = pytest.importorskip("torch")
    layer, t = _torch_attention_pair(be, rng, causal)
    mask = (import_torch.nn.Transformer.generate_square_subsequent_mask(
        L, dtype=import_torch.float64) if causal else None)
    _compare_with_torch(be, rng, layer,
                        lambda xt: t(xt, xt, xt, attn_mask=mask, need_weights=False)[0],
                        t.named_parameters())


def test_attention_without_bias_matches_torch(on_numpy, rng):
    layer, t = _torch_attention_pair(on_numpy, rng, False, bias=False)
    assert [n for n, _ in layer.named_parameters()] == ["in_proj_weight", "out_proj.weight"]
    _compare_with_torch(on_numpy, rng, layer, lambda xt: t(xt, xt, xt, need_weights=False)[0],
                        t.named_parameters())


def test_attention_weights_move_both_ways_with_torch(on_numpy):
    torch = pytest.importorskip("torch")
    layer = xn.MultiHeadAttention(E, HEADS)
    t = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    assert list(layer.state_dict()) == list(t.state_dict())
    t.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for name, v in t.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), layer.state_dict()[name])
    other = xn.MultiHeadAttention(E, HEADS)
    other.load_state_dict(t.state_dict())
    for name, v in other.state_dict().items():
        np.testing.assert_array_equal(v, t.state_dict()[name].numpy())


def test_attention_initialisation_is_pytorchs(on_numpy):
    e = 32
    state = xn.MultiHeadAttention(e, 4).state_dict()
    xavier, uniform = math.sqrt(6 / (e + 3 * e)), 1 / math.sqrt(e)
    for name, bound in (("in_proj_weight", xavier), ("out_proj.weight", uniform)):
        w = state[name]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound, name
        assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound, name
    assert not state["in_proj_bias"].any() and not state["out_proj.bias"].any()
    xn.seed(0)
    again = xn.MultiHeadAttention(e, 4).state_dict()
    assert all(np.array_equal(again[k], state[k]) for k in state)


@pytest.mark.parametrize("kind", ["attention", "block"])
def test_causal_output_ignores_later_positions(be, rng, kind):
    make = {"attention": xn.MultiHeadAttention, "block": xn.TransformerBlock}[kind]
    causal, full = make(E, HEADS, causal=True), make(E, HEADS, causal=False)
    full.load_state_dict(causal.state_dict())
    x_host = rng.standard_normal((N, L, E))
    t = 2
    later = x_host.copy()
    later[:, t + 1:, :] += rng.standard_normal((N, L - t - 1, E))
    a, b = (be.asarray(v, dtype="float32") for v in (x_host, later))
    ya, yb = xn.to_numpy(causal(a)), xn.to_numpy(causal(b))
    np.testing.assert_allclose(ya[:, :t + 1], yb[:, :t + 1], rtol=1e-6, atol=1e-6)
    assert np.abs(ya[:, t + 1:] - yb[:, t + 1:]).max() > 1e-3
    # without the mask the same change reaches the earlier positions
    fa, fb = xn.to_numpy(full(a)), xn.to_numpy(full(b))
    assert np.abs(fa[:, :t + 1] - fb[:, :t + 1]).max() > 1e-3


def test_bad_arguments_and_inputs_name_the_layer(on_numpy):
    with pytest.raises(ValueError, match=r"MultiHeadAttention: embed_dim must be divisible "
                                         r"by num_heads, got embed_dim=10 and num_heads=3"):
        xn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"TransformerBlock: embed_dim must be divisible"):
        xn.TransformerBlock(10, 4)
    with pytest.raises(TypeError, match=r"MultiHeadAttention: causal must be True or False"):
        xn.MultiHeadAttention(8, 2, causal=1)
    with pytest.raises(ValueError, match=r"TransformerBlock: dropout"):
        xn.TransformerBlock(8, 2, dropout=1.0)
    layer, block = xn.MultiHeadAttention(8, 2), xn.TransformerBlock(8, 2)
    for bad in [np.zeros((2, 5, 6)), np.zeros((5, 8))]:
        x = np.asarray(bad, dtype=np.float32)
        with pytest.raises(ValueError, match=r"MultiHeadAttention\(embed_dim=8.*expected "
                                             r"input of shape \(N, L, 8\), got"):
            layer.forward(x)
        with pytest.raises(ValueError, match=r"TransformerBlock\(embed_dim=8.*\(N, L, 8\)"):
            block.forward(x)
    with pytest.raises(TypeError, match=r"MultiHeadAttention.*dtype float32.*got float64"):
        layer.forward(np.zeros((2, 5, 8)))
    with pytest.raises(ValueError, match=r"PositionalEmbedding\(max_len=4.*at most 4"):
        xn.PositionalEmbedding(4, 8).forward(np.zeros((2, 5, 8), np.float32))
    with pytest.raises(RuntimeError, match="MultiHeadAttention.*needs a forward"):
        xn.MultiHeadAttention(8, 2).backward(np.zeros((2, 5, 8), np.float32))


# -- TransformerBlock --------------------------------------------------------------------------
def test_block_check_layer(be, rng):
    """Causal (the mask and everything else) and mlp_ratio 1: gradcheck perturbs each of
    the block's ~170 numbers twice, and each pass runs the whole block (full attention
    is checked above, and against PyTorch below)."""
    block = xn.TransformerBlock(E, HEADS, mlp_ratio=1, causal=True)
    _set_biases(block, rng)
    check_layer(block, be.asarray(rng.standard_normal((N, L, E)), dtype="float32"))


def _torch_block(torch, causal, ratio=4):
    return torch.nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=ratio * E, dropout=0.0,
                                            activation="gelu", batch_first=True,
                                            norm_first=True, dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_block_matches_torch_encoder_layer(be, rng, causal):
    torch = pytest.importorskip("torch")
    t = _torch_block(torch, causal)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.3))
    block = xn.TransformerBlock(E, HEADS, causal=causal, dtype=_dtype(be)[0])
    block.load_state_dict(t.state_dict())
    mask = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    _compare_with_torch(be, rng, block,
                        lambda xt: t(xt, src_mask=mask if causal else None, is_causal=causal),
                        t.named_parameters())


def test_block_names_and_weights_are_torchs(on_numpy, rng):
    torch = pytest.importorskip("torch")
    block = xn.TransformerBlock(E, HEADS, mlp_ratio=3)
    t = _torch_block(torch, False, ratio=3).float()
    assert list(block.state_dict()) == list(t.state_dict())
    t.load_state_dict({k: torch.from_numpy(v) for k, v in block.state_dict().items()})
    x = rng.standard_normal((N, L, E)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(block(x), t(torch.from_numpy(x)).numpy(), rtol=1e-5,
                                   atol=1e-5)
    assert block.param_shapes(block.get_config()) == {n: p.shape
                                                      for n, p in block.named_state()}


def test_block_dropout(on_numpy, rng):
    """Dropout before each residual add in training; inference is the block without it."""
    plain = xn.TransformerBlock(E, HEADS)
    dropped = xn.TransformerBlock(E, HEADS, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = rng.standard_normal((N, L, E)).astype(np.float32)
    np.testing.assert_allclose(dropped(x), plain(x), rtol=1e-6, atol=1e-6)
    assert np.abs(dropped.forward(x, train=True) - plain.forward(x, train=True)).max() > 0.1
    assert xn.gradcheck(dropped, x)  # the same masks in every pass


def test_save_load_round_trip(on_numpy, tmp_path, rng):
    model = xn.Sequential(xn.PositionalEmbedding(7, E), xn.TransformerBlock(E, HEADS, 2, True, 0.1),
                          xn.MultiHeadAttention(E, 4, bias=False), xn.Linear(E, 3))
    x = rng.standard_normal((N, L, E)).astype(np.float32)
    y = model(x)
    xn.save(tmp_path / "m.xpnet", model)
    back = xn.load(tmp_path / "m.xpnet")
    np.testing.assert_array_equal(xn.to_numpy(back(x)), y)
    assert layer_config(back) == layer_config(model)
    for layer in model:
        again = build_layer(layer_config(layer))
        assert again.get_config() == layer.get_config() and repr(again) == repr(layer)
        assert type(layer).param_shapes(layer.get_config()) == {
            n: p.shape for n, p in layer.named_state()}


# -- PositionalEmbedding -----------------------------------------------------------------------
@pytest.mark.parametrize("length", [3, 6])
def test_positional_embedding(be, rng, length):
    layer = xn.PositionalEmbedding(6, 4)
    x_host = rng.standard_normal((2, length, 4))
    x = be.asarray(x_host, dtype="float32")
    check_layer(layer, x)
    w = layer.state_dict()["weight"]
    np.testing.assert_allclose(xn.to_numpy(layer(x)), x_host.astype(np.float32) + w[:length],
                               rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal((2, length, 4))
    layer.forward(x)
    layer.backward(be.asarray(dy, dtype="float32"))
    expect = np.zeros((6, 4))
    for i in range(2):
        expect[:length] += dy[i]
    np.testing.assert_allclose(xn.to_numpy(layer.weight.grad), expect, rtol=1e-5, atol=1e-6)


def test_positional_embedding_init(on_numpy):
    w = xn.PositionalEmbedding(64, 32).state_dict()["weight"]
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002


# -- the loss on (N, L, K) logits and per-token accuracy --------------------------------------
@pytest.mark.parametrize("target", ["labels", "probabilities"])
def test_cross_entropy_on_sequences_matches_torch(be, rng, target):
    torch = pytest.importorskip("torch")
    k = 5
    z = rng.standard_normal((N, L, k)) * 2
    labels = rng.integers(0, k, (N, L))
    probs = rng.dirichlet(np.ones(k), (N, L))
    t = labels if target == "labels" else probs
    loss = xn.SoftmaxCrossEntropy()
    c = loss.forward(be.asarray(z, dtype="float32"),
                     be.asarray(t, dtype=None if target == "labels" else "float32"))
    g = loss.backward()
    assert tuple(g.shape) == (N, L, k)
    zt = torch.tensor(z.reshape(-1, k), requires_grad=True)
    tt = torch.from_numpy(t.reshape(-1) if target == "labels" else probs.reshape(-1, k))
    ct = torch.nn.functional.cross_entropy(zt, tt)
    ct.backward()
    np.testing.assert_allclose(xn.to_numpy(c), ct.item(), rtol=1e-5)
    np.testing.assert_allclose(xn.to_numpy(g).reshape(-1, k), zt.grad.numpy(), rtol=1e-4,
                               atol=1e-6)


def test_cross_entropy_sequence_errors_and_correct(be, rng):
    z = rng.standard_normal((N, L, 3))
    labels = rng.integers(0, 3, (N, L))
    loss = xn.SoftmaxCrossEntropy()
    pred = be.asarray(z, dtype="float32")
    with pytest.raises(ValueError, match=rf"SoftmaxCrossEntropy: integer labels must have "
                                         rf"shape \({N}, {L}\) for logits of shape "
                                         rf"\({N}, {L}, 3\), got \({N}, 3\)"):
        loss.forward(pred, be.asarray(labels[:, :3]))
    acc = Accuracy()
    acc.prepare(loss, 3)
    hits = xn.to_numpy(acc.correct(pred, be.asarray(labels)))
    assert hits == np.sum(z.argmax(axis=-1) == labels) and positions(pred) == L
    m = MetricSet([acc], loss=False)
    m.update(pred, be.asarray(labels), None, N)
    assert m.results()["accuracy"] == pytest.approx(np.mean(z.argmax(axis=-1) == labels))


def _copy_task(rng, n, vocab=8, length=8):
    """Each position's label is the previous token (the first one's is itself)."""
    x = rng.integers(0, vocab, (n, length))
    return x, np.concatenate([x[:, :1], x[:, :-1]], axis=1)


def test_transformer_learns_to_copy_the_previous_token(on_numpy, rng):
    """A one-block causal model, 96 Adam steps: per-token accuracy from chance (1/8)
    to above 0.9 on held-out sequences, in about two seconds on NumPy."""
    x, y = _copy_task(rng, 384)
    xv, yv = _copy_task(rng, 128)
    model = xn.models.transformer(8, embed_dim=16, num_heads=2, num_layers=1, max_len=8)
    before = xn.evaluate(model, xv, yv, loss=xn.SoftmaxCrossEntropy())
    history = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(),
                     optimizer=xn.Adam(model.parameters(), lr=1e-2), epochs=8, batch_size=32,
                     progress=False, validation_data=(xv, yv), seed=0)
    after = xn.evaluate(model, xv, yv)
    logits = xn.to_numpy(xn.predict(model, xv))
    assert before["accuracy"] < 0.4 < 0.9 < after["accuracy"]
    assert after["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=-1) == yv))
    assert history["val_accuracy"][-1] == pytest.approx(after["accuracy"])
    assert 0.9 < history["accuracy"][-1] <= 1.0  # hits over tokens, not over sequences
    assert [type(layer).__name__ for layer in model][:2] == ["Embedding", "PositionalEmbedding"]
