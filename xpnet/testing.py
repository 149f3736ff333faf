"""Test kit for layers written against xpnet: a pytest plugin and :func:`check_layer`.

Load it with ``pytest -p xpnet.testing`` or ``pytest_plugins = ["xpnet.testing"]`` in a
conftest. It gives the fixtures xpnet's own tests use:

- ``be``: the Backend of one (backend, device) case, current for the test and seeded
  with 0; every test taking it runs once per case in :data:`CASES`. A case this machine
  cannot run is SKIPPED with the reason; ``XPNET_BACKENDS=numpy-cpu,strict-device1``
  narrows the run (the others show as skipped, "not selected").
- ``rng``: a NumPy generator seeded with 1234, for host test data.

Importing xpnet never imports this module (nor pytest). PYTEST_DONT_REWRITE: every
assertion here carries its own message, and the module may be imported before pytest
registers it as a plugin (a conftest re-exporting ``assert_on``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from .backend import (
    Backend,
    backend_of,
    dtype_name,
    make,
    on_model_device,
    restore_selection,
    selection_state,
    to_numpy,
    use,
)
from .backends import BackendUnavailableError
from .gradcheck import GradcheckError, gradcheck
from .layers.base import Layer
from .losses import Loss
from .random import RandomStream
from .random import seed as seed_default_stream

__all__ = ["CASES", "Case", "assert_on", "be", "check_layer", "open_case", "rng"]


@dataclass(frozen=True)
class Case:
    """One (backend, device) pair the ``be`` fixture runs a test on; ``id`` is its test id."""

    id: str
    name: str
    device: str


CASES = [
    Case("numpy-cpu", "numpy", "cpu"),
    Case("strict-cpu", "array_api_strict", "cpu"),
    Case("strict-device1", "array_api_strict", "device1"),  # a stand-in for a GPU
    Case("strict-no_float64", "array_api_strict", "no_float64"),  # like Apple's MPS
    Case("torch-cpu", "torch", "cpu"),
    Case("jax-cpu", "jax", "cpu"),
    Case("cupy-cuda0", "cupy", "cuda:0"),
    Case("torch-cuda", "torch", "cuda"),
    Case("jax-cuda", "jax", "cuda"),
]


def open_case(case: Case) -> Backend:
    """Select the backend of ``case``, or skip the test saying why it cannot run."""
    selected = os.environ.get("XPNET_BACKENDS")
    if selected and case.id not in [s.strip() for s in selected.split(",")]:
        pytest.skip(f"{case.id}: not selected by XPNET_BACKENDS={selected}")
    try:
        if case.name == "array_api_strict":
            # the standard version the layers are written against, not the library's default
            make(case.name, case.device).xp.set_array_api_strict_flags(api_version="2024.12")
        return use(case.name, device=case.device)
    except BackendUnavailableError as e:
        pytest.skip(f"{case.id}: {e}")


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def be(request):
    """The Backend of one case, current for the test's duration; seeded with 0."""
    backend = open_case(request.param)
    with backend:
        seed_default_stream(0)
        yield backend


@pytest.fixture(autouse=True)
def _keep_backend_selection():
    """Every test starts from the backend selection found before it: a test (or a script
    it runs) that calls ``xn.use`` outside a ``with`` does not leak into the next."""
    state = selection_state()
    yield
    restore_selection(state)


@pytest.fixture
def rng():
    """A NumPy generator seeded with 1234, for host test data."""
    return np.random.default_rng(1234)


def assert_on(be: Backend, y: Any, dtype: str = "float32") -> None:
    """``y`` is an array of ``be``'s library, on its device, with ``dtype``."""
    where = backend_of(y)
    assert (where.name, where.device_name) == (be.name, be.device_name), (
        f"result is on {where}, expected {be}"
    )
    assert y.dtype == be.dtype(dtype), f"result dtype {y.dtype}, expected {dtype}"


# ---------------------------------------------------------------------------
# check_layer
#: Inference outputs on array-api-strict's device1 and on the input's device agree to
#: this: float32 rounding, summed in another order by another library's kernels.
DEVICE1_RTOL, DEVICE1_ATOL = 1e-4, 1e-5


