"""Layers, one family per file; every public Layer class registers itself by name."""

from __future__ import annotations

from .activations import ReLU, Sigmoid, Softmax, Tanh
from .base import LAYER_TYPES, Layer, Parameter, Sequential, build_layer, layer_config
from .conv import Conv1D, Conv2D
from .dropout import Dropout
from .linear import Linear
from .merge import Add, Concat, Merge
from .norm import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .shape import Flatten, Reshape
from .symbolic import Input, SymbolicTensor

__all__ = ["Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "Flatten",
           "Dropout", "BatchNorm1D", "BatchNorm2D", "Reshape", "Merge", "Add", "Concat",
           "Input", "SymbolicTensor", "LAYER_TYPES", "build_layer", "layer_config"]
