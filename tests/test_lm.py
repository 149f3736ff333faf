"""Language models as people train them (GPT-style): LayerNorm without bias or affine,
weight tying, initialisers by name and callable, attention and residual dropout,
blockwise (flash-style) attention, token windows, cached generation and the GPT
example. Torch oracles in float64 where the case has it; gradchecks on every case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import torch_compare, wide

import xpnet as xn
from xpnet.testing import assert_on, check_layer


def _torch_compare(be, layer, module, x_host, *, int_input=False):
    """helpers.torch_compare on every parameter the two share by name."""
    torch_compare(be, layer, module, x_host, params="all", int_input=int_input)


# -- 1. LayerNorm without bias or affine; Linear without bias -----------------------------
@pytest.mark.parametrize("kw", [dict(bias=False), dict(elementwise_affine=False),
                                dict(elementwise_affine=False, bias=False)],
                         ids=["no-bias", "no-affine", "neither"])
def test_layernorm_variants_match_torch(be, rng, kw, tmp_path):
    torch = pytest.importorskip("torch")
    dtype, _ = wide(be)
    layer = xn.LayerNorm(5, eps=1e-4, dtype=dtype, **kw)
    module = torch.nn.LayerNorm(5, eps=1e-4, **kw).double()
    names = [n for n, _ in module.named_parameters()]
    assert list(layer.state_dict()) == names == list(module.state_dict())
    assert [n for n, _ in layer.named_parameters()] == names
    assert xn.LayerNorm.param_shapes(layer.get_config()) == {n: (5,) for n in names}
    if layer.weight is not None:  # weights no constructor draws, from torch
        with torch.no_grad():
            module.weight.copy_(torch.tensor(rng.standard_normal(5)))
        layer.load_state_dict(module.state_dict())
    x_host = rng.standard_normal((2, 3, 5))
    _torch_compare(be, layer, module, x_host)
    check_layer(layer, be.asarray(x_host, dtype=dtype))
    xn.save(tmp_path / "n.xpnet", layer)
    back = xn.load(tmp_path / "n.xpnet", backend=be.name, device=be.device_name)
    assert back.get_config() == layer.get_config()
    for (n1, a), (n2, b) in zip(layer.state_dict().items(), back.state_dict().items(),
                                strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)


def test_layernorm_without_parameters_takes_any_float_input(be):
    layer = xn.LayerNorm(4, elementwise_affine=False)
    assert layer.parameters() == [] and layer.weight is None and layer.bias is None
    y = layer(be.asarray(np.arange(8.0).reshape(2, 4), dtype="float32"))
    assert_on(be, y, "float32")
    np.testing.assert_allclose(xn.to_numpy(y).mean(axis=-1), 0.0, atol=1e-6)


def test_linear_without_bias_round_trips_with_torch(be, rng):
    torch = pytest.importorskip("torch")
    dtype, _ = wide(be)
    layer = xn.Linear(4, 3, bias=False, dtype=dtype)
    module = torch.nn.Linear(4, 3, bias=False).double()
    assert list(layer.state_dict()) == list(module.state_dict()) == ["weight"]
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rng.standard_normal((3, 4))))
    layer.load_state_dict(module.state_dict())
    _torch_compare(be, layer, module, rng.standard_normal((2, 5, 4)))
    fresh = torch.nn.Linear(4, 3, bias=False).double()
    fresh.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(fresh.weight.detach().numpy(),
                                  module.weight.detach().numpy().astype(dtype))


# -- 2. Weight tying ----------------------------------------------------------------------
V, D = 7, 4


def _tied(dtype="float32"):
    emb = xn.Embedding(V, D, dtype=dtype)
    return xn.Sequential(emb, xn.LayerNorm(D, bias=False, dtype=dtype), xn.Linear.tied_to(emb))


def _torch_tied():
    import torch

    emb = torch.nn.Embedding(V, D)
    head = torch.nn.Linear(D, V, bias=False)
    head.weight = emb.weight
    return torch.nn.Sequential(emb, torch.nn.LayerNorm(D, bias=False), head).double()


def test_tied_head_is_one_parameter_with_the_summed_gradient(be, rng):
    """Listed once (under the embedding's name), its gradient the sum of the lookup's
    and the head's, as a torch model with head.weight = emb.weight."""
    dtype, _ = wide(be)
    model = _tied(dtype)
    assert model[2].weight is model[0].weight
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "1.weight"]
    assert list(model.state_dict()) == ["0.weight", "1.weight"]
    assert list(model.state_dict(tied=True)) == ["0.weight", "1.weight", "2.weight"]
    assert model.ties() == {"2.weight": "0.weight"}
    assert len(model.parameters()) == 2 and len(model.arrays()) == 2
    ids = rng.integers(0, V, (3, 5))
    xn.gradcheck(model, be.asarray(ids, dtype="int64"))
    pytest.importorskip("torch", reason="the comparison with torch's tied model needs torch")
    _torch_compare(be, model, _torch_tied(), ids, int_input=True)