@on_model_device
def check_layer(layer: Layer, x: Any, *, loss: Loss | None = None, target: Any = None) -> None:
    """Check a layer the way xpnet checks its own; the layer is copied, never changed.

    1. gradients: :func:`xpnet.gradcheck` of the input and every parameter (``loss`` and
       ``target`` as there).
    2. placement: forward (train and inference) and backward on an all-ones ``dy`` give
       arrays on the input's device, with the parameters' dtype.
    3. meta (where torch is installed): a copy on torch's ``meta`` device, which has
       shapes but no values, runs forward(train=True) and backward and gives meta
       arrays of the same shapes; a value read on the host (``float``, ``.item()``,
       ``np.asarray``, ``if`` on an array) raises there.
    4. device1 (where array-api-strict is installed, unless ``x`` is already there): a
       copy on array-api-strict's ``device1`` gives the same inference output within
       float32 rounding.

    Parameters
    ----------
    layer : Layer
        Its parameters on ``x``'s backend and device.
    x : array, shape as the layer expects, or a list of arrays for a multi-input layer
        Integer inputs (an Embedding's ids) have no gradient: none is checked or
        expected for them (on the meta device they become zeros, a valid id).
    loss, target : Loss and its target, optional
        Passed to gradcheck.

    Raises
    ------
    AssertionError
        Naming the check that failed (GradcheckError for check 1); None is returned
        when all pass.
    """
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    be = backend_of(xs[0])
    for name, p in layer.named_state():
        where = backend_of(p.value)
        if where != be:
            raise AssertionError(f"check_layer: {layer.label}: parameter {name!r} is on "
                                 f"{where} but the input is on {be}; move one of them")
    try:
        gradcheck(layer, x, loss, target)
    except GradcheckError as e:
        raise GradcheckError(f"check_layer (gradients): {e}") from e
    except Exception as e:  # the layer itself failed; say which check ran it
        raise AssertionError(f"check_layer (gradients): {layer.label} raised "
                             f"{type(e).__name__}: {e}") from e
    y_train, y_infer = _check_placement(layer, x, xs, be)
    _check_meta(layer, xs, isinstance(x, (list, tuple)), tuple(y_train.shape))
    _check_device1(layer, xs, isinstance(x, (list, tuple)), be, y_infer)


def _float_dtype(layer: Layer, x: Any) -> Any:
    """The parameters' floating dtype; the input's for a layer without any."""
    for _, p in layer.named_state():
        if backend_of(p.value).xp.isdtype(p.value.dtype, "real floating"):
            return p.value.dtype
    return x.dtype


def _expect(check: str, layer: Layer, what: str, a: Any, be: Backend, dtype: Any) -> None:
    where = backend_of(a)
    if where != be:
        raise AssertionError(f"check_layer ({check}): {layer.label}: {what} is on {where}, "
                             f"expected {be} (the input's)")
    if a.dtype != dtype:
        raise AssertionError(f"check_layer ({check}): {layer.label}: {what} has dtype "
                             f"{a.dtype}, expected {dtype} (the parameters')")


def _run(check: str, layer: Layer, model: Layer, x: Any, train: bool, backward: bool
         ) -> tuple[Any, Any]:
    """forward (and backward on an all-ones dy) of ``model``, its errors named by ``check``;
    random layers draw from a stream of their own so the caller's stream stays put."""
    try:
        with RandomStream(0).active():
            y = model.forward(x, train=train)
            if not backward:
                return y, None
            xp = backend_of(y).xp
            return y, model.backward(xp.ones_like(y))
    except Exception as e:
        where = " on torch's meta device" if check == "meta" else ""
        hint = (" (it has shapes but no values: does the layer read an array on the host, "
                "with float(), .item(), np.asarray or an if on an array?)"
                if check == "meta" else "")
        raise AssertionError(f"check_layer ({check}): {layer.label} raised{where} "
                             f"{type(e).__name__}: {e}{hint}") from e


