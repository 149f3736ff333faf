"""Ready-made models: the MLPs of the digits example and MNIST-1D's reference models.

The MNIST-1D models follow the paper (Greydanus, 2020) and its reference code:
logistic regression, a residual MLP, and a three-layer 1-D CNN. Each weighted layer
is initialised for what follows it: He before a ReLU, Glorot otherwise.
``mnist1d_gru`` reads the 40 values as a sequence with a bidirectional GRU.
``transformer`` is a small causal language model (token and position embeddings,
pre-norm transformer blocks, logits per position).
"""

from __future__ import annotations

from .graph import Graph
from .layers import (
    GRU,
    Add,
    Conv1D,
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
