"""Parameter groups in every optimizer, PyTorch's way: settings per group, each group's
rate following its own schedule, decay_groups, checkpoints, compiled steps equal to
eager, ReduceLROnPlateau per group."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn
from xpnet.train.compiled import TrainStep
from xpnet.train.step import Step


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend: the trace without inductor's code
    generation (minutes on 2 cores)."""
    from xpnet.backends.torch import TorchCompiler

    monkeypatch.setattr(TorchCompiler, "backend", "aot_eager")


def _model(dtype="float32"):
    return xn.Sequential(xn.Linear(5, 6, dtype=dtype), xn.LayerNorm(6, dtype=dtype),
                         xn.GELU(), xn.Linear(6, 3, dtype=dtype))


def _wide(be):
    return ("float64", 1e-10) if be.supports("float64") else ("float32", 2e-5)


def _split(model):
    """Weights (matrices) and the rest, as decay_groups splits them."""
    decay = [p for p in model.parameters() if len(p.shape) >= 2]
    rest = [p for p in model.parameters() if len(p.shape) < 2]
    return decay, rest


# -- settings per group, against torch.optim ------------------------------------------------
@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW"])
def test_groups_match_torch_optimizers(be, rng, kind):
    """Two groups with their own weight decay (and SGD momentum, Adam betas), one rate a
    schedule of its own: the parameters after 6 steps equal torch.optim's with the same
    groups (LambdaLR gives torch the schedule, as a factor of the group's rate)."""
    torch = pytest.importorskip("torch")
    dtype, tol = _wide(be)
    model = _model(dtype)
    decay, rest = _split(model)
    sched = xn.CosineLR(0.05, 6, min_lr=0.01, warmup_steps=2)
    own = {"SGD": dict(momentum=0.5, nesterov=True), "Adam": dict(betas=(0.8, 0.95)),
           "AdamW": dict(betas=(0.8, 0.95), eps=1e-6)}[kind]
    groups = [{"params": decay, "weight_decay": 0.1, **own},
              {"params": rest, "weight_decay": 0.0, "lr": sched}]
    opt = getattr(xn, kind)(groups, lr=0.03)
    assert opt.params == decay + rest
    assert [len(g["params"]) for g in opt.param_groups] == [len(decay), len(rest)]
    assert opt.param_groups[1]["lr"] is sched and opt.param_groups[0]["lr"] == 0.03
    for key, value in own.items():
        assert opt.param_groups[0][key] == value
        assert opt.param_groups[1][key] == opt.defaults[key]
    tmodel = [torch.tensor(xn.to_numpy(p.value), dtype=torch.float64, requires_grad=True)
              for p in model.parameters()]
    ids = {id(p): i for i, p in enumerate(model.parameters())}
    tdecay, trest = ([tmodel[ids[id(p)]] for p in ps] for ps in (decay, rest))
    topt = getattr(torch.optim, kind)(
        [{"params": tdecay, "weight_decay": 0.1, **own},
         {"params": trest, "weight_decay": 0.0, "lr": 0.05}], lr=0.03)
    lambdas = [lambda s: 1.0, lambda s: sched(s) / 0.05]
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambdas)
    for step in range(6):
        grads = [rng.standard_normal(p.shape) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = be.asarray(g, dtype=dtype)
        assert opt.current_lr(1) == pytest.approx(sched(step))
        opt.step()
        for t, g in zip(tmodel, grads):
            t.grad = torch.tensor(g)
        topt.step()
        tsched.step()
    for p in model.parameters():
        np.testing.assert_allclose(xn.to_numpy(p.value), tmodel[ids[id(p)]].detach().numpy(),
                                   rtol=tol, atol=tol, err_msg=p.name)


def test_identical_groups_train_as_one(be, rng):
    """Groups that agree on every setting are one group: fit with clipping gives the
    same weights either way, to the bit (the coefficients are per group, the update
    the same)."""
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    runs = []
    for split in (False, True):
        xn.seed(2)
        model = _model()
        params = model.parameters()  # in the model's order: the clip norm sums the same
        given = [{"params": params[:3]}, {"params": params[3:]}] if split else params
        opt = xn.AdamW(given, lr=xn.WarmupCosineLR(0.01, 2, 6), weight_decay=0.1)
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
               batch_size=8, progress=False, clip_grad_norm=0.5)
        runs.append([xn.to_numpy(a) for a in model.arrays()])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_settings_read_and_set_through_the_optimizer():
    with xn.use("numpy"):
        model = _model()
        decay, rest = _split(model)
        opt = xn.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=0.01)
        assert opt.lr == 0.01 and opt.betas == (0.9, 0.999)
        with pytest.raises(AttributeError, match=r"weight_decay differs .*param_groups"):
            _ = opt.weight_decay
        opt.weight_decay = 0.2  # every group
        assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.2]
        with pytest.raises(ValueError, match=r"weight_decay must be a finite number"):
            opt.weight_decay = -1.0
        assert opt.hyperparameters()[0] == (((0.9, 0.999), 1e-8, 0.2),) * 2
        opt.param_groups[1]["eps"] = 1e-6
        assert opt.hyperparameters()[0][1] == ((0.9, 0.999), 1e-6, 0.2)
        assert "2 params" in repr(opt) or "params" in repr(opt)
        # one group: as before
        single = xn.SGD(model, lr=0.1, momentum=0.9)
        assert single.momentum == 0.9 and len(single.param_groups) == 1
        assert single.get_config() == {"momentum": 0.9, "nesterov": False,
                                       "weight_decay": 0.0}


