"""The public test kit, xpnet.testing: check_layer on user layers, and the plugin."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap

import conftest
import numpy as np
import pytest

import xpnet as xn
import xpnet.testing
from xpnet.testing import check_layer


class UserScale(xn.Layer):
    """``y = x * w``, one weight per feature; x of shape (N, features)."""

    def __init__(self, features: int, *, dtype: str = "float32", name: str | None = None):
        super().__init__(name=name)
        self.features, self.dtype = features, dtype
        shape = self.param_shapes(self.get_config())["w"]
        self.w = self._new_parameter("w", xn.random.current().host.uniform(0.5, 1.5, shape),
                                     dtype)
        self._x = None

    @classmethod
    def param_shapes(cls, config):
        return {"w": (config["features"],)}

    def forward(self, x, *, train=True):
        self._x = x if train else None  # backward needs the input, inference does not
        return x * self.w.value

    def backward(self, dy):
        x = self._require_cache(self._x)
        xp = xn.backend.backend_of(dy).xp
        self.w.accumulate(xp.sum(dy * x, axis=0))  # adds: w may be reached by several paths
        return dy * self.w.value

    def get_config(self):
        return {"features": self.features, "dtype": self.dtype}


class WrongGradScale(UserScale):
    """The weight's gradient forgets the factor x."""

    def backward(self, dy):
        self._require_cache(self._x)
        xp = xn.backend.backend_of(dy).xp
        self.w.accumulate(xp.sum(dy, axis=0))
        return dy * self.w.value


class FloatReadScale(UserScale):
    """Correct, but checks its input with float(): a read on the host that stalls a GPU."""

    def forward(self, x, *, train=True):
        if not math.isfinite(float(xn.backend.backend_of(x).xp.sum(x))):
            raise FloatingPointError("non-finite input")
        return super().forward(x, train=train)


class NumpyScale(UserScale):
    """Correct, but computes on the host through np.asarray."""

    def forward(self, x, *, train=True):
        self._x = x if train else None
        be = xn.backend.backend_of(x)
        return be.asarray(np.asarray(x) * np.asarray(self.w.value))


class Float64OutScale(UserScale):
    """Correct values, but the output is float64 whatever the parameters are."""

    def forward(self, x, *, train=True):
        xp = xn.backend.backend_of(x).xp
        return xp.astype(super().forward(x, train=train), xp.float64)


class Device1OffScale(UserScale):
    """Gives another answer on array-api-strict's device1 than elsewhere."""

    def forward(self, x, *, train=True):
        y = super().forward(x, train=train)
        return y + 1.0 if "device1" in str(getattr(x, "device", "")) else y


def _x(be, rng, shape=(5, 3)):
    return be.asarray(rng.standard_normal(shape), dtype="float32")


def _torch_or_skip():
    try:
        xn.backend.make("torch", "meta")
    except xn.BackendUnavailableError as e:
        pytest.skip(f"the meta check needs torch: {e}")


def test_correct_user_layer_passes(be, rng):
    layer = UserScale(3)
    before = xn.to_numpy(layer.w.value).copy()
    assert check_layer(layer, _x(be, rng)) is None
    assert layer.w.grad is None  # checked on copies: the layer is unchanged
    np.testing.assert_array_equal(xn.to_numpy(layer.w.value), before)


def test_correct_user_layer_passes_with_a_loss(be, rng):
    target = be.asarray(rng.standard_normal((5, 3)), dtype="float32")
    check_layer(UserScale(3), _x(be, rng), loss=xn.QuadraticCost(), target=target)


def test_wrong_backward_is_named(be, rng):
    with pytest.raises(xn.GradcheckError,
                       match=r"check_layer \(gradients\).*gradient of 'w' is wrong.*at index"):
        check_layer(WrongGradScale(3), _x(be, rng))


def test_float_read_fails_the_meta_check(be, rng):
    _torch_or_skip()
    with pytest.raises(AssertionError, match=r"check_layer \(meta\).*meta device.*item\(\)"):
        check_layer(FloatReadScale(3), _x(be, rng))


