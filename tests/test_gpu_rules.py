"""Rules of the GPU libraries that xpnet must obey, checked without a GPU.

Our machines have no GPU, so each rule below is modelled on the CPU: CuPy's refusal of
cuBLAS calls while a stream captures (a capturing compiler on NumPy arrays whose capture
refuses a matmul), JAX's grab of 75% of GPU memory when it starts, the TF32 defaults of
PyTorch and JAX on CUDA devices (their flags exist in the CPU builds), the GPU bench's
compiled rows and the kit's GPU cases, and ``xpnet selftest``. The stand-in CuPy (two
devices, kernels that refuse arrays of another device, erf's float16 loop) is in
``test_cupy_kernels.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import xpnet as xn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter from the repository root."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- 5. JAX's preallocation -----------------------------------------------------------------
_SEEN_AT_IMPORT = """
import importlib.abc, os, sys

class Watch(importlib.abc.MetaPathFinder):
    seen = "jax not imported"

    def find_spec(self, name, path=None, target=None):
        if name == "jax" and Watch.seen == "jax not imported":
            Watch.seen = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "unset")
        return None

sys.meta_path.insert(0, Watch())
import xpnet as xn
{call}
print("SEEN", Watch.seen)
"""


@pytest.mark.parametrize("call,user", [
    ("xn.available()", None), ("xn.use('jax', 'cpu')", None),
    ("xn.backends.ADAPTERS['jax'].version()", None), ("xn.available()", "true")],
    ids=["available", "use-jax-cpu", "version", "user-set"])
def test_jax_is_imported_without_preallocating_gpu_memory(call, user):
    """JAX takes 75% of every GPU's memory when its first platform starts (even
    ``jax.devices("cpu")``), leaving CuPy and torch in the same process a quarter:
    xpnet imports jax with XLA_PYTHON_CLIENT_PREALLOCATE=false, unless the user set it."""
    pytest.importorskip("jax", reason="jax is not installed")
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    if user is not None:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = user
    r = _python(_SEEN_AT_IMPORT.format(call=call), env=env)
    assert r.returncode == 0, r.stderr
    assert f"SEEN {user or 'false'}" in r.stdout, r.stdout + r.stderr


# -- 4. float32 on GPUs: full precision unless TF32 is asked for -----------------------------
@pytest.fixture
def torch_cuda_stub(monkeypatch):
    """torch's CPU build told it has one CUDA device (opening one makes no CUDA call);
    its precision flags as they were before, restored after."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    saved = [f.fp32_precision for f in flags]
    yield torch
    for f, value in zip(flags, saved):
        f.fp32_precision = value


@pytest.mark.parametrize("opt_in,expected", [(None, "ieee"), ("1", "tf32"), ("0", "ieee")])
def test_torch_cuda_computes_float32_in_float32(torch_cuda_stub, monkeypatch, opt_in, expected):
    """cuDNN's float32 convolutions default to TF32 in PyTorch (10-bit mantissa: conv
    results off by ~1e-3 against the CPU's); xpnet opens a CUDA device with TF32 off for
    matmuls and convolutions, and on with XPNET_TF32=1."""
    torch = torch_cuda_stub
    if opt_in is None:
        monkeypatch.delenv("XPNET_TF32", raising=False)
    else:
        monkeypatch.setenv("XPNET_TF32", opt_in)
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's defaults
    xn.backend.make("torch", "cpu")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # the CPU changes nothing
    be = xn.backend.make("torch", "cuda")
    assert be.device_name == "cuda:0"
    assert torch.backends.cuda.matmul.fp32_precision == expected
    assert torch.backends.cudnn.conv.fp32_precision == expected


@pytest.fixture
def jax_gpu_stub(monkeypatch):
    """JAX told it has one GPU; its default matmul precision restored after."""
    jax = pytest.importorskip("jax", reason="jax is not installed")
    from xpnet.backends.jax import JaxAdapter

    monkeypatch.setattr(JaxAdapter, "_gpus", staticmethod(lambda: ["gpu 0"]))
    saved = jax.config.jax_default_matmul_precision
    yield jax
    jax.config.update("jax_default_matmul_precision", saved)


@pytest.mark.parametrize("opt_in,expected", [(None, "highest"), ("1", "tensorfloat32")])
def test_jax_cuda_computes_float32_in_float32(jax_gpu_stub, monkeypatch, opt_in, expected):
    """JAX's float32 matmuls on a GPU default to reduced precision (TF32 passes); xpnet
    asks for full float32 when it opens a CUDA device, TF32 with XPNET_TF32=1."""
    jax = jax_gpu_stub
    if opt_in is None:
        monkeypatch.delenv("XPNET_TF32", raising=False)
    else:
        monkeypatch.setenv("XPNET_TF32", opt_in)
    jax.config.update("jax_default_matmul_precision", None)
    xn.backend.make("jax", "cpu")
    assert jax.config.jax_default_matmul_precision is None
    be = xn.backend.make("jax", "cuda")
    assert be.device_name == "cuda:0"
    assert jax.config.jax_default_matmul_precision == expected
