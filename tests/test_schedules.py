"""Learning-rate schedules with warmup (stepped per batch), plain callables, checkpoints of
schedules, and ReduceLROnPlateau (per epoch) against torch.optim.lr_scheduler."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs

import xpnet as xn


def _torch_lrs(make_scheduler, steps, lr):
    """The rates a torch scheduler gives at steps 0 .. steps-1 (stepped once per batch)."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_against_a_vectorised_formula_and_torch():
    lr, w, total, low = 0.3, 5, 25, 0.01
    sched = xn.WarmupCosineLR(lr, warmup_steps=w, total_steps=total, min_lr=low)
    got = np.array([sched(s) for s in range(total + 5)])
    s = np.arange(total + 5, dtype=np.float64)
    t = np.clip((s - w) / (total - w), 0.0, 1.0)
    want = np.where(s < w, lr * s / w, low + (lr - low) * (1 + np.cos(np.pi * t)) / 2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[0] == 0.0 and got[w] == pytest.approx(lr) and got[-1] == pytest.approx(low)
    # after the warmup: PyTorch's CosineAnnealingLR over total - w steps, shifted by w
    torch = pytest.importorskip("torch")
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=total - w, eta_min=low), total - w + 1, lr)
    np.testing.assert_allclose(got[w:total + 1], ref, rtol=1e-9)
    # the same schedule through CosineLR's warmup_steps argument
    same = xn.CosineLR(lr, total, low, warmup_steps=w)
    assert [same(i) for i in range(total + 5)] == list(got)


def test_cosine_without_warmup_is_torch_cosine_annealing():
    torch = pytest.importorskip("torch")
    sched = xn.CosineLR(0.1, total_steps=12, min_lr=0.001)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=12, eta_min=0.001), 13, 0.1)
    np.testing.assert_allclose([sched(s) for s in range(13)], ref, rtol=1e-9)


def test_step_decay_with_warmup_against_torch():
    torch = pytest.importorskip("torch")
    lr, w = 0.2, 4
    sched = xn.StepLR(lr, step_size=3, gamma=0.5, warmup_steps=w)
    got = [sched(s) for s in range(20)]
    np.testing.assert_allclose(got[:w], [lr * s / w for s in range(w)], rtol=1e-12)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
                     20 - w, lr)
    np.testing.assert_allclose(got[w:], ref, rtol=1e-12)
    plain = xn.StepLR(lr, step_size=3, gamma=0.5)  # no warmup: unchanged from before
    assert [plain(s) for s in range(9)] == [lr * 0.5 ** (s // 3) for s in range(9)]


def test_schedule_arguments():
    with pytest.raises(ValueError, match="warmup_steps .10. must be less than total_steps"):
        xn.WarmupCosineLR(0.1, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="StepLR: warmup_steps must be >= 0"):
        xn.StepLR(0.1, 2, warmup_steps=-1)
    with pytest.raises(TypeError, match="CosineLR: warmup_steps must be an integer"):
        xn.CosineLR(0.1, 10, warmup_steps=1.5)
    assert "warmup_steps=3" in repr(xn.StepLR(0.1, 2, warmup_steps=3))


@pytest.mark.fit_level
def test_fit_steps_schedules_per_batch_and_any_callable_works(be):
    """A plain callable of the step is an lr: fit asks it once per batch, steps 0, 1..."""
    x, y = blobs()
    asked = []

    def rate(step):
        asked.append(step)
        return 0.1 / (1 + step)

    model = xn.Sequential(xn.Linear(4, 3))
    opt = xn.SGD(model, lr=rate)
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=2,
           batch_size=16, progress=False, seed=0)
    assert asked == list(range(6)) and opt.steps == 6
    assert opt.current_lr() == pytest.approx(0.1 / 7)


@pytest.mark.parametrize("sched", [xn.WarmupCosineLR(0.05, 3, 40, min_lr=0.001),
                                   xn.StepLR(0.05, 4, 0.5, warmup_steps=2),
                                   xn.CosineLR(0.05, 30, warmup_steps=5)])
def test_schedules_round_trip_through_checkpoints(tmp_path, sched):
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.Adam(model, lr=sched)
        opt.steps = 7
        xn.save(tmp_path / "m.xpnet", model, optimizer=opt)
        back = xn.load_checkpoint(tmp_path / "m.xpnet").optimizer
    assert type(back.lr) is type(sched) and back.lr.get_config() == sched.get_config()
    assert [back.lr(s) for s in range(40)] == [sched(s) for s in range(40)]
    assert back.current_lr() == sched(7)


def test_a_callable_that_cannot_be_saved_says_so_early(tmp_path):
    x, y = blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=lambda step: 0.1)
        with pytest.raises(xn.CheckpointError, match="cannot be saved.*SCHEDULES"):
            xn.save(tmp_path / "m.xpnet", model, optimizer=opt)
        with pytest.raises(TypeError, match="cannot be saved"):  # before the first epoch
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, progress=False,
                   callbacks=[xn.ModelCheckpoint(tmp_path / "best.xpnet", monitor="loss")])
        assert opt.steps == 0
        xn.save(tmp_path / "m.xpnet", model)  # the model alone is fine