def test_tied_weights_round_trip_with_torch(be, rng):
    torch = pytest.importorskip("torch")
    theirs = _torch_tied()
    with torch.no_grad():
        theirs[0].weight.copy_(torch.tensor(rng.standard_normal((V, D))))
    assert set(theirs.state_dict()) == {"0.weight", "1.weight", "2.weight"}
    ours = _tied(wide(be)[0])
    ours.load_state_dict(theirs.state_dict())  # strict: the alias is the same array
    np.testing.assert_allclose(xn.to_numpy(ours[2].weight.value),
                               theirs[0].weight.detach().numpy(), rtol=1e-6)
    ours.load_state_dict({"0.weight": np.ones((V, D)), "1.weight": np.ones(D)})
    fresh = _torch_tied()
    fresh.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                           for k, v in ours.state_dict(tied=True).items()})
    result = fresh.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                                    for k, v in ours.state_dict().items()}, strict=False)
    assert result.missing_keys == ["2.weight"]  # filled by the tie
    assert float(fresh[2].weight.detach().sum()) == V * D
    with pytest.raises(ValueError, match="shape"):
        ours.load_state_dict({"0.weight": np.ones((V, D)), "2.weight": np.ones((V, 1)),
                              "1.weight": np.ones(D)})


@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
def test_checkpoints_rebuild_ties(be, rng, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model = _tied()
    opt = xn.AdamW(model.parameters(), lr=0.01)
    ids = be.asarray(rng.integers(0, V, (4, 3)), dtype="int64")
    xn.fit(model, ids, ids, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=1,
           batch_size=2, progress=False)
    path = tmp_path / f"tied{suffix}"
    xn.save(path, model, optimizer=opt)
    ck = xn.load_checkpoint(path, backend=be.name, device=be.device_name)
    back = ck.model
    assert back[2].weight is back[0].weight and back.ties() == model.ties()
    assert [p.name for p in ck.optimizer.params] == [p.name for p in opt.params]
    np.testing.assert_array_equal(xn.to_numpy(back(ids)), xn.to_numpy(model(ids)))
    # the description says so, and a file that ties arrays of other shapes is refused
    from xpnet.checkpoint.schema import check_description
    from xpnet.layers import layer_config

    spec = layer_config(model)
    assert spec["ties"] == {"2.weight": "0.weight"}
    spec["ties"] = {"2.weight": "1.weight"}
    with pytest.raises(ValueError, match="ties"):
        xn.layers.declared_state_of(spec)
    assert check_description is not None


def test_ties_in_a_graph_and_nested_models(be, rng, tmp_path):
    """A tie across Graph nodes, and one inside a Sequential inside a Sequential: each
    description records its own, the file rebuilds both."""
    inp = xn.Input(shape=(3,))
    emb = xn.Embedding(V, D)
    h = emb(inp)
    out = xn.Add()(xn.Linear.tied_to(emb)(h), xn.Linear(D, V)(h))
    graph = xn.Graph(inputs=inp, outputs=out)
    assert graph.ties() == {"1.weight": "0.weight"}
    inner = _tied()
    nested = xn.Sequential(inner, xn.Linear(V, 2))
    from xpnet.layers import layer_config

    assert "ties" not in layer_config(nested)  # the inner Sequential's own
    assert layer_config(nested)["config"]["layers"][0]["ties"] == {"2.weight": "0.weight"}
    ids = be.asarray(rng.integers(0, V, (2, 3)), dtype="int64")
    for model in (graph, nested):
        xn.save(tmp_path / "g.xpnet", model)
        back = xn.load(tmp_path / "g.xpnet", backend=be.name, device=be.device_name)
        assert back.ties() == model.ties()
        np.testing.assert_allclose(xn.to_numpy(back(ids)), xn.to_numpy(model(ids)),
                                   rtol=1e-6)


def test_tied_to_refuses_what_has_no_table():
    with pytest.raises(TypeError, match="Embedding"):
        xn.Linear.tied_to(xn.LayerNorm(3))
    model = _tied()
    with pytest.raises(ValueError, match="shapes"):
        model.tie("1.weight", "0.weight")


# -- 4. Initialisers by name and by callable ------------------------------------------------
def _std(p):
    return float(np.std(xn.to_numpy(p.value)))


def test_initialisers_by_name_object_and_callable(tmp_path):
    with xn.use("numpy"):
        xn.seed(0)
        a = xn.Linear(200, 300, init=xn.init.normal(0.02))
        assert abs(_std(a.weight) - 0.02) < 0.001 and not xn.to_numpy(a.bias.value).any()
        assert a.get_config()["init"] == {"init": "normal", "std": 0.02, "mean": 0.0}
        # scaled: the base's draw times the factor, from the same stream
        xn.seed(1)
        base = xn.Linear(20, 30, init=xn.init.normal(0.02), bias=False)
        xn.seed(1)
        small = xn.Linear(20, 30, init=xn.init.scaled(xn.init.normal(0.02), 0.25), bias=False)
        np.testing.assert_allclose(xn.to_numpy(small.weight.value),
                                   0.25 * xn.to_numpy(base.weight.value), rtol=1e-6)
        xn.seed(1)
        he = xn.Linear(20, 30, init="he", bias=False)
        xn.seed(1)
        half = xn.Linear(20, 30, init=xn.init.scaled("he", 0.5), bias=False)
        np.testing.assert_allclose(xn.to_numpy(half.weight.value),
                                   0.5 * xn.to_numpy(he.weight.value), rtol=1e-6)
        # a checkpoint keeps an initialiser of xpnet.init as its config, and rebuilds it
        model = xn.Sequential(xn.Embedding(10, 8, init=xn.init.normal(0.02)),
                              xn.PositionalEmbedding(4, 8, init=xn.init.uniform(0.1)), small)
        xn.save(tmp_path / "i.xpnet", xn.Sequential(model[0], model[1]))
        back = xn.load(tmp_path / "i.xpnet")
        assert back[0].init == xn.init.normal(0.02) and back[1].init == xn.init.uniform(0.1)
        assert back.get_config() == xn.Sequential(model[0], model[1]).get_config()
        # a callable of one's own: used, not saved (the message names the layer and the
        # ways out); registered by name, it is saved
        ones = xn.Linear(3, 2, init=lambda shape, rng: np.ones(shape))
        assert (xn.to_numpy(ones.weight.value) == 1).all()
        with pytest.raises(xn.CheckpointError, match=r"layer 1 \(Linear\) init is <function"
                                                     r".*xn.init.register"):
            xn.save(tmp_path / "c.xpnet", xn.Sequential(xn.ReLU(), ones))
        with pytest.raises(xn.CheckpointError, match="ModelCheckpoint: .* init"):
            xn.ModelCheckpoint(str(tmp_path / "m.xpnet")).on_train_begin(
                xn.Sequential(ones), xn.SGD(ones, lr=0.1))
        xn.init.register("ones_for_test", lambda shape, rng: np.ones(shape))
        named = xn.Linear(3, 2, init="ones_for_test")
        xn.save(tmp_path / "r.xpnet", named)
        assert xn.load(tmp_path / "r.xpnet").init == "ones_for_test"
        for bad in (3, {"init": "nope"}, "nope"):
            with pytest.raises(ValueError, match="init"):
                xn.Linear(3, 2, init=bad)


def test_a_model_with_a_callable_init_trains(rng):
    """fit describes the model to every rank (its config as JSON): a callable init is
    named there, not refused (only checkpoints need a description that rebuilds)."""
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(3, 2, init=lambda shape, r: r.normal(0, 0.1, shape)))
        xn.fit(model, rng.standard_normal((8, 3)), rng.integers(0, 2, 8), progress=False,
               loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1))


