"""Backend selection: use(), current(), the environment, auto, and missing GPUs."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import xpnet as xn
from xpnet import backend as backend_module


def test_import_loads_no_optional_backend():
    code = ("import sys, xpnet; bad = [m for m in ('torch', 'jax', 'cupy', 'array_api_strict')"
            " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_use_is_a_context_manager():
    before = xn.current()
    with xn.use("array_api_strict", device="device1") as be:
        assert xn.current() is be
        assert (be.name, be.device_name) == ("array_api_strict", "device1")
        with xn.use("numpy") as inner:
            assert xn.current() is inner
        assert xn.current() is be
    assert xn.current() is before


def _unselected(fn):
    """Run ``fn`` where nothing is selected yet (a fresh context, no cached default)."""
    return contextvars.Context().run(fn)


def test_environment_decides_without_use(monkeypatch):
    monkeypatch.setattr(backend_module, "_from_environment", None)
    monkeypatch.setenv("XPNET_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPNET_DEVICE", "device2")
    be = _unselected(xn.current)
    assert (be.name, be.device_name) == ("array_api_strict", "device2")


def test_environment_explicit_unusable_raises(monkeypatch):
    monkeypatch.setattr(backend_module, "_from_environment", None)
    monkeypatch.setenv("XPNET_BACKEND", "numpy")
    monkeypatch.setenv("XPNET_DEVICE", "cuda:0")
    with pytest.raises(xn.BackendUnavailableError, match="numpy runs only on the CPU"):
        _unselected(xn.current)


def test_with_backend_selects_it_for_the_block_and_restores():
    """`with backend:` on any Backend (not just use()'s) selects it inside the block."""
    outer = xn.use("numpy")
    other = backend_module.make("array_api_strict", "device1")
    with other as entered:
        assert entered is other and xn.current() is other
        m = xn.Linear(3, 2)
        assert m.backend == other
        with m.backend:  # nested, the same backend again
            assert xn.current() == other
        assert xn.current() is other
    assert xn.current() == outer  # not "nothing selected"


def test_nested_use_restores_each_level():
    base = xn.use("numpy")
    with xn.use("array_api_strict", device="device1") as a:
        with xn.use("array_api_strict", device="device2") as b:
            assert xn.current() is b
            xn.use("array_api_strict")  # a plain use() inside a block lasts until its end
            assert xn.current().device_name == "cpu"
        assert xn.current() is a
    assert xn.current() == base


def test_selection_is_per_thread_and_per_task():
    xn.use("numpy")
    seen = {}

    def worker():
        xn.use("array_api_strict", device="device1")
        seen["thread"] = xn.current()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["thread"].device_name == "device1"
    assert xn.current().name == "numpy"  # the thread's use() did not leak here

    async def task(name, device):
        xn.use(name, device=device)
        await asyncio.sleep(0)  # let the other task run its use() in between
        return xn.current()

    async def both():
        return await asyncio.gather(task("array_api_strict", "device2"), task("numpy", None))

    first, second = asyncio.run(both())
    assert (first.name, first.device_name) == ("array_api_strict", "device2")
    assert second.name == "numpy"
    assert xn.current().name == "numpy"


def test_backend_is_an_immutable_value():
    be = backend_module.make("numpy")
    with pytest.raises(AttributeError, match="immutable"):
        be.device_name = "cuda"
    assert be == backend_module.make("numpy") and hash(be) == hash(backend_module.make("numpy"))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        xn.use("tensorflow")


def test_cupy_without_gpu_raises_with_install_hint():
    # On these machines CuPy is missing or sees no GPU: either way a clear error.
    if xn.available()["cupy"].usable:
        pytest.skip("CuPy sees a CUDA device here: there is no missing GPU to report")
    with pytest.raises(xn.BackendUnavailableError, match="cupy"):
        xn.use("cupy")


def _fake_cupy(available: bool, count: int):
    """A stand-in for the cupy module, enough for device selection."""
    cupy = types.ModuleType("cupy")
    cupy.is_available = lambda: available

    def count_devices():
        if not available:
            raise RuntimeError("cudaErrorNoDevice")  # what real CuPy does without a driver
        return count

    class Device:
        def __init__(self, i):
            self.id = i

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count_devices),
                                      Device=Device)
    return cupy


