"""Convolutions with shared weights: Conv1D on ``(N, C, L)``, Conv2D on ``(N, C, H, W)``.

One small kernel is applied at every position, so the weight gradient is the sum over
positions. The arithmetic is the backend's ``conv_forward``/``conv_backward``: im2col
in standard calls (``xpnet.backends.standard``), the same products laid out
channel-major with one strided gather on NumPy (``xpnet.backends.numpy``), or a
library's own convolution where it has one (torch). With the windows laid out as
rows, ``cols``, and ``W2`` the weight as a matrix:

    forward   Y = cols @ W2.T + b              (one matmul for the whole batch)
    kept      cols (the windows) and W, when train is true
    backward  dC/dW2   = delta.T @ cols        (sums over batch and positions)
              dC/db    = sum of delta over batch and positions
              dC/dcols = delta @ W2, added back into each window's input slice

``dilation`` d spaces a kernel's taps d apart: a window then reaches ``d (k - 1) + 1``
positions and the equations are unchanged, only the slices move. With ``groups`` G the
input channels split into G groups of ``C_in / G``, each convolved with its own
``C_out / G`` filters: ``cols`` becomes ``(G, rows, K C_in/G)`` and every product above
is one matmul batched over the groups, ``Y_g = cols_g @ W2_g.T``. Depthwise
convolution is ``groups = in_channels``.

Weights use PyTorch's layout: ``(out_channels, in_channels // groups, *kernel)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _args, _windows
from .. import init as initializers
from .._compat import namespace
from ..backend import Backend
from ..backends import ops
from .weighted import _Weighted


class _ConvND(_Weighted):
    dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] = 0,
                 dilation: int | tuple[int, ...] = 1, groups: int = 1, *,
                 bias: bool = True,
                 init: str | dict | Callable = "pytorch",
                 dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        who = type(self).__name__
        self.in_channels = _args.integer(in_channels, "in_channels", who, minimum=1)
        self.out_channels = _args.integer(out_channels, "out_channels", who, minimum=1)
        self.kernel_size = _windows.as_tuple(kernel_size, self.dims, "kernel_size", who)
        self.stride = _windows.as_tuple(stride, self.dims, "stride", who)
        self.padding = _windows.as_tuple(padding, self.dims, "padding", who)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{who}: kernel_size and stride must be >= 1 and padding >= 0")
        self.dilation = _windows.as_tuple(dilation, self.dims, "dilation", who, minimum=1)
        self.groups = _args.integer(groups, "groups", who, minimum=1)
        for what, n in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if n % self.groups:
                raise ValueError(f"{who}: {what} must be divisible by groups={self.groups}, "
                                 f"got {what}={n}")
        self._make_weights(bias, init, dtype, backend, device)
        self._ctx: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        if x.ndim != 2 + self.dims or x.shape[1] != self.in_channels:
            layout = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
            raise ValueError(
                f"{self.label}: expected input {layout} with C = {self.in_channels} channels, "
                f"got shape {tuple(x.shape)}"
            )
        self._check_input(x)
        padded = tuple(s + 2 * p for s, p in zip(x.shape[2:], self.padding, strict=True))
        _windows.check_fits(padded, self.kernel_size, self, self.padding, self.dilation)
        xp = namespace(x)
        y, ctx = ops(xp).conv_forward(xp, x, self.weight.value,
                                      None if self.bias is None else self.bias.value,
                                      self.stride, self.padding, self.dilation, self.groups)
        self._ctx = ctx if train else None
        return y

    def _gradients(self, delta: Any, need_input: bool) -> Any:
        ctx = self._require_cache(self._ctx)
        xp = namespace(delta)
        dx, dW, db = ops(xp).conv_backward(xp, ctx, delta, need_input)
        self.weight.accumulate(dW)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def backward(self, delta: Any) -> Any:
        return self._gradients(delta, need_input=True)

    def backward_params(self, delta: Any) -> None:
        self._gradients(delta, need_input=False)

    def get_config(self) -> dict[str, Any]:
        def one(values: tuple[int, ...]) -> int | list[int]:
            return values[0] if self.dims == 1 else list(values)

        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": one(self.kernel_size), "stride": one(self.stride),
                "padding": one(self.padding), "dilation": one(self.dilation),
                "groups": self.groups, "bias": self.use_bias,
                "init": initializers.config_of(self.init),
                "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``weight (out_channels, in_channels // groups, *kernel)`` and, with ``bias``,
        ``bias (out_channels,)``; a config without ``groups`` (written before there were
        any) means 1."""
        k = config["kernel_size"]  # an int or one per spatial axis, as the constructor
        kernel = tuple(k) if isinstance(k, (list, tuple)) else (k,) * cls.dims
        groups = _args.integer(config.get("groups", 1), "groups", cls.__name__, minimum=1)
        if config["in_channels"] % groups:
            raise ValueError(f"{cls.__name__}: in_channels must be divisible by groups="
                             f"{groups}, got in_channels={config['in_channels']}")
        return cls._weight_and_bias((config["out_channels"], config["in_channels"] // groups,
                                     *kernel), config)


class Conv1D(_ConvND):
    """1-D convolution (cross-correlation, as PyTorch's ``Conv1d``) on ``(N, C_in, L)``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and the output; both divisible by ``groups``.
    kernel_size : int
    stride : int, default 1
    padding : int, default 0
        Zeros added at both ends of L.
    dilation : int, default 1
        Spacing between the kernel's taps.
    groups : int, default 1
        Split the channels into this many independent groups (``in_channels`` for a
        depthwise convolution).
    bias : bool, default True
    init, dtype, backend, device, name
        As :class:`Linear`.

    Shapes
    ------
    input ``(N, C_in, L)``; output ``(N, C_out, L_out)`` with
    ``L_out = (L + 2 padding - dilation (kernel_size - 1) - 1) // stride + 1``;
    weight ``(C_out, C_in // groups, kernel_size)``; bias ``(C_out,)``.
    """

    dims = 1


class Conv2D(_ConvND):
    """2-D convolution (cross-correlation, as PyTorch's ``Conv2d``) on ``(N, C_in, H, W)``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and the output; both divisible by ``groups``.
    kernel_size, stride, padding, dilation : int or (int, int)
        One value for both spatial axes or an ``(h, w)`` pair; ``stride`` and
        ``dilation`` default to 1, ``padding`` (zeros on both sides) to 0.
    groups : int, default 1
        Split the channels into this many independent groups (``in_channels`` for a
        depthwise convolution).
    bias : bool, default True
    init, dtype, backend, device, name
        As :class:`Linear`.

    Shapes
    ------
    input ``(N, C_in, H, W)``; output ``(N, C_out, H_out, W_out)`` with, per axis,
    ``H_out = (H + 2 padding - dilation (kernel - 1) - 1) // stride + 1``;
    weight ``(C_out, C_in // groups, kh, kw)``; bias ``(C_out,)``.
    """

    dims = 2