def test_gpt_initialisation_of_transformer_blocks(tmp_path):
    """GPT-2's: N(0, 0.02) weights, the two projections into the residual stream scaled
    by 1/sqrt(2 n_layers), zero biases; kept through a checkpoint."""
    n_layers = 8
    resid = xn.init.scaled(xn.init.normal(0.02), 1 / math.sqrt(2 * n_layers))
    with xn.use("numpy"):
        xn.seed(0)
        block = xn.TransformerBlock(128, 4, causal=True, init=xn.init.normal(0.02),
                                    resid_init=resid)
        state = dict(block.named_parameters())
        for name in ("self_attn.in_proj_weight", "linear1.weight"):
            assert abs(_std(state[name]) - 0.02) < 0.001, name
        for name in ("self_attn.out_proj.weight", "linear2.weight"):
            assert abs(_std(state[name]) - 0.02 / 4) < 0.0003, name
        for name, p in state.items():
            if name.endswith("bias") and not name.startswith("norm"):
                assert not xn.to_numpy(p.value).any(), name
        xn.save(tmp_path / "b.xpnet", block)
        back = xn.load(tmp_path / "b.xpnet")
        assert back.get_config() == block.get_config()
        assert back.self_attn.out_init == resid and back.linear2.init == resid
        from xpnet.checkpoint import _read

        assert _read(tmp_path / "b.xpnet")[0]["format_version"] == 2
        # PyTorch's initialisation when none is given, as before
        xn.seed(0)
        plain = xn.TransformerBlock(8, 2)
        assert "init" not in plain.get_config() and "init" not in plain.linear1.get_config() \
            or plain.linear1.get_config()["init"] == "pytorch"


