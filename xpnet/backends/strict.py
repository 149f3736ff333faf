"""array-api-strict: the standard and nothing more, with fake devices for tests.

Its ``device1`` and ``device2`` stand in for a GPU: arrays there refuse to become
NumPy arrays, so code that would read device data on the host fails in tests.
``no_float64`` is a device without float64, like Apple's MPS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Adapter, BackendUnavailableError, Placement

DEVICES = ("cpu", "device1", "device2", "no_float64", "no_x64")


class StrictAdapter(Adapter):
    name = "array_api_strict"
    aliases = ("strict", "array-api-strict")
    modules = ("array_api_strict",)
    namespaces = ("array_api_strict",)
    package = "array_api_strict"
    install = 'pip install "xpnet[strict]"'

    def open(self, device: str | None) -> Placement:
        strict = self.import_library()
        name = "cpu" if device in (None, "cpu", "CPU_DEVICE") else device
        if name not in DEVICES:
            raise BackendUnavailableError(
                f"array_api_strict: unknown device {device!r}; expected one of "
                f"{', '.join(DEVICES)}"
            )
        return Placement(strict, strict.Device("CPU_DEVICE" if name == "cpu" else name), name)

    def devices(self) -> list[str]:
        return list(DEVICES)

    def placement_of(self, x: Any) -> Placement:
        import array_api_strict as strict

        dev = x.device
        name = "cpu" if dev == strict.Device("CPU_DEVICE") else _device_name(dev)
        return Placement(strict, dev, name)

    def low_precision_dtype(self, xp: Any, name: str) -> Any:
        if name in ("bfloat16", "float16"):  # what the base class accepts
            raise TypeError(f"array_api_strict: no {name}: the array API standard defines "
                            f"neither float16 nor bfloat16, so mixed precision cannot run "
                            f"here; use precision=\"32\", or torch/jax (bf16, fp16), "
                            f"cupy/numpy (fp16)")
        return super().low_precision_dtype(xp, name)

    def to_host(self, x):
        import array_api_strict as strict

        return np.asarray(x.to_device(strict.Device("CPU_DEVICE")))


def _device_name(dev: Any) -> str:
    """``"device1"`` from ``Device('device1')`` (the name is not public)."""
    return str(dev).split("'")[1]
