"""Self-attention on sequences ``(N, L, E)``: MultiHeadAttention, TransformerBlock and a
learned PositionalEmbedding. Names, layouts and initialisation are PyTorch's
(``torch.nn.MultiheadAttention(batch_first=True)``, ``TransformerEncoderLayer``), so
``state_dict``/``load_state_dict`` exchange weights with it.

MultiHeadAttention, with ``H`` heads of width ``d = E / H``, ``X2`` the input as
``(N L, E)`` rows, and each of ``Q, K, V`` split into heads ``(N, H, L, d)``:

    forward   [Q | K | V] = X2 @ W_in.T + b_in                    W_in: (3E, E)
              S = (Q / sqrt(d)) @ K^T   (+ M: a large negative number above the
                                         diagonal when causal)    (N, H, L, L)
              P = softmax(S) along the last axis, the row maximum subtracted first
              O = P @ V, heads joined back into (N L, E) rows
              Y = O @ W_out.T + b_out                              W_out: (E, E)
    kept      X2, Q / sqrt(d), K, V, P and O (only when training)
    backward  dW_out = dY.T @ O,  db_out = sum(dY),  dO = dY @ W_out
              dP = dO @ V^T,  dV = P^T @ dO
              dS = P * (dP - sum(dP * P, last axis))      (softmax's Jacobian per row)
              dQ = dS @ K / sqrt(d),  dK = dS^T @ (Q / sqrt(d))
              dW_in = [dQ | dK | dV].T @ X2,  db_in = sum([dQ | dK | dV]),
              dX = [dQ | dK | dV] @ W_in

The causal mask is built from the shapes (positions ``j > i``), never from the data.
It adds half the dtype's most negative number, not ``-inf``: the masked
probabilities are then exactly 0 and nothing in backward becomes NaN.

TransformerBlock is pre-norm: ``x = x + MHA(LN1(x)); x = x + MLP(LN2(x))`` with
``MLP = Linear(E, rE) -> GELU -> Linear(rE, E)``; it keeps what its sub-layers keep,
and its backward runs the same steps in reverse, each residual path adding its gradient:
``dX1 = dY + LN2'(MLP'(dY))``, ``dX = dX1 + LN1'(MHA'(dX1))``.

PositionalEmbedding adds ``W[:L]`` to an ``(N, L, E)`` input; backward gives
``dW[:L] = sum over the batch of dY`` (zero below) and ``dX = dY``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _args, random
from .._compat import device, namespace
from ..backend import Backend, resolve
from ..backends import ops
from .activations import GELU
from .base import Layer, check_like_parameters
from .dropout import Dropout
from .linear import Linear
from .norm import LayerNorm


def _check_sequence(layer: Layer, x: Any, ref: Any, width: int) -> None:
    """``x`` is ``(N, L, width)`` with ``L >= 1``, with ``ref``'s library, device and
    dtype (softmax over no positions has no value)."""
    _check_shape(layer, x, width)
    check_like_parameters(layer, x, ref)


def _check_shape(layer: Layer, x: Any, width: int) -> None:
    if x.ndim != 3 or x.shape[2] != width:
        raise ValueError(f"{layer.label}: expected input of shape (N, L, {width}), got "
                         f"{tuple(x.shape)}")
    if x.shape[1] < 1:  # as GRU and LSTM say it
        raise ValueError(f"{layer.label}: expected input of shape (N, L, {width}) with "
                         f"L >= 1 (batch first), got {tuple(x.shape)}")


def causal_mask(xp: Any, length: int, dtype: Any, dev: Any) -> Any:
    """``(L, L)``: 0 where position ``j <= i`` may be seen from ``i``, and half the
    dtype's most negative number above the diagonal (finite, so no NaN in backward)."""
    i = xp.arange(length, device=dev)
    return xp.astype(i[None, :] > i[:, None], dtype) * (xp.finfo(dtype).min / 2)


