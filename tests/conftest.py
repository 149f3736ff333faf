"""xpnet's tests use the public test kit, :mod:`xpnet.testing`: its ``be`` fixture runs a
test on every (backend, device) case, ``rng`` seeds host data.

Every case is listed in every run. A case whose library or device is missing here is
SKIPPED with the reason; ``XPNET_BACKENDS=numpy-cpu,strict-device1`` narrows the run
(the others then show as skipped, "not selected"). The README's command runs the suite
on two worker processes (``-n 2``, pytest-xdist), one thread each.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # With ``-n 2`` the two workers fill the two cores; a BLAS or XLA pool per worker on
    # top would make four busy threads fight over two cores (the CNN accuracy runs took
    # three times as long). Set before NumPy, torch or JAX starts its pool.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")

from xpnet.testing import assert_on  # noqa: E402

pytest_plugins = ["xpnet.testing"]

__all__ = ["assert_on"]  # tests do `from conftest import assert_on`