# -- 5. Dropout on attention weights and residual branches ----------------------------------
def _torch_mha(layer):
    """torch's MultiheadAttention with ``layer``'s weights and attention dropout."""
    torch = pytest.importorskip("torch")
    t = torch.nn.MultiheadAttention(layer.embed_dim, layer.num_heads, batch_first=True,
                                    dropout=layer.attn_dropout).double()
    t.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                       for k, v in layer.state_dict().items()})
    return t


def test_dropouts_are_the_identity_in_inference_as_torch(be, rng):
    """attn_dropout and resid_dropout leave inference alone: the layers equal torch's
    MultiheadAttention(dropout=p) and TransformerEncoderLayer(dropout=p) in eval mode."""
    torch = pytest.importorskip("torch")
    dtype, tol = wide(be)
    layer = xn.MultiHeadAttention(6, 2, causal=True, attn_dropout=0.3, resid_dropout=0.2,
                                  dtype=dtype)
    t = _torch_mha(layer).eval()
    x = rng.standard_normal((2, 5, 6))
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    xt = torch.tensor(x)
    want = t(xt, xt, xt, attn_mask=mask, need_weights=False)[0].detach().numpy()
    np.testing.assert_allclose(xn.to_numpy(layer(be.asarray(x, dtype=dtype))), want,
                               rtol=tol, atol=tol)
    block = xn.TransformerBlock(6, 2, 2, causal=True, dropout=0.2, attn_dropout=0.1,
                                dtype=dtype)
    tb = torch.nn.TransformerEncoderLayer(6, 2, 12, dropout=0.2, activation="gelu",
                                          batch_first=True, norm_first=True).double().eval()
    tb.load_state_dict({k: torch.tensor(v) for k, v in block.state_dict().items()})
    want = tb(xt, src_mask=mask, is_causal=True).detach().numpy()
    np.testing.assert_allclose(xn.to_numpy(block(be.asarray(x, dtype=dtype))), want,
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("blockwise", [False, True], ids=["full", "blocks"])
def test_attention_dropout_masks_and_gradients(be, rng, blockwise):
    """In training, the attention weights keep each entry with probability 1 - p, scaled
    by 1 / (1 - p) (the mask of the plain path, read from its cache); the gradients
    through both dropouts pass gradcheck on both paths (the blockwise path draws its
    masks again in backward)."""
    p = 0.25
    layer = xn.MultiHeadAttention(8, 2, causal=True, attn_dropout=p, resid_dropout=0.1,
                                  block_size=4, blockwise=blockwise)
    x = be.asarray(rng.standard_normal((3, 10, 8)), dtype="float32")
    if not blockwise:
        layer.forward(x)
        mask = xn.to_numpy(layer._cache[5][2])
        kept = mask[mask != 0]
        np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6)
        below = np.tril(np.ones((10, 10), dtype=bool))
        dropped = (mask[..., below] == 0).mean()
        assert abs(dropped - p) < 0.06, dropped
        out = xn.to_numpy(layer._cache[6])  # the residual dropout's mask
        assert abs((out == 0).mean() - 0.1) < 0.05
    check_layer(layer, x)


