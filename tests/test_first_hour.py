"""What a Keras or PyTorch user tries in the first hour (issue 24): fit's
validation_split, names for the loss and optimizer, devices alone, a process-wide
backend, parameter groups through fit, freezing after the optimizer is built, save's
file names, Keras-style callbacks, EarlyStopping's default, predict's type."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_on
from helpers import blobs, quick_fit

import xpnet as xn
from xpnet.data import holdout


def _model():
    return xn.Sequential(xn.Linear(4, 16), xn.ReLU(), xn.Linear(16, 3))


# -- validation_split -----------------------------------------------------------------------
def _skewed(n=100):
    """Labels 60% class 0, 30% class 1, 10% class 2, in a scrambled order."""
    y = np.repeat([0, 1, 2], [int(n * 0.6), int(n * 0.3), n - int(n * 0.6) - int(n * 0.3)])
    y = np.random.default_rng(5).permutation(y)
    x = np.arange(len(y) * 4, dtype=np.float32).reshape(len(y), 4)
    return x, y


def test_validation_split_is_stratified_seeded_and_keeps_order():
    x, y = _skewed()
    x_tr, y_tr, (x_val, y_val) = holdout(x, y, 0.2, seed=3)
    assert np.bincount(y_val).tolist() == [12, 6, 2]  # 20% of each class
    assert np.bincount(y_tr).tolist() == [48, 24, 8]
    rows_val = (x_val[:, 0] // 4).astype(int)
    rows_tr = (x_tr[:, 0] // 4).astype(int)
    assert sorted([*rows_val, *rows_tr]) == list(range(100))  # a partition
    assert np.all(np.diff(rows_val) > 0) and np.all(np.diff(rows_tr) > 0)  # order kept
    np.testing.assert_array_equal(y[rows_val], y_val)
    again = holdout(x, y, 0.2, seed=3)[2][0]
    np.testing.assert_array_equal(again, x_val)  # the same seed, the same rows
    other = holdout(x, y, 0.2, seed=4)[2][0]
    assert not np.array_equal(other, x_val)
    # one-hot rows are split by their class, exactly as the integer labels
    hot = np.eye(3, dtype=np.float32)[y]
    _, _, (x_hot, y_hot) = holdout(x, hot, 0.2, seed=3)
    np.testing.assert_array_equal(x_hot, x_val)
    np.testing.assert_array_equal(y_hot.argmax(axis=1), y_val)
    # regression targets: a plain random fifth
    _, _, (_, t_val) = holdout(x, np.linspace(0, 1, 100), 0.25, seed=0)
    assert len(t_val) == 25


@pytest.mark.fit_level
def test_fit_validation_split_validates_on_the_held_out_rows(be):
    x, y = blobs(120, spread=0.5)
    x_tr, y_tr, val = holdout(x, y, 0.25, seed=7)
    runs = []
    for kw in (dict(validation_split=0.25), dict(validation_data=val)):
        xn.seed(0)
        model = _model()
        data = (x, y) if "validation_split" in kw else (x_tr, y_tr)
        runs.append(quick_fit(model, *data, epochs=2, seed=7, **kw))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=1e-6, err_msg=key)
    # arrays already on the backend are split there
    dx, dy, (dxv, dyv) = holdout(be.asarray(x), be.asarray(y), 0.25, seed=7)
    np.testing.assert_array_equal(xn.to_numpy(dxv), val[0])
    np.testing.assert_array_equal(xn.to_numpy(dy), y_tr)


def test_validation_split_errors(tmp_path):
    x, y = blobs(40)
    model = _model()
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"fit: validation_split must be a finite number "
                                             r"in \(0, 1\), got " + str(bad)):
            quick_fit(model, x, y, validation_split=bad)
    with pytest.raises(TypeError, match="fit: validation_split must be a number, got '0.2'"):
        quick_fit(model, x, y, validation_split="0.2")
    with pytest.raises(ValueError, match="give validation_data or validation_split, not both"):
        quick_fit(model, x, y, validation_split=0.2, validation_data=(x, y))
    with pytest.raises(ValueError, match="validation_split needs x and y as arrays in memory, "
                                         "got y: no y"):
        quick_fit(model, iter([(x, y)]), None, validation_split=0.2, steps_per_epoch=1)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    with pytest.raises(ValueError, match="got x: memmap; hold out validation rows yourself"):
        quick_fit(model, mapped, y, validation_split=0.2)
    with pytest.raises(ValueError, match=r"validation_split=0.01 of 40 examples holds out 0"):
        quick_fit(model, x, y, validation_split=0.01)


# -- names as Keras takes them ----------------------------------------------------------------
@pytest.mark.fit_level
@pytest.mark.parametrize("name, make", [
    ("adam", lambda m: xn.Adam(m)), ("sgd", lambda m: xn.SGD(m, lr=0.01)),
    ("momentum", lambda m: xn.SGD(m, lr=0.01, momentum=0.9)), ("adamw", lambda m: xn.AdamW(m)),
])
def test_fit_takes_loss_and_optimizer_names(be, name, make):
    x, y = blobs(64)
    runs = []
    for loss, opt in (("cross_entropy", name), (xn.SoftmaxCrossEntropy(), None)):
        xn.seed(0)
        model = _model()
        h = quick_fit(model, x, y, loss=loss, optimizer=opt or make(model), epochs=2)
        runs.append((h["loss"], xn.to_numpy(model.parameters()[0].value)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-6)
    assert isinstance(model.loss, xn.SoftmaxCrossEntropy)
    assert xn.evaluate(model, x, y, loss="mse")["loss"] > 0  # a name for evaluate too


def test_unknown_names_are_refused_naming_the_choices():
    x, y = blobs(16)
    model = _model()
    with pytest.raises(ValueError, match=r"fit: unknown loss 'crossentropy'; expected one of "
                                         r"quadratic, mse, cross_entropy, "):
        quick_fit(model, x, y, loss="crossentropy")
    with pytest.raises(ValueError, match=r"fit: unknown optimizer 'rmsprop'; expected one of "
                                         r"sgd, momentum, adam, adamw, or an Optimizer"):
        quick_fit(model, x, y, optimizer="rmsprop")
    with pytest.raises(TypeError, match=r"fit: optimizer must be an Optimizer \(xn.Adam\(model\)"
                                        r"\) or one of the names sgd, momentum, adam, adamw, "
                                        r"got dict"):
        quick_fit(model, x, y, optimizer={"lr": 0.1})
    with pytest.raises(ValueError, match="evaluate: unknown loss 'l2'"):
        xn.evaluate(model, x, y, loss="l2")
    with pytest.raises(ValueError, match="fit: unknown metric 'f1'; known: accuracy"):
        quick_fit(model, x, y, metrics=["f1"])


# -- a device alone ---------------------------------------------------------------------------
def _can_use(name, device):
    try:
        xn.backend.make(name, device)
        return True
    except (xn.BackendUnavailableError, ValueError):
        return False


def test_a_device_alone_keeps_the_library_where_it_can():
    model = xn.Linear(2, 3, backend="numpy")
    assert model.to("cpu").backend == xn.backend.make("numpy", "cpu")
    strict = xn.Linear(2, 3, backend="array_api_strict", device="device1")
    assert strict.to("cpu").backend == xn.backend.make("array_api_strict", "cpu")
    torch_cpu = xn.backend.make("torch", "cpu") if _can_use("torch", "cpu") else None
    if torch_cpu is not None:
        t = xn.Linear(2, 3, backend="torch")
        host = xn.to_numpy(t.weight.value)
        assert t.to("cpu").backend == torch_cpu
        assert t.to(device="cpu").backend == torch_cpu
        np.testing.assert_array_equal(xn.to_numpy(t.weight.value), host)
        with xn.use("torch"):
            assert xn.use("cpu") == torch_cpu  # the selected library, on its CPU
    with pytest.raises(TypeError, match=r"\.to: give a backend, a device or both"):
        model.to()


def test_cuda_alone_picks_a_library_or_says_what_to_write():
    model = xn.Linear(2, 3, backend="numpy")
    usable = [n for n in ("cupy", "torch", "jax") if _can_use(n, "cuda")]
    if usable:  # a GPU machine: the first of cupy, torch, jax that can
        assert model.to("cuda").backend.name == usable[0]
        assert model.to(device="cuda").backend.name == usable[0]
        if "torch" in usable:  # a torch model stays on torch
            t = xn.Linear(2, 3, backend="torch", device="cpu")
            assert t.to("cuda").backend.name == "torch"
        return
    for call, run in (("to", lambda: model.to("cuda")), ("to", lambda: model.to(device="cuda")),
                      ("use", lambda: xn.use("cuda"))):
        with pytest.raises(xn.BackendUnavailableError) as e:
            run()
        text = str(e.value)
        assert text.startswith(f"{call}('cuda'): no installed library can use 'cuda' here (")
        assert f"name the library with the device, {call}('cupy', 'cuda') or " \
               f"{call}('torch', 'cuda')" in text
        assert "cupy" in text and "torch" in text  # each library's reason


# -- a process-wide default backend -----------------------------------------------------------
def _built_in_threads():
    """The backend of a layer built in a new Thread, and in a ThreadPoolExecutor worker;
    and in a thread that selects numpy itself."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    seen = []
    t = threading.Thread(target=lambda: seen.append(xn.Linear(2, 2).backend.name))
    t.start()
    t.join()

    def own():
        xn.use("numpy")
        return xn.Linear(2, 2).backend.name

    with ThreadPoolExecutor(1) as pool:
        seen.append(pool.submit(lambda: xn.Linear(2, 2).backend.name).result())
    with ThreadPoolExecutor(1) as pool:
        seen.append(pool.submit(own).result())
    return seen


