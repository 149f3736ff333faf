"""What Linear and the convolutions share: a weight, an optional bias, their
initialisation, dtype and placement.

The weights are drawn once, when the layer is made, from the seeded host generator
of the random stream in force, and copied to the backend: one seed gives the same
weights on every backend, and composing layers never redraws them.
"""

from __future__ import annotations

from typing import Any

from .. import _args, random
from .. import init as initializers
from ..backend import Backend, backend_of, resolve
from .base import Layer, check_like_parameters


class _Weighted(Layer):
    """A layer with ``weight`` of shape ``(out, in, *kernel)`` and an optional ``bias``.

    ``init``: ``"pytorch"`` (default: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
    weight and bias), ``"he"`` (before a ReLU), ``"glorot"`` (before sigmoid or tanh),
    ``"lecun"`` or ``"normal"``, an initialiser of :mod:`xpnet.init` (``normal(0.02)``,
    ``scaled(...)``) or a callable ``(shape, rng) -> array`` (see :mod:`xpnet.init`);
    all but ``"pytorch"`` start the bias at zero.
    ``dtype``: ``"float32"`` or ``"float64"``. ``backend``/``device``: where the
    parameters live (default: the current backend).
    """

    def _make_weights(self, bias: bool, init: Any, dtype: str,
                      backend: str | Backend | None, device: str | None) -> None:
        """``weight`` and ``bias`` of the shapes ``param_shapes`` declares for the layer's
        config (the sizes are set before this is called)."""
        try:  # a bad name fails before anything is drawn
            init = initializers.resolve(init)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        self.use_bias, self.init = bool(bias), init
        self.dtype = _args.float_dtype(dtype, type(self).__name__)
        be = resolve(backend, device)
        shapes = self.param_shapes(self.get_config())
        w, b = initializers.draw(init, shapes["weight"], "bias" in shapes,
                                 random.current().host)
        self.weight = self._new_parameter("weight", w, dtype, backend=be)
        self.bias = self._new_parameter("bias", b, dtype, backend=be) if b is not None else None

    def _check_input(self, x: Any) -> None:
        """Same library, device and dtype as the weight (metadata only, no host read)."""
        check_like_parameters(self, x, self.weight.value)

    def reset(self, init: Any = None) -> None:
        """Draw new weights (and bias) with ``init`` (default: the layer's own), where
        the parameters are now, keeping their dtype."""
        init = self.init if init is None else initializers.resolve(init)
        w = self.weight.value
        be = backend_of(w)
        host_w, host_b = initializers.draw(init, tuple(w.shape), self.bias is not None,
                                           random.current().host)
        self.weight.value = be.asarray(host_w, dtype=w.dtype)
        if self.bias is not None:
            self.bias.value = be.asarray(host_b, dtype=self.bias.value.dtype)
        self.init = init

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | None = None) -> Layer:
        if config.get("init") == "auto":  # written by xpnet 0.1; weights are loaded over
            config = {**config, "init": "glorot"}
        return super().from_config(config, backend=backend)

    @staticmethod
    def _weight_and_bias(weight: tuple[int, ...], config: dict[str, Any]
                         ) -> dict[str, tuple[int, ...]]:
        """``weight`` and, unless the config says ``bias=False``, a bias ``(out,)``."""
        shapes = {"weight": weight}
        if config.get("bias", True):
            shapes["bias"] = (weight[0],)
        return shapes