class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product self-attention, PyTorch's parameters and layout.

    Parameters
    ----------
    embed_dim : int
        ``E``, the width of each position; a multiple of ``num_heads``.
    num_heads : int
        ``H``: each head attends with ``d = E / H`` of the width.
    causal : bool
        Position ``i`` attends only to positions ``j <= i`` (a language model).
    bias : bool
        Whether the input and output projections add a bias (``in_proj_bias (3E,)``,
        ``out_proj.bias (E,)``).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Shapes
    ------
    input ``(N, L, E)``, output ``(N, L, E)``. Parameters ``in_proj_weight (3E, E)``
    (rows: query, key, value), ``in_proj_bias (3E,)``, ``out_proj.weight (E, E)``,
    ``out_proj.bias (E,)``, initialised as PyTorch does: Xavier-uniform in-projection,
    ``U(-1/sqrt(E), 1/sqrt(E))`` out-projection weight, zero biases.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, causal: bool = False,
                 bias: bool = True, dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        who = "MultiHeadAttention"
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.num_heads = _args.integer(num_heads, "num_heads", who, minimum=1)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{who}: embed_dim must be divisible by num_heads, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        self.causal, self.use_bias = _flag(causal, "causal", who), _flag(bias, "bias", who)
        self.dtype = _args.float_dtype(dtype, who)
        be, rng = resolve(backend, device), random.current().host
        shapes = self.param_shapes(self.get_config())

        def make(pname: str, draw: Any) -> Any:
            """The parameter ``pname`` as declared, None where it is not (no bias)."""
            if pname not in shapes:
                return None
            return self._new_parameter(pname, draw(shapes[pname]), dtype, backend=be)

        a = math.sqrt(6.0 / sum(shapes["in_proj_weight"]))  # Xavier-uniform on (3E, E)
        k = 1 / math.sqrt(self.embed_dim)
        # made in PyTorch's order, the two weights drawn in turn, the biases zeros
        self.in_proj_weight = make("in_proj_weight", lambda s: rng.uniform(-a, a, size=s))
        self.in_proj_bias = make("in_proj_bias", np.zeros)
        self.out_weight = make("out_proj.weight", lambda s: rng.uniform(-k, k, size=s))
        self.out_bias = make("out_proj.bias", np.zeros)
        self._cache: Any = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        w_in = self.in_proj_weight.value
        _check_sequence(self, x, w_in, self.embed_dim)
        xp = namespace(x)
        o = ops(xp)
        n, length, e = x.shape
        h = self.num_heads
        d = e // h
        x2 = xp.reshape(x, (n * length, e))
        qkv = o.linear(xp, x2, w_in, None if self.in_proj_bias is None else self.in_proj_bias.value)
        # (N L, 3E) -> (3, N, H, L, d): views, no copies
        qkv = xp.permute_dims(xp.reshape(qkv, (n, length, 3, h, d)), (2, 0, 3, 1, 4))
        q = qkv[0, ...] * (1.0 / math.sqrt(d))
        k, v = qkv[1, ...], qkv[2, ...]
        s = q @ xp.permute_dims(k, (0, 1, 3, 2))  # (N, H, L, L), a fresh array
        if self.causal:
            s += causal_mask(xp, length, s.dtype, device(x))
        s -= xp.max(s, axis=-1, keepdims=True)
        p = xp.exp(s)
        p /= xp.sum(p, axis=-1, keepdims=True)
        # heads joined back: (N, H, L, d) -> (N, L, H, d) -> (N L, E), one copy
        joined = xp.reshape(xp.permute_dims(p @ v, (0, 2, 1, 3)), (n * length, e))
        y = o.linear(xp, joined, self.out_weight.value,
                     None if self.out_bias is None else self.out_bias.value)
        self._cache = (x2, q, k, v, p, joined, (n, length, e)) if train else None
        return xp.reshape(y, (n, length, e))

    def _backward(self, dy: Any, need_input: bool) -> Any:
        x2, q, k, v, p, joined, (n, length, e) = self._require_cache(self._cache)
        xp = namespace(dy)
        o = ops(xp)
        h = self.num_heads
        d = e // h
        dy2 = xp.reshape(dy, (n * length, e))
        self.out_weight.accumulate(dy2.T @ joined)
        if self.out_bias is not None:
            self.out_bias.accumulate(o.sum_axes(xp, dy2, 0))
        # (N L, E) -> (N, H, L, d), a view
        d_out = xp.permute_dims(xp.reshape(dy2 @ self.out_weight.value, (n, length, h, d)),
                                (0, 2, 1, 3))
        dv = xp.permute_dims(p, (0, 1, 3, 2)) @ d_out
        ds = d_out @ xp.permute_dims(v, (0, 1, 3, 2))  # dP, then dS in place
        ds -= xp.sum(ds * p, axis=-1, keepdims=True)
        ds *= p
        dq = ds @ k
        dq *= 1.0 / math.sqrt(d)
        dk = xp.permute_dims(ds, (0, 1, 3, 2)) @ q
        # (3, N, H, L, d) -> (N, L, 3, H, d) -> (N L, 3E): the rows of [dQ | dK | dV]
        dqkv = xp.reshape(xp.permute_dims(xp.stack([dq, dk, dv]), (1, 3, 0, 2, 4)),
                          (n * length, 3 * e))
        self.in_proj_weight.accumulate(dqkv.T @ x2)
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(o.sum_axes(xp, dqkv, 0))
        if not need_input:
            return None
        return xp.reshape(dqkv @ self.in_proj_weight.value, (n, length, e))

    def backward(self, dy: Any) -> Any:
        return self._backward(dy, True)

    def backward_params(self, dy: Any) -> None:
        self._backward(dy, False)

    def get_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "causal": self.causal, "bias": self.use_bias, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``in_proj_weight (3E, E)``, ``in_proj_bias (3E,)``, ``out_proj.weight (E, E)``,
        ``out_proj.bias (E,)``, in that order; no biases when ``bias`` is false."""
        e = config["embed_dim"]
        shapes = {"in_proj_weight": (3 * e, e)}
        if config.get("bias", True):
            shapes["in_proj_bias"] = (3 * e,)
        shapes["out_proj.weight"] = (e, e)
        if config.get("bias", True):
            shapes["out_proj.bias"] = (e,)
        return shapes


def _flag(value: Any, what: str, who: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{who}: {what} must be True or False, got {value!r}")
    return value


class PositionalEmbedding(Layer):
    """A learned position embedding added to a sequence: ``y = x + W[:L]``.

    Parameters
    ----------
    max_len : int
        The longest sequence it takes.
    embed_dim : int
        ``E``, the width of each position.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameter lives (default: the current backend).

    Shapes
    ------
    input ``(N, L, E)`` with ``L <= max_len``, output the same; parameter ``weight
    (max_len, E)``, initialised ``N(0, 0.02)`` (GPT-2's).
    """

    def __init__(self, max_len: int, embed_dim: int, *, dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        who = "PositionalEmbedding"
        self.max_len = _args.integer(max_len, "max_len", who, minimum=1)
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.dtype = _args.float_dtype(dtype, who)
        host = random.current().host.normal(0.0, 0.02,
                                            size=self.param_shapes(self.get_config())["weight"])
        self.weight = self._new_parameter("weight", host, dtype,
                                          backend=resolve(backend, device))
        self._length: int | None = None

    def forward(self, x: Any, *, train: bool = True) -> Any:
        w = self.weight.value
        _check_sequence(self, x, w, self.embed_dim)
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"{self.label}: expected sequences of at most {self.max_len} "
                             f"positions, got input of shape {tuple(x.shape)}")
        self._length = length if train else None
        return x + (w if length == self.max_len else w[:length, :])

    def backward(self, dy: Any) -> Any:
        self.backward_params(dy)
        return dy

    def backward_params(self, dy: Any) -> None:
        length = self._require_cache(self._length)
        xp = namespace(dy)
        g = ops(xp).sum_axes(xp, dy, 0)
        if length < self.max_len:
            rest = xp.zeros((self.max_len - length, self.embed_dim), dtype=dy.dtype,
                            device=device(dy))
            g = xp.concat([g, rest], axis=0)
        self.weight.accumulate(g)

    def get_config(self) -> dict[str, Any]:
        return {"max_len": self.max_len, "embed_dim": self.embed_dim, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``{"weight": (max_len, embed_dim)}``, without making the layer."""
        return {"weight": (config["max_len"], config["embed_dim"])}


class TransformerBlock(Layer):
    """A pre-norm transformer encoder block on ``(N, L, E)`` sequences.

    ``x = x + Dropout(MHA(LN1(x)))``, then ``x = x + Dropout(MLP(LN2(x)))`` with
    ``MLP = Linear(E, rE) -> GELU -> Linear(rE, E)``. Its parameters have the names of
    ``torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=r * E, dropout=0,
    activation="gelu", batch_first=True, norm_first=True)`` (``self_attn.in_proj_weight``,
    ``linear1.weight``, ``norm1.bias``...), so ``load_state_dict`` takes its
    ``state_dict()``, and with ``dropout=0`` both compute the same function.

    Parameters
    ----------
    embed_dim : int
        ``E``, the width of each position; a multiple of ``num_heads``.
    num_heads : int
        Attention heads ``H``.
    mlp_ratio : int
        ``r``: the MLP's hidden width is ``r * E``.
    causal : bool
        Causal self-attention: position ``i`` sees positions ``j <= i`` only.
    dropout : float
        In training, ``Dropout(dropout)`` on the attention output and on the MLP output,
        each before its residual add. PyTorch's layer also drops attention weights (inside
        ``self_attn``) and the MLP's hidden activations, so with ``dropout > 0`` the two
        train differently (inference is the same).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Shapes
    ------
    input ``(N, L, E)``, output ``(N, L, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4,
                 causal: bool = False, dropout: float = 0.0, *, dtype: str = "float32",
                 backend: str | Backend | None = None, device: str | None = None,
                 name: str | None = None):
        super().__init__(name=name)
        who = "TransformerBlock"
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.num_heads = _args.integer(num_heads, "num_heads", who, minimum=1)
        self.mlp_ratio = _args.integer(mlp_ratio, "mlp_ratio", who, minimum=1)
        self.causal = _flag(causal, "causal", who)
        self.dropout = _args.real(dropout, "dropout", who, low=0.0, high=1.0, high_open=True)
        self.dtype = _args.float_dtype(dtype, who)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{who}: embed_dim must be divisible by num_heads, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        be = resolve(backend, device)
        self._child_names: list[str] = []
        for attr, kind, config in self._sublayers(self.get_config()):
            layer = kind.from_config(config, backend=be)
            layer._where = f"{name or who}.{attr}"
            setattr(self, attr, layer)
            self._child_names.append(attr)

    @classmethod
    def _sublayers(cls, config: dict[str, Any]) -> list[tuple[str, type[Layer], dict[str, Any]]]:
        """``(attribute, class, config)`` of each sub-layer, in PyTorch's order (the
        order of making and drawing them): the constructor makes them from this list and
        ``param_shapes`` declares their arrays from it."""
        e, dtype = config["embed_dim"], config.get("dtype", "float32")
        hidden = config.get("mlp_ratio", 4) * e
        p = config.get("dropout", 0.0)
        return [("self_attn", MultiHeadAttention, {"embed_dim": e,
                                                   "num_heads": config["num_heads"],
                                                   "causal": config.get("causal", False),
                                                   "dtype": dtype}),
                ("linear1", Linear, {"in_features": e, "out_features": hidden, "dtype": dtype}),
                ("linear2", Linear, {"in_features": hidden, "out_features": e, "dtype": dtype}),
                ("norm1", LayerNorm, {"normalized_shape": e, "dtype": dtype}),
                ("norm2", LayerNorm, {"normalized_shape": e, "dtype": dtype}),
                ("activation", GELU, {}), ("dropout1", Dropout, {"p": p}),
                ("dropout2", Dropout, {"p": p})]

    def children(self) -> list[Layer]:
        return [layer for _, layer in self.named_children()]

    def named_children(self) -> list[tuple[str, Layer]]:
        """PyTorch's attribute names, so the dotted parameter names are its names."""
        return [(attr, getattr(self, attr)) for attr in self._child_names]

    def forward(self, x: Any, *, train: bool = True) -> Any:
        _check_shape(self, x, self.embed_dim)
        a = self.self_attn.forward(self.norm1.forward(x, train=train), train=train)
        x = x + self.dropout1.forward(a, train=train)
        h = self.linear1.forward(self.norm2.forward(x, train=train), train=train)
        h = self.linear2.forward(self.activation.forward(h, train=train), train=train)
        return x + self.dropout2.forward(h, train=train)

    def backward(self, dy: Any) -> Any:
        g = self.linear2.backward(self.dropout2.backward(dy))
        g = self.linear1.backward(self.activation.backward(g))
        dx = dy + self.norm2.backward(g)  # the residual path and the MLP's
        g = self.self_attn.backward(self.dropout1.backward(dx))
        return dx + self.norm1.backward(g)

    def get_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "causal": self.causal, "dropout": self.dropout,
                "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Its sub-layers' arrays, each prefixed with the sub-layer's attribute
        (``self_attn.in_proj_weight``, ``linear1.weight``...), in PyTorch's order."""
        return {f"{attr}.{pname}": shape for attr, kind, sub in cls._sublayers(config)
                for pname, shape in kind.param_shapes(sub).items()}
