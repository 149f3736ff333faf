"""Backend selection: use(), current(), the environment, auto, and missing GPUs."""

from __future__ import annotations

import subprocess
import sys
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


def test_environment_decides_without_use(monkeypatch):
    monkeypatch.setattr(backend_module, "_current", None)
    monkeypatch.setenv("XPNET_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPNET_DEVICE", "device2")
    be = xn.current()
    assert (be.name, be.device_name) == ("array_api_strict", "device2")


def test_environment_explicit_unusable_raises(monkeypatch):
    monkeypatch.setattr(backend_module, "_current", None)
    monkeypatch.setenv("XPNET_BACKEND", "numpy")
    monkeypatch.setenv("XPNET_DEVICE", "cuda:0")
    with pytest.raises(xn.BackendUnavailableError, match="numpy runs only on the CPU"):
        xn.current()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        xn.use("tensorflow")


def test_cupy_without_gpu_raises_with_install_hint():
    # On these machines CuPy is missing or sees no GPU: either way a clear error.
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


def test_seed_gives_identical_weights(be):
    xn.seed(5)
    a = xn.to_numpy(xn.Linear(4, 3).weight.value)
    xn.seed(5)
    b = xn.to_numpy(xn.Linear(4, 3).weight.value)
    np.testing.assert_array_equal(a, b)


def test_relu_follower_gets_he_init():
    xn.seed(0)
    m = xn.Sequential(xn.Linear(400, 300), xn.ReLU())
    std = float(np.std(xn.to_numpy(m[0].weight.value)))
    assert abs(std - np.sqrt(2 / 400)) < 0.005
    xn.seed(0)
    m = xn.Sequential(xn.Linear(400, 300), xn.Sigmoid())
    std = float(np.std(xn.to_numpy(m[0].weight.value)))
    assert abs(std - np.sqrt(2 / 700)) < 0.005  # Glorot uniform: var = 2/(in+out)