def test_cupy_selection_logic_without_a_gpu(monkeypatch):
    fake_compat = types.ModuleType("array_api_compat.cupy")
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", fake_compat)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=False, count=0))
    with pytest.raises(xn.BackendUnavailableError, match="no CUDA device"):
        backend_module.make("cupy")
    # auto falls back to NumPy and says why
    be = backend_module.make("auto")
    assert be.name == "numpy" and "no CUDA device" in be.note
    # ... but not when a GPU was asked for
    with pytest.raises(xn.BackendUnavailableError):
        backend_module.make("auto", device="cuda")

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=True, count=2))
    be = backend_module.make("cupy", "cuda:1")
    assert (be.name, be.device_name, be.device.id) == ("cupy", "cuda:1", 1)
    assert backend_module.make("auto").name == "cupy"
    with pytest.raises(xn.BackendUnavailableError, match="no device cuda:2.*2 CUDA device"):
        backend_module.make("cupy", "cuda:2")
    with pytest.raises(xn.BackendUnavailableError, match="unknown device 'tpu'"):
        backend_module.make("cupy", "tpu")


def test_torch_cuda_absent_names_the_build():
    pytest.importorskip("torch", reason="torch is not installed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(xn.BackendUnavailableError, match="torch: no CUDA device"):
        xn.use("torch", device="cuda")


def test_strict_unknown_device():
    with pytest.raises(xn.BackendUnavailableError, match="unknown device 'device9'"):
        xn.use("array_api_strict", device="device9")


def test_available_lists_every_backend():
    info = xn.available()
    assert list(info) == ["numpy", "cupy", "torch", "jax", "array_api_strict"]
    assert info["numpy"].usable and info["numpy"].devices == ["cpu"]
    for name, entry in info.items():
        assert entry.usable or entry.reason, name
    assert "device1" in info["array_api_strict"].devices


def test_asarray_copies_and_to_numpy_roundtrips(be):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = be.asarray(host)
    host[0, 0] = 99
    back = xn.to_numpy(x)
    assert back[0, 0] == 0 and back.dtype == np.float32 and back.shape == (2, 3)
    scalar = be.asarray(np.array(0.5), dtype="float32")  # 0-d, with a dtype change
    assert scalar.shape == () and xn.to_numpy(scalar) == np.float32(0.5)
    shared = be.asarray(host, copy=False)  # may share host memory; values are the same
    np.testing.assert_array_equal(xn.to_numpy(shared), host)


def test_seed_gives_identical_weights(be):
    xn.seed(5)
    a = xn.to_numpy(xn.Linear(4, 3).weight.value)
    xn.seed(5)
    b = xn.to_numpy(xn.Linear(4, 3).weight.value)
    np.testing.assert_array_equal(a, b)


def test_init_is_decided_when_the_layer_is_made():
    xn.seed(0)
    he = xn.Linear(400, 300, init="he").weight.value
    assert abs(float(np.std(he)) - np.sqrt(2 / 400)) < 0.005
    glorot = xn.Linear(400, 300, init="glorot").weight.value
    assert abs(float(np.std(glorot)) - np.sqrt(2 / 700)) < 0.005  # var = 2/(in+out)
    default = xn.Linear(400, 300)  # PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
    bound = 1 / np.sqrt(400)
    for p in (default.weight.value, default.bias.value):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
        assert abs(float(np.std(p)) - bound / np.sqrt(3)) < 0.1 * bound
    assert np.all(xn.Linear(4, 3, init="he").bias.value == 0)
    with pytest.raises(ValueError, match="init='auto' is gone.*init='he'"):
        xn.Linear(4, 3, init="auto")


def _weights(model):
    return [xn.to_numpy(p.value).copy() for p in model.parameters()]


def test_composing_keeps_weights_set_before(be):
    """Weights set (or copied) into layers survive Sequential and Graph composition."""
    rng = np.random.default_rng(0)
    lin1, lin2 = xn.Linear(4, 5), xn.Linear(5, 2)
    chosen = [rng.standard_normal(p.shape) for p in (lin1.weight, lin1.bias, lin2.weight,
                                                       lin2.bias)]
    for p, v in zip((lin1.weight, lin1.bias, lin2.weight, lin2.bias), chosen, strict=True):
        p.value = be.asarray(v, dtype="float32")
    seq = xn.Sequential(lin1, xn.ReLU(), lin2, xn.Sigmoid())
    for got, want in zip(_weights(seq), chosen, strict=True):
        np.testing.assert_array_equal(got, want.astype(np.float32))

    conv, head = xn.Conv1D(1, 2, 3), xn.Linear(2 * 4, 3)
    conv.weight.value = be.asarray(np.full((2, 1, 3), 0.25), dtype="float32")
    head.weight.value = be.asarray(np.full((3, 8), -0.5), dtype="float32")
    inp = xn.Input(shape=(1, 6))
    out = head(xn.Flatten()(xn.ReLU()(conv(inp))))
    graph = xn.Graph(inputs=inp, outputs=out)
    np.testing.assert_array_equal(xn.to_numpy(graph.parameters()[0].value),
                                  np.full((2, 1, 3), 0.25, np.float32))
    np.testing.assert_array_equal(xn.to_numpy(graph.parameters()[2].value),
                                  np.full((3, 8), -0.5, np.float32))


def test_model_built_for_another_backend_with_backend_and_device(be):
    """``backend=``/``device=`` place parameters without touching the selection."""
    with xn.use("numpy"):
        xn.seed(3)
        m = xn.Sequential(xn.Linear(3, 4, backend=be), xn.ReLU(),
                          xn.Conv1D(1, 2, 2, backend=be.name, device=be.device_name),
                          xn.BatchNorm1D(2, backend=be))
        assert xn.current().name == "numpy"
    assert all(xn.backend.backend_of(p.value) == be for _, p in m.named_state())
    with xn.use("numpy"):
        xn.seed(3)
        here = xn.Linear(3, 4)
    np.testing.assert_array_equal(xn.to_numpy(m[0].weight.value), here.weight.value)


def test_device_alone_means_the_current_backend_on_that_device():
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    with xn.use("array_api_strict"):
        layer = xn.Linear(2, 2, device="device2")
    where = xn.backend.backend_of(layer.weight.value)
    assert (where.name, where.device_name) == ("array_api_strict", "device2")


def test_with_on_the_current_backend_keeps_the_selection():
    """Only the first `with` on what use() returned ends that use (as with
    torch.set_grad_enabled); `with xn.current():` or `with model.backend:` restore the
    selection they found."""
    before = xn.current()
    try:
        xn.use("numpy")
        xn.use("array_api_strict")
        with xn.current():
            pass
        assert xn.current().name == "array_api_strict"
        model = xn.Linear(2, 2)
        with model.backend:
            pass
        assert xn.current().name == "array_api_strict"
        used = xn.use("array_api_strict", device="device1")
        with used as be:
            with used:  # entered again: nothing more to undo
                pass
            assert xn.current() is be and be == used
        assert xn.current().device_name == "cpu"  # the use() call is undone by its block
    finally:  # this test moves the selection on purpose; the next test must not see it
        xn.use(before.name, device=before.device_name)


def test_host_helpers_accept_what_numpy_accepts():
    np.testing.assert_array_equal(xn.to_numpy(1.5), np.array(1.5))
    np.testing.assert_array_equal(xn.to_numpy([1, 2]), np.array([1, 2]))
    be = backend_module.make("numpy")
    swapped = np.arange(3, dtype=">f4")
    np.testing.assert_array_equal(be.asarray(swapped), swapped)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 0\]"):
        xn.QuadraticCost()(np.zeros((3, 1), dtype=np.float32), np.array([0, 1, 1]))


def test_use_refuses_a_name_that_is_not_a_string():
    """Checked at once, naming the argument."""
    with xn.use("numpy"), pytest.raises(TypeError, match="backend name must be a string.*got None"):
        xn.use(None)


def test_a_layer_label_is_built_only_for_an_error(be, rng):
    """The placement check runs in every layer call; a layer's label (its repr, built
    from its config) cost ~8 us a call on torch when it was built before the check."""
    built = []

    class Counted(xn.Linear):
        @property
        def label(self):
            built.append(1)
            return super().label

    layer = Counted(3, 2)
    x = be.asarray(rng.standard_normal((4, 3)), dtype=layer.weight.value.dtype)
    layer.forward(x)
    layer.backward(layer.forward(x))
    assert built == []
    with pytest.raises(TypeError, match="expected input of dtype") as info:
        layer.forward(be.asarray(rng.standard_normal((4, 3)), dtype="int32"))
    assert "Counted(" in str(info.value) and built