def _input_grads(dx: Any, xs: list[Any], multi: bool) -> list[tuple[str, Any, Any]]:
    """(name, gradient, input) for each floating input that got a gradient."""
    dxs = (list(dx) if multi else [dx]) if dx is not None else [None] * len(xs)
    out = []
    for i, (d, a) in enumerate(zip(dxs, xs)):
        if d is not None and backend_of(a).xp.isdtype(a.dtype, "real floating"):
            out.append((f"input[{i}] gradient" if multi else "input gradient", d, a))
    return out


def _check_placement(layer: Layer, x: Any, xs: list[Any], be: Backend) -> tuple[Any, Any]:
    model = copy.deepcopy(layer)
    dtype = _float_dtype(model, xs[0])
    # inference first: a training pass moves running statistics, and device1's copy has
    # not seen one
    y_infer, _ = _run("placement", layer, model, x, train=False, backward=False)
    _expect("placement", layer, "forward(train=False) output", y_infer, be, dtype)
    y, dx = _run("placement", layer, model, x, train=True, backward=True)
    _expect("placement", layer, "forward(train=True) output", y, be, dtype)
    for what, d, a in _input_grads(dx, xs, isinstance(x, (list, tuple))):
        _expect("placement", layer, what, d, be, a.dtype)
    for name, p in model.named_parameters():
        if p.grad is not None:
            _expect("placement", layer, f"gradient of {name!r}", p.grad, be, p.value.dtype)
    return y, y_infer


def _moved(layer: Layer, xs: list[Any], multi: bool, to: Backend, zeros: bool
           ) -> tuple[Layer, Any]:
    """A copy of ``layer`` and of the input on ``to`` (the input as zeros: meta has no
    values to copy)."""
    model = copy.deepcopy(layer).to(to)
    moved = []
    for a in xs:
        name = dtype_name(backend_of(a).xp, a.dtype)
        host = np.zeros(tuple(a.shape)) if zeros else to_numpy(a)
        moved.append(to.asarray(host, dtype=name))
    return model, moved if multi else moved[0]


def _check_meta(layer: Layer, xs: list[Any], multi: bool, y_shape: tuple[int, ...]) -> None:
    try:
        meta = make("torch", "meta")
    except BackendUnavailableError:
        return  # torch is not installed here
    try:
        model, mx = _moved(layer, xs, multi, meta, zeros=True)
    except TypeError:
        return  # a parameter dtype torch has no counterpart for: cannot move there
    # Every built-in layer (Linear, Conv, pooling, activations, Dropout, BatchNorm,
    # Graph merges) runs on meta, so nothing is tolerated here.
    y, dx = _run("meta", layer, model, mx, train=True, backward=True)
    found = [("forward output", y, y_shape)]
    found += [(what, d, tuple(a.shape)) for what, d, a in _input_grads(dx, xs, multi)]
    found += [(f"gradient of {n!r}", p.grad, p.shape) for n, p in model.named_parameters()
              if p.grad is not None]
    for what, a, shape in found:
        where = backend_of(a)
        if where != meta or tuple(a.shape) != shape:
            raise AssertionError(f"check_layer (meta): {layer.label}: {what} is on {where} "
                                 f"with shape {tuple(a.shape)}, expected {meta} with {shape}")


def _check_device1(layer: Layer, xs: list[Any], multi: bool, be: Backend, y: Any) -> None:
    try:
        device1 = make("array_api_strict", "device1")
    except BackendUnavailableError:
        return  # array-api-strict is not installed here
    if be == device1:
        return
    model, dx = _moved(layer, xs, multi, device1, zeros=False)
    out, _ = _run("device1", layer, model, dx, train=False, backward=False)
    if backend_of(out) != device1:
        raise AssertionError(f"check_layer (device1): {layer.label}: output is on "
                             f"{backend_of(out)}, expected {device1}")
    try:
        np.testing.assert_allclose(to_numpy(out), to_numpy(y), rtol=DEVICE1_RTOL,
                                   atol=DEVICE1_ATOL)
    except AssertionError as e:
        raise AssertionError(f"check_layer (device1): {layer.label}: inference output on "
                             f"{device1} differs from the one on {be}:{e}") from None