# -- ReduceLROnPlateau ------------------------------------------------------------------
def _plateau_metrics(seed):
    """A metric that improves, stalls, wobbles and improves again."""
    r = np.random.default_rng(seed)
    base = np.concatenate([np.linspace(1.0, 0.5, 6), np.full(8, 0.5), np.linspace(0.5, 0.3, 5),
                           np.full(10, 0.3)])
    return base + 1e-5 * r.standard_normal(base.size) * (r.random(base.size) < 0.5)


@pytest.mark.parametrize("mode,patience,cooldown,min_lr,min_delta", [
    ("min", 0, 0, 0.0, 1e-4), ("min", 2, 0, 0.0, 1e-4), ("min", 2, 2, 0.0, 0.0),
    ("min", 1, 1, 2e-3, 1e-3), ("max", 3, 0, 0.0, 1e-4),
])
def test_reduce_lr_on_plateau_matches_torch(mode, patience, cooldown, min_lr, min_delta):
    torch = pytest.importorskip("torch")
    values = _plateau_metrics(patience + cooldown)
    if mode == "max":
        values = -values
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(2, 2))
        opt = xn.SGD(model, lr=0.1)
        cb = xn.ReduceLROnPlateau("val_loss", factor=0.5, patience=patience, mode=mode,
                                  cooldown=cooldown, min_lr=min_lr, min_delta=min_delta)
        cb.on_train_begin(model, opt)
        got = []
        for epoch, v in enumerate(values):
            cb.on_epoch_end(epoch, {"val_loss": float(v)})
            got.append(opt.lr)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        t_opt, mode=mode, factor=0.5, patience=patience, threshold=min_delta,
        threshold_mode="abs", cooldown=cooldown, min_lr=min_lr)
    want = []
    for v in values:
        ref.step(float(v))
        want.append(t_opt.param_groups[0]["lr"])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] < 0.1  # the sequences do lower the rate


@pytest.mark.fit_level
def test_reduce_lr_on_plateau_in_fit(be):
    x, y = blobs()
    model = xn.Sequential(xn.Linear(4, 3))
    opt = xn.SGD(model, lr=0.1)
    # a falling loss never "improves" in max mode: the rate halves every epoch after the first
    cb = xn.ReduceLROnPlateau("loss", factor=0.5, patience=0, mode="max")
    h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=4,
               batch_size=16, progress=False, seed=0, callbacks=[cb])
    assert all(np.diff(h["loss"]) < 0)
    assert opt.lr == pytest.approx(0.1 * 0.5**3)


def test_reduce_lr_on_plateau_arguments():
    x, y = blobs()
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        opt = xn.SGD(model, lr=xn.CosineLR(0.1, 10))
        with pytest.raises(TypeError, match="ReduceLROnPlateau: the optimizer's lr is the "
                                            "schedule CosineLR"):
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, progress=False,
                   callbacks=[xn.ReduceLROnPlateau("loss")])
        with pytest.raises(KeyError, match="val_loss"):  # before training
            xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model),
                   progress=False, callbacks=[xn.ReduceLROnPlateau()])
    with pytest.raises(ValueError, match="ReduceLROnPlateau: factor"):
        xn.ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="ReduceLROnPlateau: patience"):
        xn.ReduceLROnPlateau(patience=-1)
