"""Ready-made models: the MLPs of the digits example and MNIST-1D's reference models.

The MNIST-1D models follow the paper (Greydanus, 2020) and its reference code:
logistic regression, a residual MLP, and a three-layer 1-D CNN. Each weighted layer
is initialised for what follows it: He before a ReLU, Glorot otherwise.
``mnist1d_gru`` reads the 40 values as a sequence with a bidirectional GRU.
``transformer`` is a small causal language model (token and position embeddings,
pre-norm transformer blocks, logits per position); ``gpt`` the same as GPT-2 builds it
(its initialisation, dropout and tied output head).
"""

from __future__ import annotations

import math

from . import init
from .graph import Graph
from .layers import (
    GRU,
    Add,
    Conv1D,
    Dropout,
    Embedding,
    Flatten,
    Input,
    Layer,
    LayerNorm,
    Linear,
    PositionalEmbedding,
    ReLU,
    Reshape,
    Sequential,
    Sigmoid,
    Tanh,
    TransformerBlock,
)

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
#: The initialisation for a layer that this activation follows.
INIT_BEFORE = {"relu": "he", "sigmoid": "glorot", "tanh": "glorot"}


def mlp(n_in: int, hidden: list[int], n_out: int, activation: str = "relu") -> Sequential:
    """``Linear -> act`` for each hidden width, then a Linear to ``n_out`` logits."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected "
                         f"{', '.join(ACTIVATIONS)}")
    layers: list[Layer] = []
    width = n_in
    for h in hidden:
        layers += [Linear(width, h, init=INIT_BEFORE[activation]), ACTIVATIONS[activation]()]
        width = h
    return Sequential(*layers, Linear(width, n_out, init="glorot"))


def logistic(n_in: int, n_out: int) -> Sequential:
    """Multinomial logistic regression: one Linear layer to logits."""
    return Sequential(Linear(n_in, n_out, init="glorot"))


def residual_mlp(n_in: int = 40, hidden: int = 100, n_out: int = 10) -> Graph:
    """``h = relu(W1 x); h = h + relu(W2 h); W3 h``: a graph where ``h`` feeds two paths."""
    x = Input(shape=(n_in,))
    h = ReLU()(Linear(n_in, hidden, init="he")(x))
    h = Add()(h, ReLU()(Linear(hidden, hidden, init="he")(h)))
    return Graph(inputs=x, outputs=Linear(hidden, n_out, init="glorot")(h))


def mnist1d_cnn(length: int = 40, channels: int = 25, n_out: int = 10) -> Sequential:
    """Three Conv1D (kernels 5/3/3, stride 2, padding 1) with ReLU, flatten, Linear.

    Input ``(N, length)`` is read as one channel; 40 -> 19 -> 10 -> 5 positions.
    """
    size = length
    for k in (5, 3, 3):
        size = (size + 2 - k) // 2 + 1
    return Sequential(
        Reshape((1, length)),
        Conv1D(1, channels, 5, stride=2, padding=1, init="he"), ReLU(),
        Conv1D(channels, channels, 3, stride=2, padding=1, init="he"), ReLU(),
        Conv1D(channels, channels, 3, stride=2, padding=1, init="he"), ReLU(),
        Flatten(),
        Linear(channels * size, n_out, init="glorot"),
    )


def transformer(vocab_size: int, embed_dim: int = 64, num_heads: int = 4, num_layers: int = 2,
                max_len: int = 128, causal: bool = True, mlp_ratio: int = 4,
                dropout: float = 0.0) -> Sequential:
    """A (by default causal) transformer language model over ``vocab_size`` tokens.

    ``Embedding(vocab_size, E)`` of the ids, a learned ``PositionalEmbedding(max_len,
    E)``, ``num_layers`` pre-norm ``TransformerBlock``s, a final ``LayerNorm(E)`` and a
    ``Linear(E, vocab_size)`` to the logits of the next token. Input: integer ids
    ``(N, L)`` with ``L <= max_len``; output: logits ``(N, L, vocab_size)``, for
    ``SoftmaxCrossEntropy`` with the next ids ``(N, L)`` as labels.
    """
    return Sequential(
        Embedding(vocab_size, embed_dim),
        PositionalEmbedding(max_len, embed_dim),
        *(TransformerBlock(embed_dim, num_heads, mlp_ratio, causal, dropout)
          for _ in range(num_layers)),
        LayerNorm(embed_dim),
        Linear(embed_dim, vocab_size),
    )


def gpt(vocab_size: int, context: int = 64, width: int = 128, heads: int = 4,
        layers: int = 4, dropout: float = 0.0, *, attn_dropout: float | None = None,
        mlp_ratio: int = 4, tie: bool = True) -> Sequential:
    """A GPT-2-style causal language model over ``vocab_size`` tokens.

    ``Embedding(vocab_size, width)`` of the ids plus a learned ``PositionalEmbedding(
    context, width)``, ``Dropout(dropout)``, ``layers`` pre-norm causal
    ``TransformerBlock``s (residual dropout ``dropout``, attention dropout
    ``attn_dropout``, default ``dropout``), a final ``LayerNorm(width)`` and the output
    head: ``Linear.tied_to`` the token embedding (``tie``, GPT-2's) or a
    ``Linear(width, vocab_size, bias=False)``. GPT-2's initialisation: every weight
    N(0, 0.02), the projections into the residual stream (attention output,
    ``linear2``) N(0, 0.02 / sqrt(2 layers)), biases zero, LayerNorms ones and zeros.

    Input: ids ``(N, L)``, ``L <= context``; output: next-token logits ``(N, L,
    vocab_size)``. Train it with ``SoftmaxCrossEntropy``, decay the matrices only
    (``xn.optim.decay_groups``), sample with ``xn.generate``. Layer ``i`` of the
    Sequential: 0 embedding, 1 positions, 2 dropout, 3 .. 2 + layers blocks, then the
    norm and the head.
    """
    if attn_dropout is None:
        attn_dropout = dropout
    weights = init.normal(0.02)
    resid = init.scaled(weights, 1.0 / math.sqrt(2 * layers))
    embedding = Embedding(vocab_size, width, init=weights)
    blocks = [TransformerBlock(width, heads, mlp_ratio, causal=True, dropout=dropout,
                               attn_dropout=attn_dropout, init=weights, resid_init=resid)
              for _ in range(layers)]
    head = (Linear.tied_to(embedding) if tie else
            Linear(width, vocab_size, bias=False, init=weights))
    return Sequential(embedding, PositionalEmbedding(context, width, init=weights),
                      Dropout(dropout), *blocks, LayerNorm(width), head)


def mnist1d_gru(length: int = 40, hidden: int = 6, n_out: int = 10) -> Sequential:
    """A bidirectional GRU over the signal read as a sequence, then one Linear.

    ``Reshape((length, 1))`` makes ``(N, length)`` inputs ``(N, length, 1)`` sequences of
    one feature; ``GRU(1, hidden, bidirectional=True)`` gives ``(N, length, 2 hidden)``,
    flattened to ``length * 2 * hidden`` features (480 by default) for
    ``Linear(..., n_out)`` logits.
    """
    return Sequential(
        Reshape((length, 1)),
        GRU(1, hidden, bidirectional=True),
        Flatten(),
        Linear(length * 2 * hidden, n_out),
    )