def test_numpy_read_fails_the_meta_check(rng):
    _torch_or_skip()
    with xn.use("numpy") as be:
        check_layer(UserScale(3), _x(be, rng))  # the same layer without the read passes
        with pytest.raises(AssertionError, match=r"check_layer \(meta\).*numpy"):
            check_layer(NumpyScale(3), _x(be, rng))


def test_wrong_output_dtype_fails_the_placement_check(rng):
    with xn.use("numpy") as be:
        with pytest.raises(AssertionError, match=r"check_layer \(placement\).*dtype float64"):
            check_layer(Float64OutScale(3), _x(be, rng))


def test_device_dependent_output_fails_the_device1_check(rng):
    if not _has_strict():
        pytest.skip("array_api_strict is not installed")
    with xn.use("numpy") as be:
        with pytest.raises(AssertionError, match=r"check_layer \(device1\).*differs"):
            check_layer(Device1OffScale(3), _x(be, rng))


def test_parameters_elsewhere_than_the_input_are_reported(rng):
    with xn.use("numpy"):
        layer = UserScale(3)
    if not _has_strict():
        pytest.skip("array_api_strict is not installed")
    x = _x(xn.backend.make("array_api_strict", "device1"), rng)
    with pytest.raises(AssertionError, match="parameter 'w' is on Backend\\('numpy'"):
        check_layer(layer, x)


def test_builtin_layers_pass_on_every_case(be, rng):
    """Every kind of built-in layer, meta and device1 included: nothing is tolerated."""
    x = be.asarray(rng.standard_normal((3, 2, 4)), dtype="float32")
    model = xn.Sequential(xn.Conv1D(2, 2, 3, padding=1), xn.BatchNorm1D(2), xn.Tanh(),
                          xn.Dropout(0.2), xn.AvgPool1D(2), xn.Flatten(), xn.Linear(4, 2),
                          xn.Sigmoid())
    check_layer(model, x)


def _has_strict():
    try:
        xn.backend.make("array_api_strict", "device1")
    except xn.BackendUnavailableError:
        return False
    return True


def test_conftest_uses_the_kit():
    """One harness: the repository's tests run on the public fixture and cases."""
    assert conftest.assert_on is xpnet.testing.assert_on
    assert conftest.pytest_plugins == ["xpnet.testing"]
    assert [c.id for c in xpnet.testing.CASES] == [
        "numpy-cpu", "strict-cpu", "strict-device1", "strict-no_float64", "torch-cpu",
        "jax-cpu", "cupy-cuda0", "torch-cuda", "jax-cuda"]


def test_importing_xpnet_imports_neither_pytest_nor_the_kit():
    code = ("import sys, xpnet; "
            "print(sorted(m for m in ('pytest', 'xpnet.testing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_runs_a_users_test_file(tmp_path):
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from xpnet.testing import assert_on

        def test_mine(be, rng):
            x = be.asarray(rng.standard_normal(3), dtype="float32")
            assert_on(be, x * 2.0)
    """))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "XPNET_BACKEND", "XPNET_DEVICE")}
    env["XPNET_BACKENDS"] = "numpy-cpu,strict-device1"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xpnet.testing", "-p", "no:cacheprovider",
         "-v", "-rs", "test_mine.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_mine.py::test_mine[numpy-cpu] PASSED" in out.stdout, out.stdout
    assert "not selected by XPNET_BACKENDS" in out.stdout, out.stdout
    passed, skipped = map(int, re.search(r"(\d+) passed, (\d+) skipped", out.stdout).groups())
    assert (passed, skipped) == ((2, 7) if _has_strict() else (1, 8)), out.stdout


def test_a_test_may_leave_a_backend_selected():
    """First of a pair, in file order: selects a backend outside any `with`..."""
    xn.use("array_api_strict")
    assert xn.current().name == "array_api_strict"


def test_the_next_test_does_not_see_it():
    """...and the kit's autouse fixture gave this test the selection found before."""
    assert xn.current().name != "array_api_strict"
