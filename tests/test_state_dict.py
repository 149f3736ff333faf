"""state_dict / load_state_dict: PyTorch's names, both directions, equal outputs."""

from __future__ import annotations

import numpy as np
import pytest

import xpnet as xn


def _mlp_pair(torch):
    ours = xn.Sequential(xn.Linear(5, 8), xn.BatchNorm1D(8), xn.ReLU(), xn.Linear(8, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8),
                                 torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return ours, theirs, (6, 5)


def _cnn_pair(torch):
    ours = xn.Sequential(xn.Conv1D(2, 4, 3, stride=2, padding=1), xn.ReLU(), xn.MaxPool1D(2),
                         xn.Flatten(), xn.Linear(4 * 2, 3))
    theirs = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, stride=2, padding=1),
                                 torch.nn.ReLU(), torch.nn.MaxPool1d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 2, 3))
    return ours, theirs, (6, 2, 9)


def _torch_model_with_statistics(torch, theirs, shape):
    """A few training-mode passes so BatchNorm's running statistics are not the defaults."""
    torch.manual_seed(0)
    theirs.train()
    for _ in range(3):
        theirs(torch.randn(*shape) * 2 + 1)
    return theirs.eval()


@pytest.mark.parametrize("pair", [_mlp_pair, _cnn_pair], ids=["mlp-batchnorm", "cnn"])
def test_weights_move_both_ways_with_torch(be, pair):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    ours, theirs, shape = pair(torch)
    theirs = _torch_model_with_statistics(torch, theirs, shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = theirs(torch.from_numpy(x)).detach().numpy()

    result = ours.load_state_dict(theirs.state_dict())  # tensors, num_batches_tracked too
    assert result == ([], [])
    got = xn.to_numpy(ours(be.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    back = pair(torch)[1].eval()  # fresh weights, then ours into it
    missing, unexpected = back.load_state_dict(
        {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5,
                               atol=1e-6)


def test_state_dict_is_host_copies_under_pytorch_names(be):
    model = xn.Sequential(xn.Linear(3, 2), xn.BatchNorm1D(2))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                        "1.running_var"]
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in sd.values())
    sd["0.weight"][...] = 7.0  # a copy: the model is untouched
    assert not np.any(xn.to_numpy(model[0].weight.value) == 7.0)


def test_load_state_dict_lists_every_problem_and_changes_nothing(be):
    model = xn.Sequential(xn.Linear(3, 2), xn.Linear(2, 1))
    before = model.state_dict()
    bad = {"0.weight": np.zeros((2, 4)), "0.bias": np.zeros(2), "extra.weight": np.zeros(1)}
    with pytest.raises(ValueError, match=r"0\.weight: shape \(2, 4\) given, the model has "
                                         r"\(2, 3\); missing: 1\.weight, 1\.bias; "
                                         r"unexpected: extra\.weight"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # not strict: what matches loads, in the model's dtype and place
    res = model.load_state_dict({"1.bias": np.array([2.5])}, strict=False)
    assert res.missing_keys == ["0.weight", "0.bias", "1.weight"] and res.unexpected_keys == []
    assert xn.to_numpy(model[1].bias.value).tolist() == [2.5]
    assert model[1].bias.value.dtype == be.dtype("float32")


def test_load_state_dict_takes_dlpack_arrays():
    class Foreign:  # an array type of a library xpnet has no adapter for
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    with xn.use("numpy"):
        model = xn.Linear(2, 2)
        model.load_state_dict({"weight": Foreign(np.eye(2)), "bias": Foreign(np.ones(2))})
    np.testing.assert_array_equal(model.weight.value, np.eye(2, dtype=np.float32))