def test_use_scope_process_reaches_other_threads(monkeypatch):
    pytest.importorskip("array_api_strict")
    monkeypatch.delenv("XPNET_BACKEND", raising=False)
    monkeypatch.setattr(xn.backend, "_from_environment", xn.backend.make("numpy"))
    xn.use("array_api_strict")  # this thread only: new threads build on numpy
    assert _built_in_threads() == ["numpy", "numpy", "numpy"]
    be = xn.use("array_api_strict", device="device1", scope="process")
    assert xn.current() == be  # this thread too
    assert _built_in_threads() == ["array_api_strict", "array_api_strict", "numpy"]
    layer = xn.Linear(2, 2)
    assert layer.backend.device_name == "device1"
    with xn.use("numpy"):  # a selection in this context still wins here
        assert xn.Linear(2, 2).backend.name == "numpy"
    with pytest.raises(ValueError, match="use: scope must be 'context' or 'process', got 'all'"):
        xn.use("numpy", scope="all")


# -- parameter groups through fit -------------------------------------------------------------
@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend: the trace without inductor's code
    generation (minutes on 2 cores)."""
    from xpnet.backends.torch import TorchCompiler

    monkeypatch.setattr(TorchCompiler, "backend", "aot_eager")


def _grouped(model):
    first, rest = model.parameters()[:2], model.parameters()[2:]
    return xn.SGD([{"params": first, "lr": 0.02, "weight_decay": 0.5},
                   {"params": rest, "momentum": 0.9, "lr": xn.CosineLR(0.2, 6)}], lr=0.1)


@pytest.mark.parametrize("compile", [False, True])
def test_fit_with_parameter_groups(be, aot_eager, compile):
    """An optimizer in groups with their own settings (rate, schedule, decay, momentum)
    through fit, eager and compiled: the weights of the same steps taken one by one
    (xpnet.train.step.Step over the same batches), and not those of one group."""
    from xpnet.train.compiled import TrainStep
    from xpnet.train.step import Step

    x, y = blobs(48)
    xn.seed(0)
    model = _model()
    quick_fit(model, x, y, optimizer=_grouped(model), epochs=2, shuffle=False,
              compile=compile)
    xn.seed(0)
    by_hand = _model()
    step = TrainStep(Step(by_hand, xn.SoftmaxCrossEntropy(), _grouped(by_hand)),
                     compiler=False)
    for _ in range(2):
        for i in range(0, 48, 16):
            step(be.asarray(x[i:i + 16]), be.asarray(y[i:i + 16]))
    xn.seed(0)
    single = _model()
    quick_fit(single, x, y, optimizer=xn.SGD(single, lr=0.1), epochs=2, shuffle=False)
    for a, b, c in zip(model.parameters(), by_hand.parameters(), single.parameters()):
        np.testing.assert_allclose(xn.to_numpy(a.value), xn.to_numpy(b.value), rtol=1e-5,
                                   atol=1e-6)
        assert not np.allclose(xn.to_numpy(a.value), xn.to_numpy(c.value))


# -- freezing after the optimizer is made ---------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda ps: xn.SGD(ps, lr=0.1),
    "sgd-momentum-decay": lambda ps: xn.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    "nesterov": lambda ps: xn.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam-decay": lambda ps: xn.Adam(ps, lr=0.1, weight_decay=0.1),
    "adamw": lambda ps: xn.AdamW(ps, lr=0.1, weight_decay=0.5),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_freezing_after_the_optimizer_is_made_stops_its_updates(be, rng, kind):
    """One step with every parameter, then the first frozen: two more steps leave it
    exactly where it was (no decay, no momentum), and the others move as an optimizer
    over them alone moves them (each parameter's update is its own); thawed, it moves
    again."""
    xn.seed(1)
    model = _model()
    xn.seed(1)
    other = _model()
    everything = OPTIMIZERS[kind](model)
    rest = OPTIMIZERS[kind](other.parameters()[1:])
    frozen = model.parameters()[0]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in model.parameters()]
             for _ in range(3)]
    for step, gs in enumerate(grads):
        if step == 1:
            frozen.trainable = False
            held = xn.to_numpy(frozen.value).copy()
        for p, g in zip(everything.params, gs, strict=True):
            p.grad = be.asarray(g)
        everything.step()
        for p, g in zip(rest.params, gs[1:], strict=True):
            p.grad = be.asarray(g)
        rest.step()
    np.testing.assert_array_equal(xn.to_numpy(frozen.value), held)
    for a, b in zip(everything.params[1:], rest.params, strict=True):
        np.testing.assert_allclose(xn.to_numpy(a.value), xn.to_numpy(b.value), rtol=1e-6,
                                   atol=1e-7)
    frozen.trainable = True
    for p, g in zip(everything.params, grads[0], strict=True):
        p.grad = be.asarray(g)
    everything.step()
    assert not np.array_equal(xn.to_numpy(frozen.value), held)


def test_freezing_between_fits_holds_with_compiled_steps(be, aot_eager):
    """fit, freeze the first layer's weight, fit again with the same optimizer (whose
    compiled step is kept between fits): eager and compiled, the weight stays, the rest
    train the same; thawed, the compiled step is made again and moves it."""
    x, y = blobs(48)
    runs = []
    for compile in (False, True):
        xn.seed(0)
        model = _model()
        opt = xn.Adam(model, lr=0.05, weight_decay=0.1)
        quick_fit(model, x, y, optimizer=opt, compile=compile, clip_grad_norm=0.5)
        weight = model.parameters()[0]
        weight.trainable = False
        held = xn.to_numpy(weight.value).copy()
        quick_fit(model, x, y, optimizer=opt, compile=compile, clip_grad_norm=0.5)
        np.testing.assert_array_equal(xn.to_numpy(weight.value), held)
        runs.append([xn.to_numpy(a).copy() for a in model.arrays()])
        weight.trainable = True
        quick_fit(model, x, y, optimizer=opt, compile=compile)
        assert not np.array_equal(xn.to_numpy(weight.value), held)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("suffix", [".xpnet", ".safetensors"])
def test_trainable_is_saved_and_restored(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    xn.seed(0)
    model = xn.Sequential(xn.Linear(4, 6), xn.BatchNorm1D(6), xn.ReLU(), xn.Linear(6, 3))
    opt = xn.SGD(model, lr=0.1, momentum=0.9)
    x, y = blobs(32)
    quick_fit(model, x, y, optimizer=opt)
    model[0].weight.trainable = False  # after the optimizer was made
    path = tmp_path / f"m{suffix}"
    xn.save(path, model, optimizer=opt)
    ck = xn.load_checkpoint(path)
    flags = {n: p.trainable for n, p in ck.model.named_state()}
    assert flags == {n: p.trainable for n, p in model.named_state()}
    assert flags["0.weight"] is False and flags["1.running_mean"] is False
    assert flags["0.bias"] is True and flags["1.weight"] is True
    assert [p.name for p in ck.optimizer.params] == [p.name for p in opt.params]
    held = xn.to_numpy(ck.model[0].weight.value).copy()
    quick_fit(ck.model, x, y, optimizer=ck.optimizer)  # the loaded freeze holds
    np.testing.assert_array_equal(xn.to_numpy(ck.model[0].weight.value), held)
    from xpnet.checkpoint import _read
    assert _read(path)[0]["format_version"] == 2  # version-1 readers would refuse it
    xn.save(path, model)  # no optimizer: version 1, the flags still restored
    assert _read(path)[0]["format_version"] == 1
    assert xn.load(path)[0].weight.trainable is False


# -- file names save writes -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.pt", "model.h5", "model.npz", "model"])
def test_save_refuses_a_suffix_it_does_not_write(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(ValueError) as e:
        xn.save(path, _model())
    got = f"{path.suffix!r}" if path.suffix else "no suffix"
    assert str(e.value) == (f"save: {str(path)!r} has {got}; xpnet writes .xpnet (its own "
                            f"format) or .safetensors files, so name the file "
                            f"{str(path.with_suffix('.xpnet'))!r} or "
                            f"{str(path.with_suffix('.safetensors'))!r}")
    assert not path.exists()
    x, y = blobs(16)
    with pytest.raises(ValueError, match=r"ModelCheckpoint: .* has"):  # before training
        quick_fit(_model(), x, y, callbacks=[xn.ModelCheckpoint(path, monitor="loss")])
    xn.save(tmp_path / "model.XPNET", _model())  # the known ones, in any case
    assert xn.load(tmp_path / "model.XPNET").get_config() == _model().get_config()


# -- callbacks written for Keras --------------------------------------------------------------
class KerasStyle(xn.Callback):
    """Every hook as Keras's documentation writes it."""

    def on_train_begin(self, logs=None):
        self.events = [("train_begin", logs, self.model)]

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, logs.get("loss")))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("train_end", dict(logs)))