def test_attention_dropout_is_unbiased(rng):
    """The mean over many training passes is the inference output (both dropouts)."""
    with xn.use("numpy"):
        xn.seed(0)
        layer = xn.MultiHeadAttention(4, 2, causal=True, attn_dropout=0.3, resid_dropout=0.2,
                                      dtype="float64")
        x = rng.standard_normal((2, 6, 4))
        stream = xn.RandomStream(3)
        with stream.active():
            mean = np.mean([layer.forward(x, train=True) for _ in range(3000)], axis=0)
        want = layer(x)
        assert np.abs(mean - want).max() < 0.05 * np.abs(want).max()
        assert np.abs(layer.forward(x, train=True) - want).max() > 0.05  # it does drop


def test_transformer_block_dropout_settings():
    block = xn.TransformerBlock(8, 2, dropout=0.1, attn_dropout=0.05)
    assert (block.dropout1.p, block.dropout2.p, block.self_attn.attn_dropout) == (0.1, 0.1, 0.05)
    assert block.self_attn.resid_dropout == 0.0  # the block's dropout1 does it
    assert xn.TransformerBlock(8, 2, resid_dropout=0.2).dropout == 0.2
    assert xn.TransformerBlock.from_config(block.get_config()).get_config() == block.get_config()
    with pytest.raises(ValueError, match="attn_dropout"):
        xn.TransformerBlock(8, 2, attn_dropout=1.0)


# -- 8. Blockwise attention: memory that grows with L, the same function ----------------------
def _passes(layer, x, dy, seed=5):
    """Output, input gradient and parameter gradients of one training pass."""
    layer.zero_grad()
    with xn.RandomStream(seed).active():
        y = layer.forward(x, train=True)
    dx = layer.backward(dy)
    return [xn.to_numpy(y), xn.to_numpy(dx)] + [xn.to_numpy(p.grad)
                                                for p in layer.parameters()]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("drop", [0.0, 0.3], ids=["no-dropout", "dropout"])
