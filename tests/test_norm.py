"""Normalisation layers (BatchNorm1D/2D) on every backend case: NumPy references,
gradcheck, running statistics, and clear errors on misuse."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn


# -- BatchNorm on one value per channel ---------------------------------------------------
def test_batchnorm_refuses_training_on_one_value_per_channel(be):
    bn = xn.BatchNorm1D(3)
    with pytest.raises(ValueError, match=r"BatchNorm1D.*more than one value per channel.*"
                                         r"\(1, 3\)"):
        bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=True)
    np.testing.assert_array_equal(xn.to_numpy(bn.running_var.value), np.ones(3))
    bn.forward(be.asarray(np.ones((1, 3)), dtype="float32"), train=False)  # inference is fine


def test_batchnorm_names_itself_for_data_from_elsewhere():
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    with xn.use("array_api_strict", device="device1"):
        bn = xn.BatchNorm1D(2)
    with pytest.raises(TypeError, match=r"BatchNorm1D.*input is a numpy array.*parameters are "
                                        r"array_api_strict"):
        bn(np.ones((3, 2), dtype=np.float32))
    with xn.use("array_api_strict", device="device2") as other:
        x = other.asarray(np.ones((3, 2)), dtype="float32")
    with pytest.raises(ValueError, match=r"BatchNorm1D.*on device .*device2.*device1"):
        bn(x)