def test_group_mistakes_are_named():
    with xn.use("numpy"):
        model = _model()
        decay, rest = _split(model)
        with pytest.raises(ValueError, match=r"param_groups\[1\]: parameter 'weight' is "
                                             r"already in param_groups\[0\]"):
            xn.Adam([{"params": decay}, {"params": decay[:1]}])
        with pytest.raises(ValueError, match=r"unknown setting\(s\) 'momentum'"):
            xn.Adam([{"params": decay, "momentum": 0.9}])
        with pytest.raises(ValueError, match=r"nesterov=True needs momentum > 0"):
            xn.SGD([{"params": decay, "nesterov": True}], momentum=0.0)
        with pytest.raises(TypeError, match="mixes parameter groups"):
            xn.SGD([{"params": decay}, rest[0]])
        with pytest.raises(ValueError, match="got no parameters"):
            xn.SGD([{"params": []}])
        with pytest.raises(ValueError, match=r"betas must be a pair"):
            xn.Adam([{"params": decay, "betas": 0.9}])
        opt = xn.SGD([{"params": decay}, {"params": []}], lr=0.1)  # an empty group is kept
        assert len(opt.param_groups) == 2 and opt.params == decay
        opt.add_param_group({"params": rest, "lr": 0.5})
        assert opt.params == decay + rest and opt.param_groups[2]["lr"] == 0.5
        assert len(opt.state["momentum"]) == len(decay + rest)


# -- decay_groups ---------------------------------------------------------------------------
def test_decay_groups_splits_matrices_from_the_rest():
    with xn.use("numpy"):
        xn.seed(0)
        emb = xn.Embedding(11, 8)
        model = xn.Sequential(emb, xn.PositionalEmbedding(5, 8),
                              xn.TransformerBlock(8, 2, causal=True),
                              xn.LayerNorm(8, bias=False), xn.Linear.tied_to(emb))
        groups = xn.optim.decay_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        decay = [names[id(p)] for p in groups[0]["params"]]
        keep = [names[id(p)] for p in groups[1]["params"]]
        assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
        assert decay == ["2.self_attn.in_proj_weight", "2.self_attn.out_proj.weight",
                         "2.linear1.weight", "2.linear2.weight"]
        assert keep == ["0.weight", "1.weight", "2.self_attn.in_proj_bias",
                        "2.self_attn.out_proj.bias", "2.linear1.bias", "2.linear2.bias",
                        "2.norm1.weight", "2.norm1.bias", "2.norm2.weight", "2.norm2.bias",
                        "3.weight"]
        both = xn.optim.decay_groups(model, 0.1, embeddings=True)
        assert [names[id(p)] for p in both[0]["params"]][:2] == ["0.weight", "1.weight"]
        opt = xn.AdamW(groups, lr=1e-3)
        assert len(opt.params) == len(model.parameters())