def test_blockwise_attention_equals_the_plain_path(be, rng, causal, drop):
    """Forward and backward of the blockwise path (tiles of 4 over 11 positions: a short
    last tile) equal the plain path's in float64, with the attention dropout off and on
    (both draw the same masks, tile by tile)."""
    dtype, _ = wide(be)
    tol = 1e-10 if dtype == "float64" else 1e-5
    runs = []
    x = be.asarray(rng.standard_normal((2, 11, 8)), dtype=dtype)
    dy = be.asarray(rng.standard_normal((2, 11, 8)), dtype=dtype)
    for blockwise in (False, True):
        xn.seed(2)
        layer = xn.MultiHeadAttention(8, 2, causal=causal, attn_dropout=drop, block_size=4,
                                      blockwise=blockwise, dtype=dtype)
        runs.append(_passes(layer, x, dy))
        assert layer._cache is not None
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_blockwise_is_chosen_above_a_length(monkeypatch):
    import xpnet.layers.attention as attention

    monkeypatch.setattr(attention, "BLOCKWISE_ABOVE", 6)
    with xn.use("numpy"):
        layer = xn.MultiHeadAttention(4, 2, causal=True, block_size=4)
        for length, kind in ((6, "full"), (7, "blocks")):
            layer.forward(np.zeros((1, length, 4), dtype=np.float32))
            assert layer._cache[5][0] == kind
        layer.blockwise = False
        layer.forward(np.zeros((1, 7, 4), dtype=np.float32))
        assert layer._cache[5][0] == "full"
        assert xn.MultiHeadAttention.from_config(layer.get_config()).blockwise is False


def _peak(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blockwise_training_fits_where_the_score_matrix_does_not():
    """A training step (forward, backward, AdamW) of a causal block at a context of
    4096: the blockwise path's peak NumPy memory is a fraction of one (N, H, L, L)
    float32 score matrix (the plain path holds several), measured by tracemalloc."""
    length, heads, width = 4096, 2, 16
    with xn.use("numpy"):
        xn.seed(0)
        block = xn.TransformerBlock(width, heads, 2, causal=True)
        block.self_attn.block_size = 256
        assert block.self_attn._uses_blocks(length)  # automatic above BLOCKWISE_ABOVE
        opt = xn.AdamW(block, lr=1e-3)
        x = np.random.default_rng(0).standard_normal((1, length, width)).astype(np.float32)

        def step():
            y = block.forward(x)
            block.backward(np.ones_like(y))
            opt.step()
            block.zero_grad()

        peak = _peak(step)
        scores = heads * length * length * 4
        assert peak < scores / 4, (peak, scores)

        # and the plain path, at a quarter of the length, already holds several
        block.self_attn.blockwise = False
        short = x[:, :1024]

        def plain():
            y = block.forward(short)
            block.backward(np.ones_like(y))

        assert _peak(plain) > 3 * heads * 1024 * 1024 * 4


# -- 6. Token windows -----------------------------------------------------------------------
def test_windows_are_reproducible_shifted_pairs(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) % 97
    w = xn.data.windows(tokens, 16, 5, seed=3)
    x0, y0 = next(w)
    assert x0.shape == y0.shape == (5, 16) and x0.dtype == np.int64
    np.testing.assert_array_equal(x0[:, 1:], y0[:, :-1])  # y is x shifted by one
    starts = w.starts(0)
    assert ((0 <= starts) & (starts <= 1000 - 17)).all()
    for b, i in enumerate(starts):
        np.testing.assert_array_equal(x0[b], tokens[i:i + 16])
        np.testing.assert_array_equal(y0[b], tokens[i + 1:i + 17])
    x1, _ = next(w)
    assert not np.array_equal(x0, x1)  # a new draw each step
    again = xn.data.windows(tokens, 16, 5, seed=3)
    np.testing.assert_array_equal(next(again)[0], x0)
    resumed = xn.data.windows(tokens, 16, 5, seed=3, start=1)  # a run resumed at step 1
    np.testing.assert_array_equal(next(resumed)[0], x1)
    assert not np.array_equal(next(xn.data.windows(tokens, 16, 5, seed=4))[0], x0)
    assert len(xn.data.windows(tokens, 16, 5, steps=7)) == 7
    assert len(list(xn.data.windows(tokens, 16, 5, steps=7))) == 7
    for bad, message in (((np.zeros((4, 4), np.int64), 2, 1), "1-D"),
                         ((np.zeros(8), 2, 1), "integer"),
                         ((np.zeros(4, np.int64), 4, 1), "at least 5")):
        with pytest.raises(ValueError, match=message):
            xn.data.windows(*bad)


def test_windows_read_a_memmap_batch_by_batch(tmp_path):
    """From a token file much larger than a batch: each batch reads its own windows; no
    copy of the file (or of all windows) is made."""
    import tracemalloc

    n = 4_000_000
    path = tmp_path / "tokens.u16"
    (np.arange(n, dtype=np.uint32) % 50_000).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    w = xn.data.windows(tokens, 64, 12, seed=0)
    tracemalloc.start()
    for _ in range(20):
        x, y = next(w)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000, peak  # a few batches' worth, not the 8 MB file
    i = w.starts(19)[0]
    np.testing.assert_array_equal(x[0], np.asarray(tokens[i:i + 64]))


def test_windows_train_with_fit_and_evaluate(be):
    """As fit's x with steps_per_epoch: each epoch goes on where the last ended (the
    batches of steps 0..5 over two epochs); evaluate reads windows with steps."""
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(0, 11, 40), 30)  # a repeating text: learnable
    model = xn.models.gpt(11, context=16, width=16, heads=2, layers=1)
    opt = xn.AdamW(xn.optim.decay_groups(model, 0.1), lr=1e-2)
    source = xn.data.windows(tokens, 16, 8, seed=1)
    before = xn.evaluate(model, xn.data.windows(tokens, 16, 8, seed=9, steps=4),
                         loss=xn.SoftmaxCrossEntropy())["loss"]
    xn.fit(model, source, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=4,
           steps_per_epoch=15, progress=False)
    assert source.step == 60 and opt.steps == 60
    after = xn.evaluate(model, xn.data.windows(tokens, 16, 8, seed=9, steps=4))["loss"]
    assert after < 0.6 * before, (before, after)


