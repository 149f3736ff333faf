"""Sampling from a language model on its device: ``xn.generate``.

A model that maps ids ``(N, L)`` to next-token logits ``(N, L, V)`` (``xn.models.gpt``,
``xn.models.transformer`` with ``causal=True``) continues a prompt one token at a time.
With ``use_cache=True`` (the default) each new token costs one position: the model is
run through ``Layer.decode`` on the newest token only, every causal attention layer
reading the keys and values of the earlier positions from a cache it grows by one
(``MultiHeadAttention.decode``), positions counted by a :class:`DecodeState`. Without
the cache the whole window is run again for every token; both give the same tokens.

The next token is drawn on the device, from the random stream of ``seed`` (one uniform
draw per row and token, the inverse of the softmax's cumulative sum), after dividing the
logits by ``temperature`` and keeping the ``top_k`` largest (nanoGPT's rule: logits
below the k-th largest are dropped). ``temperature=0`` is greedy decoding (the argmax).
No token is read back to the host until the end.

Models with learned positions (``PositionalEmbedding``) see at most their ``max_len``
positions (the context). A prompt longer than the context is cut to its last
``context`` tokens; when the window is full, the model keeps its newest ``context //
2`` tokens and goes on from them (the cache is rebuilt from those): each token costs one
position on average still, where sliding the window by one would rerun the whole window
for every token (learned positions shift with it). Both paths follow this rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _args, random
from .backend import backend_of
from .layers.attention import PositionalEmbedding
from .layers.base import Layer


class DecodeState:
    """What a cached decode carries between calls: ``position``, the number of
    positions the model has seen, and ``cache``, each attention layer's keys and values
    (``{layer: (K, V)}``, ``(N, H, position, d)`` each)."""

    def __init__(self) -> None:
        self.position = 0
        self.cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"DecodeState(position={self.position}, layers={len(self.cache)})"


def context_of(model: Layer) -> int | None:
    """The longest sequence ``model`` takes: its PositionalEmbedding's ``max_len``
    (the smallest if there are several), None when nothing bounds it."""
    lengths = [layer.max_len for layer in model.layers()
               if isinstance(layer, PositionalEmbedding)]
    return min(lengths) if lengths else None


def generate(model: Layer, prompt_ids: Any, max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
             use_cache: bool = True, context: int | None = None) -> Any:
    """Continue ``prompt_ids`` by ``max_new_tokens`` tokens sampled from ``model``.

    Parameters
    ----------
    model : Layer
        Ids ``(N, L)`` to logits ``(N, L, V)``: a causal language model.
    prompt_ids : array or list of ints, ``(L,)`` or ``(N, L)``
        Host ids (NumPy, a list) or ids already on the model's backend.
    max_new_tokens : int
        How many tokens to add.
    temperature : float >= 0
        Logits are divided by it before sampling; 0 picks the most likely token.
    top_k : int, optional
        Sample among the ``top_k`` most likely tokens only (1: greedy).
    seed : int
        Seeds the draws (a stream of its own: the same seed gives the same tokens).
    use_cache : bool
        Run one position per token with cached keys and values (see the module
        docstring); False runs the whole window each time. The tokens are the same.
    context : int, optional
        The longest window the model is run on (default: its PositionalEmbedding's
        ``max_len``, else unbounded).

    Returns
    -------
    array of int64, ``(N, L + max_new_tokens)`` (``(L + max_new_tokens,)`` for a 1-D
    prompt) on the model's backend and device: the prompt and what follows it.
    """
    who = "generate"
    new = _args.integer(max_new_tokens, "max_new_tokens", who, minimum=0)
    temperature = _args.real(temperature, "temperature", who, low=0.0)
    if top_k is not None:
        top_k = _args.integer(top_k, "top_k", who, minimum=1)
    context = context_of(model) if context is None else _args.integer(
        context, "context", who, minimum=1)
    be = model.backend
    xp = be.xp
    flat = False
    if isinstance(prompt_ids, (list, tuple, np.ndarray)):
        host = np.asarray(prompt_ids)
        flat = host.ndim == 1
        ids = be.asarray(host[None, :] if flat else host, dtype="int64")
    else:
        if backend_of(prompt_ids) != be:
            raise TypeError(f"{who}: prompt_ids are on {backend_of(prompt_ids)}, the model "
                            f"on {be}; pass host ids or move them")
        flat = prompt_ids.ndim == 1
        ids = xp.astype(prompt_ids[None, :] if flat else prompt_ids, xp.int64)
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"{who}: prompt_ids must hold at least one id, as (L,) or (N, L), "
                         f"got shape {tuple(ids.shape)}")
    start = 0 if context is None else max(0, ids.shape[1] - context)
    state: DecodeState | None = None
    stream = random.RandomStream(seed)
    with stream.active():
        for _ in range(new):
            length = ids.shape[1]
            if context is not None and length - start > context:
                start = length - max(1, context // 2)  # the window is full: go on from
                state = None                           # its newest half
            if not use_cache:
                logits = model.forward(ids[:, start:], train=False)
            elif state is None:  # the whole window once, filling the cache
                state = DecodeState()
                logits = model.decode(ids[:, start:], state)
                state.position = length - start
            else:
                logits = model.decode(ids[:, length - 1:], state)
                state.position += 1
            token = _sample(xp, logits[:, -1, :], temperature, top_k, stream)
            ids = xp.concat([ids, xp.reshape(token, (ids.shape[0], 1))], axis=1)
    return ids[0, :] if flat else ids


def _sample(xp: Any, logits: Any, temperature: float, top_k: int | None,
            stream: random.RandomStream) -> Any:
    """One id per row of ``logits (N, V)``, int64, on their device."""
    if temperature == 0.0:
        return xp.astype(xp.argmax(logits, axis=-1), xp.int64)
    z = logits / temperature
    vocab = z.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = xp.sort(z, axis=-1)[:, vocab - top_k:vocab - top_k + 1]  # the k-th largest
        z = xp.where(z < kth, xp.full_like(z, -math.inf), z)
    z = z - xp.max(z, axis=-1, keepdims=True)
    cdf = xp.cumulative_sum(xp.exp(z), axis=-1)
    u = stream.uniform(cdf, (z.shape[0], 1)) * cdf[:, -1:]
    # the first id whose cumulative sum passes u: ids of probability 0 are never taken
    picked = xp.sum(xp.astype(cdf <= u, xp.int64), axis=-1)
    return xp.minimum(picked, xp.full_like(picked, vocab - 1))
