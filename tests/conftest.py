"""xpnet's tests use the public test kit, :mod:`xpnet.testing`: its ``be`` fixture runs a
test on every (backend, device) case, ``rng`` seeds host data.

Every case is listed in every run. A case whose library or device is missing here is
SKIPPED with the reason; ``XPNET_BACKENDS=numpy-cpu,strict-device1`` narrows the run
(the others then show as skipped, "not selected"). The README's command runs the suite
on two worker processes (``-n 2``, pytest-xdist), one thread each.

Two things keep the JAX case affordable (eager JAX compiles every operation it runs):

- a test marked ``fit_level`` (fit/evaluate/predict end to end over several epochs)
  skips its jax-cpu case: JAX is covered by the layer checks and the compiled-step
  tests (tests/test_compile.py runs on every case). ``XPNET_FIT_ON_JAX=1`` runs them.
- JAX's persistent compilation cache, in the pytest cache folder
  (``.pytest_cache/d/jax-compilation-cache``; a temporary folder when the cache plugin
  is off), keeps what was compiled for the next run. ``JAX_COMPILATION_CACHE_DIR`` set
  beforehand wins. torch inductor's cache goes next to it (``torchinductor``), rather
  than in the /tmp folder every checkout and torch build on the machine shares;
  ``TORCHINDUCTOR_CACHE_DIR`` set beforehand wins.
"""

from __future__ import annotations

import os
import sys
import tempfile

if os.environ.get("PYTEST_XDIST_WORKER"):
    # With ``-n 2`` the two workers fill the two cores; a BLAS or XLA pool per worker on
    # top would make four busy threads fight over two cores (the CNN accuracy runs took
    # three times as long). Set before NumPy, torch or JAX starts its pool.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")

import pytest  # noqa: E402

from xpnet.testing import assert_on  # noqa: E402

pytest_plugins = ["xpnet.testing"]

__all__ = ["assert_on"]  # tests do `from conftest import assert_on`

#: Why a ``fit_level`` test skips its jax-cpu case.
JAX_FIT_LEVEL = ("jax-cpu: fit-level tests run on numpy/torch/strict; JAX is covered by "
                 "layer checks and the compiled-step tests (XPNET_FIT_ON_JAX=1 runs them)")


def pytest_configure(config):
    _use_jax_compilation_cache(config)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _cache_folder(config, "torchinductor"))


def _cache_folder(config, name):
    """A folder kept between runs: in the pytest cache, or a temporary one without it."""
    if getattr(config, "cache", None) is not None:
        return str(config.cache.mkdir(name))
    return os.path.join(tempfile.gettempdir(), f"xpnet-tests-{name}")  # -p no:cacheprovider


def _use_jax_compilation_cache(config):
    """Point JAX's persistent compilation cache at a folder kept between runs, and cache
    every compiled program however fast it compiled (eager JAX compiles each operation
    on its own, in milliseconds). Through the environment, so JAX is not imported here;
    through jax.config as well if something imported it already."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          _cache_folder(config, "jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_collection_modifyitems(config, items):
    """Skip the jax-cpu case of the tests marked ``fit_level`` (see the module docstring)."""
    if os.environ.get("XPNET_FIT_ON_JAX") == "1":
        return
    skip = pytest.mark.skip(reason=JAX_FIT_LEVEL)
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("be")
        if getattr(case, "id", None) == "jax-cpu" and item.get_closest_marker("fit_level"):
            item.add_marker(skip)