# -- 7. Generation with a cache of keys and values ------------------------------------------
def _small_gpt(dtype, context=8):
    xn.seed(3)
    model = xn.models.gpt(13, context=context, width=8, heads=2, layers=2, dropout=0.1)
    return model.astype(dtype)


def _argmax_decode(model, prompt, new):
    """Greedy decoding written out: the whole sequence through the model each time."""
    ids = np.array(prompt)
    for _ in range(new):
        logits = xn.to_numpy(model(model.backend.asarray(ids, dtype="int64")))
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return ids


def test_generate_with_the_cache_gives_the_same_tokens(be):
    """On every case: the cached decode (one position per token) and the full window
    each time draw the same tokens for a seed, past the context too (where the window
    restarts from its newest half); greedy decoding (temperature 0, top_k=1) is the
    argmax; the tokens stay on the device."""
    dtype, _ = wide(be)
    model = _small_gpt(dtype)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=4)):
        cached = model_out = xn.generate(model, prompt, 14, seed=5, **kw)
        full = xn.generate(model, prompt, 14, seed=5, use_cache=False, **kw)
        assert_on(be, cached, "int64")
        assert cached.shape == (2, 17)
        np.testing.assert_array_equal(xn.to_numpy(cached), xn.to_numpy(full))
        np.testing.assert_array_equal(xn.to_numpy(cached)[:, :3], prompt)
        other = xn.generate(model, prompt, 14, seed=6, **kw)
        assert not np.array_equal(xn.to_numpy(other), xn.to_numpy(model_out))
    roomy = _small_gpt(dtype, context=32)  # no restart: the argmax of the whole sequence
    want = _argmax_decode(roomy, prompt, 10)
    for kw in (dict(temperature=0.0), dict(top_k=1)):
        np.testing.assert_array_equal(xn.to_numpy(xn.generate(roomy, prompt, 10, **kw)), want)
    one = xn.generate(roomy, [1, 2, 3], 4, temperature=0.0)
    assert one.shape == (7,)
    np.testing.assert_array_equal(xn.to_numpy(one), want[0, :7])


