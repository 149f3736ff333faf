"""Recurrent layers on batch-first sequences ``(N, L, F)``: GRU and LSTM, one layer,
optionally bidirectional, with PyTorch's parameter names, layouts, gate order and
equations (``torch.nn.GRU/LSTM(F, H, batch_first=True)``), so ``state_dict`` and
``load_state_dict`` exchange weights with it.

One direction runs over ``t = 0 .. L-1``; the ``_reverse`` one runs the same code
over ``t = L-1 .. 0`` (it takes the steps in the other order, no flipped copy). Both
start from zero states. With ``x_t`` the ``(N, F)`` inputs at step ``t``, ``h`` the
previous hidden state ``(N, H)``, and ``*`` element-wise:

GRU (gates r, z, n; ``W_ih (3H, F)``, ``W_hh (3H, H)``, biases ``(3H,)``)::

    forward   [a_r | a_z | a_n] = x_t @ W_ih.T + b_ih + [b_hr | b_hz | 0]
                                  for all steps at once, before the loop
              [g_r | g_z | g_n] = h @ W_hh.T + [0 | 0 | b_hn]    one matmul per step
              r = sigmoid(a_r + g_r),  z = sigmoid(a_z + g_z)
              n = tanh(a_n + r * g_n)
              h' = (1 - z) * n + z * h  =  n + z * (h - n)
    kept      per step: r and z, n, g_n, h - n, and the outputs h (training only)

LSTM (gates i, f, g, o; ``W_ih (4H, F)``, ``W_hh (4H, H)``, biases ``(4H,)``)::

    forward   a = x_t @ W_ih.T + b_ih + b_hh  (all steps at once)  + h @ W_hh.T
              i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o),  g = tanh(a_g)
              c' = f * c + i * g,  h' = o * tanh(c')
    kept      per step: the sigmoids i, f, o, then g, c' and tanh(c'), and the
              outputs h (training only)

Backprop through time (BPTT) runs the steps in the reverse order of the forward
pass, for every example at once. ``dh`` is ``dC/dh'`` at a step: the output's
gradient ``dy_t`` (for ``return_sequences``; otherwise only the last step gets ``dy``)
plus what the next step sent back. The delta of each gate is ``dC`` by its
pre-activation (its ``a``, before the nonlinearity); ``sigmoid' = s (1 - s)``,
``tanh' = 1 - tanh^2``.

GRU, at one step (the chain rule through ``h' = (1 - z) n + z h``, then through
``n = tanh(a_n + r g_n)``)::

    delta_n = dh * (1 - z) * (1 - n^2)
    delta_z = dh * (h - n) * z (1 - z)
    delta_r = delta_n * g_n * r (1 - r)
    delta_gn = delta_n * r                               (dC/dg_n)
    dh_prev = dh * z + [delta_r | delta_z | delta_gn] @ W_hh

LSTM, at one step (``dc`` also carries ``dC/dc'`` from the next step)::

    dc = dc_next + dh * o * (1 - tanh(c')^2)
    delta_i = dc * g * i (1 - i),  delta_f = dc * c * f (1 - f)
    delta_g = dc * i * (1 - g^2),  delta_o = dh * tanh(c') * o (1 - o)
    dh_prev = [delta_i | delta_f | delta_g | delta_o] @ W_hh,  dc_prev = dc * f

Every factor that does not depend on ``dh`` (``(1 - z) (1 - n^2)``, ``g_n r (1 - r)``...)
is computed for all steps at once before the loop, so a step costs a few element-wise
products and one matmul. The weights' gradients sum over steps and examples, each as
ONE matmul after the loop on the deltas of all steps stacked as ``(L N, G H)`` rows::

    dW_hh = sum_t delta_hh_t.T @ h_prev_t     (delta_hh: GRU [delta_r|delta_z|delta_gn],
    db_hh = sum_t sum_rows delta_hh_t          LSTM the gate deltas; h_prev = 0 at the
                                                first step, which adds nothing)
    dW_ih = sum_t delta_ih_t.T @ x_t,  db_ih = sum_t sum_rows delta_ih_t
                                               (delta_ih: GRU [delta_r|delta_z|delta_n])
    dx_t  = delta_ih_t @ W_ih                  (the two directions' contributions add)

Inside, the arrays are the transposes of these, feature-major: ``h`` is ``(H, N)`` and
a step's gates ``(G H, N)``, so each gate is a contiguous block of rows and the
element-wise work runs on contiguous memory (about twice as fast on NumPy as slicing
the gates out of ``(N, G H)`` rows). No step reads a value back to the host: loop
bounds come from the input's shape.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _args, random
from .._compat import device, namespace
from ..backend import Backend, resolve
from ..backends import ops
from .base import Layer, check_like_parameters


def _flag(value: Any, what: str, who: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{who}: {what} must be True or False, got {value!r}")
    return value


class _Recurrent(Layer):
    """What GRU and LSTM share: arguments, parameters, input checks, both directions."""

    #: Gates stacked in the weights: 3 for GRU (r, z, n), 4 for LSTM (i, f, g, o).
    gates = 0

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 bidirectional: bool = False, return_sequences: bool = True,
                 dtype: str = "float32", backend: str | Backend | None = None,
                 device: str | None = None, name: str | None = None):
        super().__init__(name=name)
        who = type(self).__name__
        self.input_size = _args.integer(input_size, "input_size", who, minimum=1)
        self.hidden_size = _args.integer(hidden_size, "hidden_size", who, minimum=1)
        self.use_bias = _flag(bias, "bias", who)
        self.bidirectional = _flag(bidirectional, "bidirectional", who)
        self.return_sequences = _flag(return_sequences, "return_sequences", who)
        self.dtype = _args.float_dtype(dtype, who)
        be, rng = resolve(backend, device), random.current().host
        k = 1.0 / math.sqrt(self.hidden_size)
        # PyTorch's order (named_parameters): each direction's w_ih, w_hh, b_ih, b_hh
        for pname, shape in self.param_shapes(self.get_config()).items():
            param = self._new_parameter(pname, rng.uniform(-k, k, size=shape), dtype,
                                        backend=be)
            setattr(self, pname, param)
        self._cache: Any = None

    def _direction_params(self) -> list[tuple[Any, Any, Any, Any]]:
        """``(w_ih, w_hh, b_ih, b_hh)`` values of each direction (biases None without)."""
        out = []
        for suffix in ("", "_reverse")[:1 + self.bidirectional]:
            w_ih = getattr(self, f"weight_ih_l0{suffix}").value
            w_hh = getattr(self, f"weight_hh_l0{suffix}").value
            if self.use_bias:
                out.append((w_ih, w_hh, getattr(self, f"bias_ih_l0{suffix}").value,
                            getattr(self, f"bias_hh_l0{suffix}").value))
            else:
                out.append((w_ih, w_hh, None, None))
        return out

    def _direction_grads(self, d: int) -> tuple[Any, ...]:
        suffix = "_reverse" if d else ""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[:4 if self.use_bias else 2]
        return tuple(getattr(self, f"{n}_l0{suffix}") for n in names)

    def _check_input(self, x: Any, w: Any) -> None:
        f = self.input_size
        if x.ndim != 3 or x.shape[2] != f or x.shape[1] < 1:
            raise ValueError(f"{self.label}: expected input of shape (N, L, {f}) with L >= 1 "
                             f"(batch first), got {tuple(x.shape)}")
        check_like_parameters(self, x, w)

    # -- the two passes -------------------------------------------------------------
    # Inside, states are feature-major, ``(H, N)`` per step: each gate of the stacked
    # ``(G H, N)`` pre-activations is then a contiguous block of rows, so the
    # element-wise work of a step runs on contiguous memory.
    def forward(self, x: Any, *, train: bool = True) -> Any:
        params = self._direction_params()
        self._check_input(x, params[0][0])
        xp = namespace(x)
        o = ops(xp)
        n, length, _ = x.shape
        hid, width = self.hidden_size, self.gates * self.hidden_size
        xt = xp.permute_dims(x, (1, 2, 0))  # (L, F, N), a view
        zeros = xp.zeros((hid, n), dtype=x.dtype, device=device(x))
        keep = train or self.return_sequences
        outs, caches = [], []
        for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(params):
            gi = w_ih @ xt  # (L, G H, N): every step's input part in one (batched) matmul
            b = self._input_bias(xp, b_ih, b_hh)
            if b is not None:
                gi = gi + xp.reshape(b, (width, 1))
            steps = range(length - 1, -1, -1) if d else range(length)
            h, hs, kept = self._scan(xp, o, gi, zeros, w_hh, b_hh, steps, keep, train)
            if d:  # back to time order
                hs = hs[::-1]
                kept = tuple(k[::-1] for k in kept)
            outs.append(xp.stack(hs) if self.return_sequences else h)  # (L, H, N) or (H, N)
            caches.append((hs, kept))
        self._cache = (x, caches) if train else None
        y = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-2)
        return xp.permute_dims(y, (2, 0, 1)) if self.return_sequences else y.T

    def _backward(self, dy: Any, need_input: bool) -> Any:
        x, caches = self._require_cache(self._cache)
        xp = namespace(dy)
        n, length, f = x.shape
        hid, width = self.hidden_size, self.gates * self.hidden_size
        rows = length * n
        # the input as time-major columns (F, L N), matching the deltas' columns below
        xc = xp.reshape(xp.permute_dims(x, (2, 1, 0)), (f, rows))
        dyt = xp.permute_dims(dy, (1, 2, 0)) if self.return_sequences else dy.T  # (L, DH, N)
        dx = None
        for d, (w_ih, w_hh, _, _) in enumerate(self._direction_params()):
            hs, kept = caches[d]
            if self.return_sequences:  # this direction's part, contiguous: (L, H, N)
                dy_d = xp.reshape(dyt[:, d * hid:(d + 1) * hid, :], (length, hid, n),
                                  copy=True)
            else:
                dy_d = dyt[d * hid:(d + 1) * hid, :]  # (H, N)
            steps = range(length) if d else range(length - 1, -1, -1)
            # (L, G H, N) deltas in time order: of the input side, and of the h @ W_hh.T side
            d_ih, d_hh = self._bptt(xp, kept, dy_d, w_hh, steps)
            d_cols = xp.reshape(xp.permute_dims(d_ih, (1, 0, 2)), (width, rows))
            grads = self._direction_grads(d)
            grads[0].accumulate(d_cols @ xc.T)
            if length > 1:  # h_prev is the zero state at each direction's first step
                h_prev = xp.stack(hs[:-1] if d == 0 else hs[1:])  # (L-1, H, N)
                d_step = d_hh[1:, ...] if d == 0 else d_hh[:-1, ...]
                cols = (length - 1) * n
                grads[1].accumulate(
                    xp.reshape(xp.permute_dims(d_step, (1, 0, 2)), (width, cols))
                    @ xp.reshape(xp.permute_dims(h_prev, (0, 2, 1)), (cols, hid)))
            else:
                grads[1].accumulate(xp.zeros_like(w_hh))
            if self.use_bias:
                o = ops(xp)
                grads[2].accumulate(o.sum_axes(xp, d_cols, 1))
                grads[3].accumulate(o.sum_axes(xp, d_hh, (0, 2)))
            if need_input:
                part = w_ih.T @ d_cols  # (F, L N)
                dx = part if dx is None else dx + part
        if not need_input:
            return None
        return xp.permute_dims(xp.reshape(dx, (f, length, n)), (2, 1, 0))

    def backward(self, dy: Any) -> Any:
        return self._backward(dy, True)

    def backward_params(self, dy: Any) -> None:
        self._backward(dy, False)

    # -- per cell type ------------------------------------------------------------------
    def _input_bias(self, xp: Any, b_ih: Any, b_hh: Any) -> Any:
        """The bias added to the input projections of all steps at once."""
        return b_ih

    def _scan(self, xp: Any, o: Any, gi: Any, zeros: Any, w_hh: Any, b_hh: Any,
              steps: range, keep: bool, train: bool) -> tuple[Any, list[Any], tuple]:
        """Run one direction over ``gi`` ``(L, G H, N)``: ``(last h, [h per step],
        kept lists)``, states ``(H, N)``, lists in step order."""
        raise NotImplementedError

    def _bptt(self, xp: Any, kept: tuple, dy: Any, w_hh: Any, steps: range
              ) -> tuple[Any, Any]:
        """``(delta_ih, delta_hh)``, each ``(L, G H, N)`` in time order; ``dy`` is
        ``(L, H, N)`` (sequences) or ``(H, N)`` (the last step's only)."""
        raise NotImplementedError

    # -- description -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.use_bias, "bidirectional": self.bidirectional,
                "return_sequences": self.return_sequences, "dtype": self.dtype}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shapes of the parameters the layer ``config`` describes would hold, in
        PyTorch's order, without making it (checkpoints check them before allocating)::

            weight_ih_l0 (G H, F), weight_hh_l0 (G H, H), bias_ih_l0 (G H,),
            bias_hh_l0 (G H,), then the same with ``_reverse`` when bidirectional

        with ``G`` = 3 (GRU) or 4 (LSTM); no biases when ``bias`` is false.
        """
        f, h = config["input_size"], config["hidden_size"]
        g = cls.gates * h
        shapes: dict[str, tuple[int, ...]] = {}
        for suffix in ("", "_reverse")[:1 + bool(config.get("bidirectional", False))]:
            shapes[f"weight_ih_l0{suffix}"] = (g, f)
            shapes[f"weight_hh_l0{suffix}"] = (g, h)
            if config.get("bias", True):
                shapes[f"bias_ih_l0{suffix}"] = (g,)
                shapes[f"bias_hh_l0{suffix}"] = (g,)
        return shapes


class GRU(_Recurrent):
    """Gated recurrent unit over batch-first sequences, as ``torch.nn.GRU(input_size,
    hidden_size, batch_first=True, bidirectional=...)`` (one layer, zero initial state).

    At each step, with PyTorch's gate order (r, z, n)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Parameters
    ----------
    input_size : int
        ``F``, the features per position.
    hidden_size : int
        ``H``, the width of the hidden state.
    bias : bool
        Whether the gates add the biases ``b_ih`` and ``b_hh``.
    bidirectional : bool
        Also run a second GRU from the last position to the first (the ``_reverse``
        parameters); its outputs follow the forward one's on the last axis.
    return_sequences : bool
        Output the hidden state at every position (default), or only the final one
        (forward direction's after position ``L-1``, then the reverse one's after
        position 0: PyTorch's ``h_n`` joined).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Shapes
    ------
    input ``(N, L, F)``; output ``(N, L, D H)`` with ``return_sequences``, else
    ``(N, D H)``; ``D`` = 2 when bidirectional, else 1. Parameters, in PyTorch's
    order: ``weight_ih_l0 (3H, F)``, ``weight_hh_l0 (3H, H)``, ``bias_ih_l0 (3H,)``,
    ``bias_hh_l0 (3H,)`` (rows r, z, n), then the ``_reverse`` ones; all drawn from
    ``U(-1/sqrt(H), 1/sqrt(H))`` as PyTorch does.
    """

    gates = 3

    def _input_bias(self, xp, b_ih, b_hh):
        """``b_ih + [b_hr | b_hz | 0]``: only ``b_hn`` must wait for the step (``r``
        multiplies it)."""
        if b_ih is None:
            return None
        two = 2 * self.hidden_size
        return b_ih + xp.concat([b_hh[:two], xp.zeros_like(b_hh[two:])])

    def _scan(self, xp, o, gi, zeros, w_hh, b_hh, steps, keep, train):
        hid = self.hidden_size
        two = 2 * hid
        b_hn = None if b_hh is None else xp.reshape(b_hh[two:], (hid, 1))
        # each step's input parts, split once for all steps: no indexing inside the loop
        gi_rz, gi_n = xp.unstack(gi[:, :two, :]), xp.unstack(gi[:, two:, :])
        h = zeros
        hs: list[Any] = []
        rzs: list[Any] = []
        ns: list[Any] = []
        ghns: list[Any] = []
        hmns: list[Any] = []
        for t in steps:
            gh = w_hh @ h  # (3H, N): the one matmul of the step
            rz = o.sigmoid(xp, gi_rz[t] + gh[:two, :])  # b_hr, b_hz are in gi_rz
            ghn = gh[two:, :] if b_hn is None else gh[two:, :] + b_hn
            n = xp.tanh(gi_n[t] + rz[:hid, :] * ghn)
            hmn = h - n
            h = n + rz[hid:, :] * hmn
            if keep:
                hs.append(h)
            if train:
                rzs.append(rz)
                ns.append(n)
                ghns.append(ghn)
                hmns.append(hmn)
        return h, hs, (rzs, ns, ghns, hmns)

    def _bptt(self, xp, kept, dy, w_hh, steps):
        hid = self.hidden_size
        rz, n, ghn, hmn = (xp.stack(k) for k in kept)  # (L, ., N) in time order
        drz = rz * (1.0 - rz)  # sigmoid' of r and z
        r, z = rz[:, :hid, :], rz[:, hid:, :]
        a_n = (1.0 - z) * (1.0 - n * n)  # delta_n = dh * a_n
        # delta_hh = [dh; dh; dh] * [a_n g_n r (1 - r); (h - n) z (1 - z); a_n r]
        coefs = xp.unstack(xp.concat([a_n * (ghn * drz[:, :hid, :]), hmn * drz[:, hid:, :],
                                      a_n * r], axis=1))
        zs = xp.unstack(z)
        w_t = w_hh.T
        dys = xp.unstack(dy) if dy.ndim == 3 else None
        carry = None if dys is not None else dy
        dhs: list[Any] = []
        deltas: list[Any] = []
        last = steps[-1]
        for t in steps:
            if dys is None:
                dh = carry
            else:
                dh = dys[t] if carry is None else carry + dys[t]
            delta = xp.concat([dh, dh, dh]) * coefs[t]  # (3H, N)
            dhs.append(dh)
            deltas.append(delta)
            if t != last:  # the first step's h_prev is the zero state: nothing to send
                carry = dh * zs[t] + w_t @ delta
        if steps.step < 0:  # collected from the last step down: back to time order
            dhs, deltas = dhs[::-1], deltas[::-1]
        d_hh = xp.stack(deltas)  # (L, 3H, N)
        # the input side differs only in n's delta: dh * a_n instead of dh * a_n * r
        d_ih = xp.concat([d_hh[:, :2 * hid, :], xp.stack(dhs) * a_n], axis=1)
        return d_ih, d_hh


class LSTM(_Recurrent):
    """Long short-term memory over batch-first sequences, as ``torch.nn.LSTM(input_size,
    hidden_size, batch_first=True, bidirectional=...)`` (one layer, zero initial states,
    no projection).

    At each step, with PyTorch's gate order (i, f, g, o)::

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    Parameters
    ----------
    input_size : int
        ``F``, the features per position.
    hidden_size : int
        ``H``, the width of the hidden and cell states.
    bias : bool
        Whether the gates add the biases ``b_ih`` and ``b_hh``.
    bidirectional : bool
        Also run a second LSTM from the last position to the first (the ``_reverse``
        parameters); its outputs follow the forward one's on the last axis.
    return_sequences : bool
        Output the hidden state at every position (default), or only the final one
        (forward direction's after position ``L-1``, then the reverse one's after
        position 0: PyTorch's ``h_n`` joined).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend, device : optional
        Where the parameters live (default: the current backend).

    Shapes
    ------
    input ``(N, L, F)``; output ``(N, L, D H)`` with ``return_sequences``, else
    ``(N, D H)``; ``D`` = 2 when bidirectional, else 1. Parameters, in PyTorch's
    order: ``weight_ih_l0 (4H, F)``, ``weight_hh_l0 (4H, H)``, ``bias_ih_l0 (4H,)``,
    ``bias_hh_l0 (4H,)`` (rows i, f, g, o), then the ``_reverse`` ones; all drawn from
    ``U(-1/sqrt(H), 1/sqrt(H))`` as PyTorch does.
    """

    gates = 4

    def _input_bias(self, xp, b_ih, b_hh):
        return None if b_ih is None else b_ih + b_hh  # both enter the same sum

    def _scan(self, xp, o, gi, zeros, w_hh, b_hh, steps, keep, train):
        hid = self.hidden_size
        gis = xp.unstack(gi)
        h = c = zeros
        first = True
        hs: list[Any] = []
        ss: list[Any] = []
        gs: list[Any] = []
        cs: list[Any] = []
        tcs: list[Any] = []
        for t in steps:
            a = gis[t] + w_hh @ h  # (4H, N): the one matmul of the step
            s = o.sigmoid(xp, a)  # i, f, (unused), o
            g = xp.tanh(a[2 * hid:3 * hid, :])
            c = s[:hid, :] * g if first else s[hid:2 * hid, :] * c + s[:hid, :] * g
            first = False
            tc = xp.tanh(c)
            h = s[3 * hid:, :] * tc
            if keep:
                hs.append(h)
            if train:
                ss.append(s)
                gs.append(g)
                cs.append(c)
                tcs.append(tc)
        return h, hs, (ss, gs, cs, tcs)

    def _bptt(self, xp, kept, dy, w_hh, steps):
        hid = self.hidden_size
        s, g, c, tc = (xp.stack(k) for k in kept)  # (L, ., N) in time order
        ds = s * (1.0 - s)
        zero = xp.zeros_like(c[:1, ...])
        # c before each step, in time order (zero where each direction starts)
        c_prev = (xp.concat([zero, c[:-1, ...]]) if steps.step < 0
                  else xp.concat([c[1:, ...], zero]))
        i, f, o = s[:, :hid, :], s[:, hid:2 * hid, :], s[:, 3 * hid:, :]
        dc_from_h = xp.unstack(o * (1.0 - tc * tc))  # dc += dh * this
        # [delta_i; delta_f; delta_g; delta_o] = [dc; dc; dc; dh] * coef
        coefs = xp.unstack(xp.concat([g * ds[:, :hid, :], c_prev * ds[:, hid:2 * hid, :],
                                      i * (1.0 - g * g), tc * ds[:, 3 * hid:, :]], axis=1))
        fs = xp.unstack(f)
        w_t = w_hh.T
        dys = xp.unstack(dy) if dy.ndim == 3 else None
        carry_h = None if dys is not None else dy
        carry_c = None
        deltas: list[Any] = []
        last = steps[-1]
        for t in steps:
            if dys is None:
                dh = carry_h
            else:
                dh = dys[t] if carry_h is None else carry_h + dys[t]
            dc = dh * dc_from_h[t] if carry_c is None else carry_c + dh * dc_from_h[t]
            delta = xp.concat([dc, dc, dc, dh]) * coefs[t]  # (4H, N)
            deltas.append(delta)
            if t != last:  # the first step's states are zeros: nothing to send
                carry_h = w_t @ delta
                carry_c = dc * fs[t]
        if steps.step < 0:
            deltas = deltas[::-1]
        d = xp.stack(deltas)
        return d, d
