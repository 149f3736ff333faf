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
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _args, random
from .. import init as initializers
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


#: Sequences longer than this run attention in blocks of keys (``blockwise=None``).
BLOCKWISE_ABOVE = 1024


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
    attn_dropout : float
        In training, dropout on the attention weights ``P`` (``torch.nn.
        MultiheadAttention``'s ``dropout``, GPT-2's ``attn_pdrop``): each kept weight is
        scaled by ``1 / (1 - p)``. The mask is drawn from the random stream in tiles of
        ``block_size`` queries by ``block_size`` keys (tiles that a causal mask hides
        entirely are not drawn), so both paths below draw the same masks.
    resid_dropout : float
        In training, dropout on the layer's output (GPT-2's residual dropout after the
        output projection). Inside a TransformerBlock the block's own dropout does this.
    init, out_init : initialiser, optional
        The in-projection's and the out-projection's weights (:mod:`xpnet.init`: a name,
        ``xn.init.normal(0.02)``, ``xn.init.scaled(...)``; ``out_init`` defaults to
        ``init``); biases start at zero. Default: PyTorch's.
    block_size : int
        The tile of the blockwise path and of the attention-dropout masks.
    blockwise : bool or None
        Attention in blocks of keys with an online softmax (flash attention's algorithm,
        in standard array calls): memory grows with ``L``, not ``L^2``: no ``(N, H, L,
        L)`` array is ever made, forward or backward (which recomputes each block's
        scores). None (default): for sequences longer than :data:`BLOCKWISE_ABOVE`;
        True or False forces it. Both paths compute the same function.
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
                 bias: bool = True, attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 init: str | dict | Callable | None = None,
                 out_init: str | dict | Callable | None = None,
                 block_size: int = 128, blockwise: bool | None = None,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        who = "MultiHeadAttention"
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.num_heads = _args.integer(num_heads, "num_heads", who, minimum=1)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{who}: embed_dim must be divisible by num_heads, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        self.causal, self.use_bias = _flag(causal, "causal", who), _flag(bias, "bias", who)
        self.attn_dropout = _probability(attn_dropout, "attn_dropout", who)
        self.resid_dropout = _probability(resid_dropout, "resid_dropout", who)
        self.init, self.out_init = _init(init, who), _init(out_init, who)
        self.block_size = _args.integer(block_size, "block_size", who, minimum=1)
        if blockwise is not None:
            _flag(blockwise, "blockwise", who)
        self.blockwise = blockwise
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
        w_in = ((lambda s: rng.uniform(-a, a, size=s)) if self.init is None else
                (lambda s: initializers.draw(self.init, s, False, rng)[0]))
        out = self.out_init if self.out_init is not None else self.init
        w_out = ((lambda s: rng.uniform(-k, k, size=s)) if out is None else
                 (lambda s: initializers.draw(out, s, False, rng)[0]))
        # made in PyTorch's order, the two weights drawn in turn, the biases zeros
        self.in_proj_weight = make("in_proj_weight", w_in)
        self.in_proj_bias = make("in_proj_bias", np.zeros)
        self.out_weight = make("out_proj.weight", w_out)
        self.out_bias = make("out_proj.bias", np.zeros)
        self._cache: Any = None

    # -- forward ------------------------------------------------------------------------
    def _blocks(self, length: int) -> list[tuple[int, int, int]]:
        """``(query tile, key tile, draw index)`` of every tile the scores need, row by
        row: all of them, or for a causal layer those on and below the diagonal."""
        count = -(-length // self.block_size)
        out = []
        for i in range(count):
            for j in range(i + 1 if self.causal else count):
                out.append((i, j, len(out)))
        return out

    def _uses_blocks(self, length: int) -> bool:
        return self.blockwise if self.blockwise is not None else length > BLOCKWISE_ABOVE

    def _project(self, xp: Any, x: Any) -> tuple[Any, Any, Any, Any]:
        """``x (N, L, E)``, checked against the weights -> its rows ``(N L, E)`` and the
        scaled queries, keys and values, ``(N, H, L, d)`` each: views of one product."""
        w_in = self.in_proj_weight.value
        _check_sequence(self, x, w_in, self.embed_dim)
        n, length, e = x.shape
        h = self.num_heads
        d = e // h
        x2 = xp.reshape(x, (n * length, e))
        bias = None if self.in_proj_bias is None else self.in_proj_bias.value
        qkv = ops(xp).linear(xp, x2, w_in, bias)
        qkv = xp.permute_dims(xp.reshape(qkv, (n, length, 3, h, d)), (2, 0, 3, 1, 4))
        return x2, qkv[0, ...] * (1.0 / math.sqrt(d)), qkv[1, ...], qkv[2, ...]

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xp = namespace(x)
        o = ops(xp)
        x2, q, k, v = self._project(xp, x)
        n, length, e = x.shape
        tiles = self._blocks(length)
        draw = None  # the attention-dropout masks: tile t is position t of a reservation
        if train and self.attn_dropout > 0:
            draw = random.current().reserve(len(tiles))
        if self._uses_blocks(length):
            heads, lse = self._blocks_forward(xp, q, k, v, tiles, draw)
            kept: Any = ("blocks", lse, draw)
        else:
            s = q @ xp.permute_dims(k, (0, 1, 3, 2))  # (N, H, L, L), a fresh array
            if self.causal:
                s += causal_mask(xp, length, s.dtype, device(x))
            s -= xp.max(s, axis=-1, keepdims=True)
            p = xp.exp(s)
            p /= xp.sum(p, axis=-1, keepdims=True)
            mask = None if draw is None else self._full_mask(xp, p, tiles, draw)
            heads = (p if mask is None else p * mask) @ v
            kept = ("full", p, mask)
        # heads joined back: (N, H, L, d) -> (N, L, H, d) -> (N L, E), one copy
        joined = xp.reshape(xp.permute_dims(heads, (0, 2, 1, 3)), (n * length, e))
        y = o.linear(xp, joined, self.out_weight.value,
                     None if self.out_bias is None else self.out_bias.value)
        out_mask = None
        if train and self.resid_dropout > 0:
            keep = random.current().uniform(y, tuple(y.shape)) >= self.resid_dropout
            out_mask = xp.astype(keep, y.dtype) * (1.0 / (1.0 - self.resid_dropout))
            y = y * out_mask
        self._cache = ((x2, q, k, v, joined, kept, out_mask, (n, length, e))
                       if train else None)
        return xp.reshape(y, (n, length, e))

    def _tile_mask(self, xp: Any, like: Any, shape: tuple[int, ...], draw: Any, t: int) -> Any:
        """Tile ``t``'s dropout mask: 0 or ``1 / (1 - p)``."""
        keep = draw(like, shape, t) >= self.attn_dropout
        return xp.astype(keep, like.dtype) * (1.0 / (1.0 - self.attn_dropout))

    def _full_mask(self, xp: Any, p: Any, tiles: list[tuple[int, int, int]], draw: Any
                   ) -> Any:
        """The ``(N, H, L, L)`` dropout mask of the plain path, from the tiles the
        blockwise path draws (zeros where a causal mask hides a whole tile)."""
        n, h, length, _ = p.shape
        b = self.block_size
        count = -(-length // b)
        rows = []
        for i in range(count):
            r = min(b, length - i * b)
            row = []
            for j in range(count):
                c = min(b, length - j * b)
                if self.causal and j > i:
                    row.append(xp.zeros((n, h, r, c), dtype=p.dtype, device=device(p)))
                else:
                    t = next(t for (ti, tj, t) in tiles if (ti, tj) == (i, j))
                    row.append(self._tile_mask(xp, p, (n, h, r, c), draw, t))
            rows.append(row[0] if count == 1 else xp.concat(row, axis=3))
        return rows[0] if count == 1 else xp.concat(rows, axis=2)

    def _tile_scores(self, xp: Any, qi: Any, kj: Any, i: int, j: int) -> Any:
        """``qi @ kj^T`` for tile ``(i, j)``, the causal mask added where the tile holds
        positions above the diagonal."""
        s = qi @ xp.permute_dims(kj, (0, 1, 3, 2))
        b = self.block_size
        if self.causal and (j + 1) * b - 1 > i * b:  # some key after some query
            rows = xp.arange(qi.shape[2], device=device(qi)) + i * b
            cols = xp.arange(kj.shape[2], device=device(qi)) + j * b
            s = s + xp.astype(cols[None, :] > rows[:, None], s.dtype) * (
                xp.finfo(s.dtype).min / 2)
        return s

    def _blocks_forward(self, xp: Any, q: Any, k: Any, v: Any,
                        tiles: list[tuple[int, int, int]], draw: Any) -> tuple[Any, Any]:
        """Attention one ``block_size`` tile of queries and keys at a time, with the
        online softmax of flash attention: per query tile, a running row maximum ``m``,
        sum ``l`` of ``exp(s - m)`` and output ``acc``, each rescaled by ``exp(m_old -
        m_new)`` as a new key tile raises the maximum. Returns the heads ``(N, H, L, d)``
        and the rows' log-sum-exp ``(N, H, L, 1)``, which backward uses to recompute each
        tile's probabilities."""
        b = self.block_size
        length = q.shape[2]
        outs, lses = [], []
        by_row: dict[int, list[tuple[int, int]]] = {}
        for i, j, t in tiles:
            by_row.setdefault(i, []).append((j, t))
        for i in sorted(by_row):
            qi = q[:, :, i * b:min((i + 1) * b, length), :]
            m = acc = total = None
            for j, t in by_row[i]:
                kj = k[:, :, j * b:min((j + 1) * b, length), :]
                vj = v[:, :, j * b:min((j + 1) * b, length), :]
                s = self._tile_scores(xp, qi, kj, i, j)
                top = xp.max(s, axis=-1, keepdims=True)
                m_new = top if m is None else xp.maximum(m, top)
                e = xp.exp(s - m_new)
                rows = xp.sum(e, axis=-1, keepdims=True)
                if draw is not None:
                    e = e * self._tile_mask(xp, e, tuple(e.shape), draw, t)
                if m is None:
                    total, acc = rows, e @ vj
                else:
                    scale = xp.exp(m - m_new)
                    total = total * scale + rows
                    acc = acc * scale + e @ vj
                m = m_new
            outs.append(acc / total)
            lses.append(m + xp.log(total))
        if len(outs) == 1:
            return outs[0], lses[0]
        return xp.concat(outs, axis=2), xp.concat(lses, axis=2)

    # -- backward -------------------------------------------------------------------------
    def _backward(self, dy: Any, need_input: bool) -> Any:
        x2, q, k, v, joined, kept, out_mask, (n, length, e) = self._require_cache(self._cache)
        xp = namespace(dy)
        o = ops(xp)
        h = self.num_heads
        d = e // h
        dy2 = xp.reshape(dy, (n * length, e))
        if out_mask is not None:
            dy2 = dy2 * xp.reshape(out_mask, (n * length, e))
        self.out_weight.accumulate(dy2.T @ joined)
        if self.out_bias is not None:
            self.out_bias.accumulate(o.sum_axes(xp, dy2, 0))
        # (N L, E) -> (N, H, L, d), a view
        d_out = xp.permute_dims(xp.reshape(dy2 @ self.out_weight.value, (n, length, h, d)),
                                (0, 2, 1, 3))
        if kept[0] == "blocks":
            heads = xp.permute_dims(xp.reshape(joined, (n, length, h, d)), (0, 2, 1, 3))
            dq, dk, dv = self._blocks_backward(xp, q, k, v, heads, d_out, kept[1], kept[2])
        else:
            p, mask = kept[1], kept[2]
            dropped = p if mask is None else p * mask
            dv = xp.permute_dims(dropped, (0, 1, 3, 2)) @ d_out
            ds = d_out @ xp.permute_dims(v, (0, 1, 3, 2))  # dP, then dS in place
            if mask is not None:
                ds = ds * mask
            ds -= xp.sum(ds * p, axis=-1, keepdims=True)
            ds *= p
            dq = ds @ k
            dk = xp.permute_dims(ds, (0, 1, 3, 2)) @ q
        dq *= 1.0 / math.sqrt(d)
        # (3, N, H, L, d) -> (N, L, 3, H, d) -> (N L, 3E): the rows of [dQ | dK | dV]
        dqkv = xp.reshape(xp.permute_dims(xp.stack([dq, dk, dv]), (1, 3, 0, 2, 4)),
                          (n * length, 3 * e))
        self.in_proj_weight.accumulate(dqkv.T @ x2)
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(o.sum_axes(xp, dqkv, 0))
        if not need_input:
            return None
        return xp.reshape(dqkv @ self.in_proj_weight.value, (n, length, e))

    def _blocks_backward(self, xp: Any, q: Any, k: Any, v: Any, heads: Any, d_out: Any,
                         lse: Any, draw: Any) -> tuple[Any, Any, Any]:
        """Flash attention's backward, tile by tile: each tile's probabilities recomputed
        from its scores and the rows' log-sum-exp (``P = exp(S - lse)``), its dropout
        mask drawn again, ``dS = P * (dP - D)`` with ``D = rowsum(dO * O)``; ``dQ``
        (unscaled), ``dK`` and ``dV`` summed over tiles."""
        b = self.block_size
        length = q.shape[2]
        tiles = self._blocks(length)
        count = -(-length // b)
        rows_d = xp.sum(d_out * heads, axis=-1, keepdims=True)  # D, (N, H, L, 1)
        dq: list[Any] = [None] * count
        dk: list[Any] = [None] * count
        dv: list[Any] = [None] * count

        def span(i: int) -> slice:
            return slice(i * b, min((i + 1) * b, length))

        for i, j, t in tiles:
            qi, kj, vj = q[:, :, span(i), :], k[:, :, span(j), :], v[:, :, span(j), :]
            doi = d_out[:, :, span(i), :]
            p = xp.exp(self._tile_scores(xp, qi, kj, i, j) - lse[:, :, span(i), :])
            mask = None if draw is None else self._tile_mask(xp, p, tuple(p.shape), draw, t)
            dropped = p if mask is None else p * mask
            add_v = xp.permute_dims(dropped, (0, 1, 3, 2)) @ doi
            dp = doi @ xp.permute_dims(vj, (0, 1, 3, 2))
            if mask is not None:
                dp = dp * mask
            ds = p * (dp - rows_d[:, :, span(i), :])
            add_q, add_k = ds @ kj, xp.permute_dims(ds, (0, 1, 3, 2)) @ qi
            dq[i] = add_q if dq[i] is None else dq[i] + add_q
            dk[j] = add_k if dk[j] is None else dk[j] + add_k
            dv[j] = add_v if dv[j] is None else dv[j] + add_v
        if count == 1:
            return dq[0], dk[0], dv[0]
        return xp.concat(dq, axis=2), xp.concat(dk, axis=2), xp.concat(dv, axis=2)

    def backward(self, dy: Any) -> Any:
        return self._backward(dy, True)

    def backward_params(self, dy: Any) -> None:
        self._backward(dy, False)

    # -- a few positions at a time, with the keys and values of the earlier ones -----------
    def decode(self, x: Any, state: Any) -> Any:
        """Inference on ``x (N, t, E)``, the positions after the ``state.position``
        earlier ones whose keys and values ``state.cache[self]`` holds (``(N, H, T,
        d)`` each, grown here by ``t``): the last ``t`` rows of ``forward`` on the whole
        sequence, at the cost of ``t`` positions. Causal layers only."""
        if not self.causal:
            raise ValueError(f"{self.label}: only causal attention can decode a few "
                             f"positions at a time (each would see later ones)")
        xp = namespace(x)
        o = ops(xp)
        _, q, k, v = self._project(xp, x)
        n, t, e = x.shape
        past = state.cache.get(self)
        if past is not None:
            k, v = xp.concat([past[0], k], axis=2), xp.concat([past[1], v], axis=2)
        state.cache[self] = (k, v)
        s = q @ xp.permute_dims(k, (0, 1, 3, 2))  # (N, H, t, T)
        if t > 1:
            rows = xp.arange(t, device=device(x)) + state.position
            cols = xp.arange(k.shape[2], device=device(x))
            s = s + xp.astype(cols[None, :] > rows[:, None], s.dtype) * (
                xp.finfo(s.dtype).min / 2)
        s = s - xp.max(s, axis=-1, keepdims=True)
        p = xp.exp(s)
        p = p / xp.sum(p, axis=-1, keepdims=True)
        joined = xp.reshape(xp.permute_dims(p @ v, (0, 2, 1, 3)), (n * t, e))
        y = o.linear(xp, joined, self.out_weight.value,
                     None if self.out_bias is None else self.out_bias.value)
        return xp.reshape(y, (n, t, e))

    def get_config(self) -> dict[str, Any]:
        config = {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                  "causal": self.causal, "bias": self.use_bias}
        # the later settings are named only when not their default, so the descriptions
        # of models without them stay as they were
        for key, value, default in (("attn_dropout", self.attn_dropout, 0.0),
                                    ("resid_dropout", self.resid_dropout, 0.0),
                                    ("init", self.init, None),
                                    ("out_init", self.out_init, None),
                                    ("block_size", self.block_size, 128),
                                    ("blockwise", self.blockwise, None)):
            if value != default:
                config[key] = initializers.config_of(value)
        return {**config, "dtype": self.dtype}

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


def _probability(value: Any, what: str, who: str) -> float:
    return _args.real(value, what, who, low=0.0, high=1.0, high_open=True)


def _init(value: Any, who: str) -> Any:
    """An ``init`` argument resolved (None stays None: the layer's own default)."""
    if value is None:
        return None
    try:
        return initializers.resolve(value)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None


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
    (max_len, E)``, initialised ``N(0, 0.02)`` (GPT-2's) unless ``init`` (an
    initialiser of :mod:`xpnet.init`) says otherwise.
    """

    def __init__(self, max_len: int, embed_dim: int, *,
                 init: str | dict | Callable | None = None,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        who = "PositionalEmbedding"
        self.max_len = _args.integer(max_len, "max_len", who, minimum=1)
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.init = _init(init, who)
        self.dtype = _args.float_dtype(dtype, who)
        shape = self.param_shapes(self.get_config())["weight"]
        rng = random.current().host
        host = (rng.normal(0.0, 0.02, size=shape) if self.init is None else
                initializers.draw(self.init, shape, False, rng)[0])
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

    def decode(self, x: Any, state: Any) -> Any:
        """``x (N, t, E)`` at positions ``state.position`` onwards: ``x + W[pos:pos+t]``."""
        w = self.weight.value
        _check_sequence(self, x, w, self.embed_dim)
        start, t = state.position, x.shape[1]
        if start + t > self.max_len:
            raise ValueError(f"{self.label}: positions {start} to {start + t - 1} are past "
                             f"the last of {self.max_len}")
        return x + w[start:start + t, :]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"max_len": self.max_len, "embed_dim": self.embed_dim}
        if self.init is not None:
            config["init"] = initializers.config_of(self.init)
        return {**config, "dtype": self.dtype}

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
    ``state_dict()``, and in inference (or with no dropout) both compute the same
    function.

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
        The residual dropout (GPT-2's ``resid_pdrop``): in training, ``Dropout(dropout)``
        on the attention output and on the MLP output, each before its residual add.
    attn_dropout : float
        In training, dropout on the attention weights (inside ``self_attn``; GPT-2's
        ``attn_pdrop``, PyTorch's ``MultiheadAttention(dropout=)``).
    resid_dropout : float, optional
        Another name for ``dropout`` (which it replaces when given).
    init, resid_init : initialiser, optional
        The weights of the attention's in-projection and ``linear1``, and of the two
        projections into the residual stream (the attention's out-projection and
        ``linear2``; default ``init``), from :mod:`xpnet.init`. GPT-2's:
        ``init=xn.init.normal(0.02)``, ``resid_init=xn.init.scaled(xn.init.normal(0.02),
        1 / math.sqrt(2 * n_layers))``; biases then start at zero. Default: PyTorch's.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Notes
    -----
    PyTorch's layer with ``dropout=p`` drops the attention weights, both residual
    branches and the MLP's hidden activations, all with ``p``; here the MLP's hidden
    activations are never dropped (as in GPT-2), so in training the two differ unless
    ``dropout = attn_dropout = 0``.

    Shapes
    ------
    input ``(N, L, E)``, output ``(N, L, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4,
                 causal: bool = False, dropout: float = 0.0, *, attn_dropout: float = 0.0,
                 resid_dropout: float | None = None,
                 init: str | dict | Callable | None = None,
                 resid_init: str | dict | Callable | None = None,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        who = "TransformerBlock"
        self.embed_dim = _args.integer(embed_dim, "embed_dim", who, minimum=1)
        self.num_heads = _args.integer(num_heads, "num_heads", who, minimum=1)
        self.mlp_ratio = _args.integer(mlp_ratio, "mlp_ratio", who, minimum=1)
        self.causal = _flag(causal, "causal", who)
        if resid_dropout is not None:
            dropout = resid_dropout
        self.dropout = _probability(dropout, "dropout", who)
        self.attn_dropout = _probability(attn_dropout, "attn_dropout", who)
        self.init, self.resid_init = _init(init, who), _init(resid_init, who)
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
        init, resid = config.get("init"), config.get("resid_init")
        resid = init if resid is None else resid
        attn: dict[str, Any] = {"embed_dim": e, "num_heads": config["num_heads"],
                                "causal": config.get("causal", False)}
        if config.get("attn_dropout", 0.0):
            attn["attn_dropout"] = config["attn_dropout"]
        if init is not None:
            attn["init"] = init
        if resid is not None:
            attn["out_init"] = resid

        def linear(n_in: int, n_out: int, weights: Any) -> dict[str, Any]:
            spec = {"in_features": n_in, "out_features": n_out, "dtype": dtype}
            return spec if weights is None else {**spec, "init": weights}

        return [("self_attn", MultiHeadAttention, {**attn, "dtype": dtype}),
                ("linear1", Linear, linear(e, hidden, init)),
                ("linear2", Linear, linear(hidden, e, resid)),
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

    def decode(self, x: Any, state: Any) -> Any:
        """Inference on new positions, the attention reading its cached keys and values
        (see ``MultiHeadAttention.decode``)."""
        _check_shape(self, x, self.embed_dim)
        x = x + self.self_attn.decode(self.norm1.forward(x, train=False), state)
        h = self.linear1.forward(self.norm2.forward(x, train=False), train=False)
        return x + self.linear2.forward(self.activation.forward(h, train=False), train=False)

    def get_config(self) -> dict[str, Any]:
        config = {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                  "mlp_ratio": self.mlp_ratio, "causal": self.causal, "dropout": self.dropout}
        # the later settings are named only when not their default (earlier descriptions
        # stay as they were)
        for key, value, default in (("attn_dropout", self.attn_dropout, 0.0),
                                    ("init", self.init, None),
                                    ("resid_init", self.resid_init, None)):
            if value != default:
                config[key] = initializers.config_of(value)
        return {**config, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Its sub-layers' arrays, each prefixed with the sub-layer's attribute
        (``self_attn.in_proj_weight``, ``linear1.weight``...), in PyTorch's order."""
        return {f"{attr}.{pname}": shape for attr, kind, sub in cls._sublayers(config)
                for pname, shape in kind.param_shapes(sub).items()}
