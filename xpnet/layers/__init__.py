"""Layers, one family per file; every public Layer class registers itself by name."""

from __future__ import annotations

from .activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .attention import MultiHeadAttention, PositionalEmbedding, TransformerBlock
from .base import (
    LAYER_TYPES,
    Layer,
    Parameter,
    Sequential,
    build_layer,
    declared_state_of,
    layer_config,
)
from .conv import Conv1D, Conv2D
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear
from .merge import Add, Concat, Merge
from .norm import BatchNorm1D, BatchNorm2D, LayerNorm
from .pooling import (
    AvgPool1D,
    AvgPool2D,
    GlobalAvgPool1D,
    GlobalAvgPool2D,
    MaxPool1D,
    MaxPool2D,
)
from .recurrent import GRU, LSTM
from .shape import Flatten, Reshape
from .symbolic import Input, SymbolicTensor

__all__ = ["Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "Flatten",
           "Dropout", "BatchNorm1D", "BatchNorm2D", "Reshape", "Merge", "Add", "Concat",
           "Input", "SymbolicTensor", "LAYER_TYPES", "build_layer", "layer_config",
           "declared_state_of"]
__all__ += ["Embedding", "LayerNorm", "GELU", "SiLU", "LeakyReLU"]
__all__ += ["GlobalAvgPool1D", "GlobalAvgPool2D"]
__all__ += ["GRU", "LSTM"]
__all__ += ["MultiHeadAttention", "TransformerBlock", "PositionalEmbedding"]
