"""One fixture, ``be``, runs a test on every (backend, device) case.

Every case is listed in every run. A case whose library or device is missing here is
SKIPPED with the reason; ``XPNET_BACKENDS=numpy-cpu,strict-device1`` narrows the run
(the others then show as skipped, "not selected").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

import xpnet as xn


@dataclass(frozen=True)
class Case:
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
]


def open_case(case: Case) -> xn.Backend:
    """Select the backend of ``case``, or skip the test saying why it cannot run."""
    selected = os.environ.get("XPNET_BACKENDS")
    if selected and case.id not in [s.strip() for s in selected.split(",")]:
        pytest.skip(f"{case.id}: not selected by XPNET_BACKENDS={selected}")
    if case.name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError:
            pytest.skip(f"{case.id}: array_api_strict is not installed")
        array_api_strict.set_array_api_strict_flags(api_version="2024.12")
    try:
        return xn.use(case.name, device=case.device)
    except xn.BackendUnavailableError as e:
        pytest.skip(f"{case.id}: {e}")


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def be(request):
    """The Backend of one case, current for the test's duration; seeded with 0."""
    backend = open_case(request.param)
    with backend:
        xn.seed(0)
        yield backend


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_on(be: xn.Backend, y, dtype: str = "float32") -> None:
    """``y`` is an array of ``be``'s library, on its device, with ``dtype``."""
    from xpnet.backend import backend_of

    where = backend_of(y)
    assert (where.name, where.device_name) == (be.name, be.device_name), (
        f"result is on {where}, expected {be}"
    )
    assert y.dtype == be.dtype(dtype), f"result dtype {y.dtype}, expected {dtype}"