class PlainKeras:
    """Not even an xn.Callback: a Keras-style class of its own, batch hook by Keras's
    newer name."""

    def on_train_batch_end(self, batch, logs=None):
        self.batches = getattr(self, "batches", 0) + 1

    def on_epoch_end(self, epoch, logs=None):
        self.last = (epoch, logs["loss"])


def test_keras_style_callbacks_get_epochs_and_logs():
    x, y = blobs(40)
    model = _model()
    keras, plain = KerasStyle(), PlainKeras()
    h = quick_fit(model, x, y, epochs=3, initial_epoch=1, batch_size=16,
                  callbacks=[keras, plain])
    events = keras.events
    assert events[0] == ("train_begin", {}, model)
    assert keras.model is model and isinstance(keras.optimizer, xn.SGD)
    assert [e[0] for e in events[1:]] == (["epoch_begin"] + ["batch_end"] * 3 + ["epoch_end"]) * 2 \
        + ["train_end"]
    assert [e[1] for e in events if e[0] in ("epoch_begin", "epoch_end")] == [1, 1, 2, 2]
    assert [e[1] for e in events if e[0] == "batch_end"] == [0, 1, 2, 0, 1, 2]
    assert all(isinstance(e[2], float) and e[2] > 0 for e in events if e[0] == "batch_end")
    ends = [e[2] for e in events if e[0] == "epoch_end"]
    assert [d["loss"] for d in ends] == pytest.approx(h["loss"])
    assert events[-1][1]["loss"] == pytest.approx(h["loss"][-1])  # the last epoch's logs
    assert plain.batches == 6 and plain.last == (2, pytest.approx(h["loss"][-1]))