# -- checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
def test_checkpoints_save_and_restore_groups(be, rng, tmp_path, suffix):
    """A run saved after 3 steps and resumed from the file ends where the uninterrupted
    run does: every group's settings, rates (a schedule, a rate a plateau lowered) and
    slots come back."""
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)

    def make():
        xn.seed(5)
        model = _model()
        decay, rest = _split(model)
        return model, xn.AdamW([{"params": decay, "weight_decay": 0.1, "betas": (0.8, 0.9)},
                                {"params": rest, "weight_decay": 0.0,
                                 "lr": xn.CosineLR(0.02, 6)}], lr=0.01)

    def train(model, opt, steps):
        step = Step(model, xn.SoftmaxCrossEntropy(), opt)
        xb, yb = be.asarray(x), be.asarray(y)
        for _ in range(steps):
            step(xb, yb)

    model, opt = make()
    train(model, opt, 6)
    want = [xn.to_numpy(a) for a in model.arrays()]
    model, opt = make()
    train(model, opt, 3)
    opt.param_groups[0]["lr"] = 0.005  # as a ReduceLROnPlateau would
    path = tmp_path / f"g{suffix}"
    xn.save(path, model, optimizer=opt)
    ck = xn.load_checkpoint(path, backend=be.name, device=be.device_name)
    back = ck.optimizer
    assert len(back.param_groups) == 2 and back.steps == 3
    assert back.param_groups[0]["lr"] == 0.005 and back.param_groups[0]["betas"] == (0.8, 0.9)
    assert isinstance(back.param_groups[1]["lr"], xn.CosineLR)
    assert [g["weight_decay"] for g in back.param_groups] == [0.1, 0.0]
    names = {id(p): n for n, p in ck.model.named_parameters()}
    assert [names[id(p)] for p in back.param_groups[1]["params"]] == ["0.bias", "1.weight",
                                                                      "1.bias", "3.bias"]
    back.param_groups[0]["lr"] = 0.01
    train(ck.model, back, 3)
    for a, b in zip([xn.to_numpy(a) for a in ck.model.arrays()], want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_group_descriptions_are_checked_before_building(tmp_path):
    from xpnet.checkpoint import _read
    from xpnet.checkpoint.npz import write_npz

    with xn.use("numpy"):
        model = _model()
        decay, rest = _split(model)
        opt = xn.SGD([{"params": decay}, {"params": rest, "momentum": 0.5}], lr=0.1)
        xn.save(tmp_path / "g.xpnet", model, optimizer=opt)
    meta, arrays = _read(tmp_path / "g.xpnet")
    assert meta["format_version"] == 2 and len(meta["optimizer"]["groups"]) == 2
    single = tmp_path / "s.xpnet"
    xn.save(single, model, optimizer=xn.SGD(model, lr=0.1))
    assert _read(single)[0]["format_version"] == 1 and "groups" not in _read(single)[0][
        "optimizer"]
    import json

    for change, message in [
            (lambda m: m["optimizer"]["groups"].reverse(), r"groups hold .* in order"),
            (lambda m: m["optimizer"]["groups"][0]["config"].update(betas=[0.9, 0.9]),
             r"groups\[0\] config has unknown entry 'betas'"),
            (lambda m: m["optimizer"]["groups"][1].update(lr=-1.0), r"groups\[1\] lr is -1.0"),
            (lambda m: m.update(format_version=3), r"newer xpnet")]:
        bad = json.loads(json.dumps(meta))
        change(bad)
        path = tmp_path / "bad.xpnet"
        with open(path, "wb") as f:
            write_npz(f, json.dumps(bad).encode(), arrays)
        with pytest.raises(xn.CheckpointError, match=message):
            xn.load_checkpoint(path)


# -- compiled steps equal eager with groups ---------------------------------------------------
def _gpt_like():
    emb = xn.Embedding(9, 8)
    return xn.Sequential(emb, xn.PositionalEmbedding(6, 8),
                         xn.TransformerBlock(8, 2, causal=True, dropout=0.2, attn_dropout=0.1),
                         xn.LayerNorm(8, bias=False), xn.Linear.tied_to(emb))


def test_compiled_step_with_groups_equals_eager(be, aot_eager):
    """A tied GPT-like model with dropout, AdamW in two groups (weight decay on matrices
    only; the second group's rate a schedule of its own), clipping: 6 compiled steps
    give the eager steps' weights, and a weight decay changed in one group between
    steps is taken by the compiled step (it is part of what the step bakes in)."""
    rng = np.random.default_rng(0)
    x = be.asarray(rng.integers(0, 9, (4, 6)), dtype="int64")
    y = be.asarray(rng.integers(0, 9, (4, 6)), dtype="int64")
    runs = []
    for compiled in (False, True):
        xn.seed(4)
        model = _gpt_like()
        groups = xn.optim.decay_groups(model, 0.1)
        groups[1]["lr"] = xn.WarmupCosineLR(0.02, 2, 6)
        opt = xn.AdamW(groups, lr=0.01, betas=(0.9, 0.95))
        step = TrainStep(Step(model, xn.SoftmaxCrossEntropy(), opt, clip_grad_norm=1.0),
                         compiler=None if compiled else False)
        stream = xn.RandomStream(7).restart(7, 0)
        with stream.active():
            for i in range(6):
                if i == 3:
                    opt.param_groups[0]["weight_decay"] = 0.5
                step(x, y)
        arrays = dict(zip([n for n, _ in model.named_state()],
                          [np.array(xn.to_numpy(a)) for a in model.arrays()], strict=True))
        # the key bias's gradient is 0 but for rounding (a shift shared by a row of
        # scores leaves the softmax as it is), which Adam turns into steps of random sign
        arrays["2.self_attn.in_proj_bias"][8:16] = 0.0
        runs.append(arrays)
    for name in runs[0]:
        np.testing.assert_allclose(runs[0][name], runs[1][name], rtol=2e-4, atol=2e-5,
                                   err_msg=name)


def test_reduce_lr_on_plateau_lowers_every_group(rng):
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    with xn.use("numpy"):
        model = _model()
        decay, rest = _split(model)
        opt = xn.SGD([{"params": decay, "lr": 0.1}, {"params": rest, "lr": 0.02}])
        cb = xn.ReduceLROnPlateau("loss", factor=0.5, patience=0, mode="max")
        xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=3,
               batch_size=8, progress=False, callbacks=[cb])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.25, 0.02 * 0.25])
    with xn.use("numpy"):
        scheduled = xn.SGD([{"params": decay}, {"params": rest, "lr": xn.CosineLR(0.1, 5)}])
        with pytest.raises(TypeError, match="ReduceLROnPlateau"):
            cb.on_train_begin(model, scheduled)
