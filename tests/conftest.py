"""xpnet's tests use the public test kit, :mod:`xpnet.testing`: its ``be`` fixture runs a
test on every (backend, device) case, ``rng`` seeds host data.

Every case is listed in every run. A case whose library or device is missing here is
SKIPPED with the reason; ``XPNET_BACKENDS=numpy-cpu,strict-device1`` narrows the run
(the others then show as skipped, "not selected").
"""

from __future__ import annotations

from xpnet.testing import assert_on

pytest_plugins = ["xpnet.testing"]

__all__ = ["assert_on"]  # tests do `from conftest import assert_on`