def test_generate_samples_the_softmax_with_temperature_and_top_k():
    """Frequencies of many one-token draws against the distribution asked for: a model
    whose logits are fixed (an Embedding table of them)."""
    logits = np.log(np.array([0.05, 0.1, 0.15, 0.3, 0.4]))
    with xn.use("numpy"):
        table = xn.Embedding(5, 5, dtype="float64")
        table.load_state_dict({"weight": np.tile(logits, (5, 1))})
        prompt = np.zeros((20000, 1), dtype=np.int64)
        for kw, probs in ((dict(temperature=1.0), np.exp(logits)),
                          (dict(temperature=0.5), np.exp(logits / 0.5)),
                          (dict(temperature=1.0, top_k=2), np.exp(logits) * [0, 0, 0, 1, 1])):
            probs = probs / probs.sum()
            got = xn.generate(table, prompt, 1, seed=1, **kw)[:, 1]
            freq = np.bincount(got, minlength=5) / len(got)
            np.testing.assert_allclose(freq, probs, atol=0.012)


def test_generate_needs_a_causal_model_to_cache():
    with xn.use("numpy"):
        inp = xn.Input(shape=(4,))
        graph = xn.Graph(inputs=inp, outputs=xn.Linear(8, 5)(xn.Embedding(5, 8)(inp)))
        with pytest.raises(TypeError, match="use_cache=False"):
            xn.generate(graph, [[1, 2, 3, 4]], 2)
        assert xn.generate(graph, [[1, 2, 3, 4]], 1, use_cache=False).shape == (1, 5)
        encoder = xn.Sequential(xn.Embedding(5, 4), xn.TransformerBlock(4, 2), xn.Linear(4, 5))
        with pytest.raises(ValueError, match="causal"):
            xn.generate(encoder, [1, 2], 2)


# -- 9. The GPT model and example -------------------------------------------------------------
def test_gpt_model_is_tied_gpt2_initialised_and_saves(tmp_path, rng):
    with xn.use("numpy"):
        xn.seed(0)
        model = xn.models.gpt(50, context=16, width=32, heads=4, layers=3, dropout=0.1)
        head, emb = model[-1], model[0]
        assert head.weight is emb.weight and model.ties() == {"7.weight": "0.weight"}
        blocks = [layer for layer in model if isinstance(layer, xn.TransformerBlock)]
        assert len(blocks) == 3 and all(b.causal and b.attn_dropout == 0.1 for b in blocks)
        assert blocks[0].resid_init == xn.init.scaled(xn.init.normal(0.02), 1 / math.sqrt(6))
        ids = rng.integers(0, 50, (2, 16))
        xn.save(tmp_path / "gpt.xpnet", model)
        back = xn.load(tmp_path / "gpt.xpnet")
        assert back[-1].weight is back[0].weight
        np.testing.assert_array_equal(back(ids), model(ids))


def _example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpt_example_learns_and_matches_pytorch(capsys):
    """A few iterations of a smaller baby GPT: the held-out loss falls below the
    uniform ln 98 = 4.585 nats, a sample follows the prompt, and without dropout
    PyTorch trained from the same weights on the same batches (same groups, schedule,
    clipping, tied head) lands on the same loss, float32 rounding apart."""
    pytest.importorskip("torch", reason="torch is not installed: no reference run")
    code = _example("gpt").main(["--backend", "numpy", "--iters", "30", "--width", "32",
                                 "--heads", "2", "--layers", "2", "--context", "32",
                                 "--dropout", "0", "--train-chars", "40000",
                                 "--val-chars", "6000", "--sample-chars", "40", "--lr", "3e-3"])
    out = capsys.readouterr().out
    assert code == 0
    ours = float(out.split("xpnet    held-out loss ")[1].split()[0])
    ref = float(out.split("pytorch  held-out loss ")[1].split()[0])
    assert ours < 4.0, out
    assert abs(ours - ref) < 0.01, out
    assert "sample:\ndef __init__(self" in out


def test_attention_memory_bench_reports_both_paths(capsys):
    from bench import attention_memory

    assert attention_memory.main(["--lengths", "64", "--heads", "2", "--width", "8",
                                  "--block", "16"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.strip().startswith("64 ")]
    assert row and row[0].count("|") >= 2 and "failed" not in out, out