# -- predict's type ---------------------------------------------------------------------------
def test_predict_returns_the_backends_array_or_numpy(be):
    x, _ = blobs(40)
    model = _model()
    out = xn.predict(model, x, batch_size=16)
    assert_on(be, out)  # the library's own array, on its device
    host = xn.predict(model, x, batch_size=16, numpy=True)
    assert type(host) is np.ndarray and host.shape == (40, 3) and host.dtype == np.float32
    np.testing.assert_array_equal(host, xn.to_numpy(out))
    with pytest.raises(TypeError, match="predict: numpy must be True or False, got 'yes'"):
        xn.predict(model, x, numpy="yes")


# -- EarlyStopping's default ------------------------------------------------------------------
def test_early_stopping_restores_the_best_weights_by_default():
    """Keras's default is False; xpnet's True: the weights after fit are the best
    epoch's (checked by evaluating them), and with False the last epoch's."""
    x, y = blobs(60, spread=0.6)
    xv, yv = blobs(30, seed=3, spread=0.6)
    for restore in (None, False):
        xn.seed(0)
        model = _model()
        stop = xn.EarlyStopping("val_loss", patience=2) if restore is None else \
            xn.EarlyStopping("val_loss", patience=2, restore_best_weights=False)
        # a rate far too high: the validation loss rises after the first epochs
        h = quick_fit(model, x, y, optimizer=xn.SGD(model, lr=3.0), epochs=12,
                      validation_data=(xv, yv), callbacks=[stop])
        best = int(np.argmin(h["val_loss"]))
        assert stop.best_epoch == best and len(h.epochs) > best + 1  # stopped later
        want = h["val_loss"][best] if restore is None else h["val_loss"][-1]
        assert xn.evaluate(model, xv, yv)["loss"] == pytest.approx(want, rel=1e-5)


def test_a_frozen_weight_trains_in_mixed_precision(be):
    """bf16/fp16 forward passes cast every weight, frozen ones too (the layers compute
    in one dtype); the frozen weight stays exactly where it was, float32."""
    name = "bf16-mixed" if be.name in ("torch", "jax") else "fp16-mixed"
    if be.name == "array_api_strict":
        pytest.skip("array-api-strict has no float16 or bfloat16")
    x, y = blobs(48)
    model = xn.Sequential(xn.Linear(4, 8), xn.BatchNorm1D(8), xn.ReLU(), xn.Linear(8, 3))
    opt = xn.Adam(model, lr=0.05)
    weight = model[0].weight
    weight.trainable = False
    held = xn.to_numpy(weight.value).copy()
    h = quick_fit(model, x, y, optimizer=opt, epochs=2, precision=name)
    np.testing.assert_array_equal(xn.to_numpy(weight.value), held)
    assert xn.to_numpy(weight.value).dtype == np.float32
    assert h["loss"][1] < h["loss"][0]
