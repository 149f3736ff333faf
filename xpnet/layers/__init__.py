"""Layers, one family per file, and the registry that rebuilds them from a config."""

from __future__ import annotations

from typing import Any

from .activations import ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter, Sequential, layer_config
from .conv import Conv1D, Conv2D
from .dropout import Dropout
from .linear import Linear
from .norm import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .shape import Flatten, Reshape

__all__ = ["Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "Flatten",
           "Dropout", "BatchNorm1D", "BatchNorm2D", "Reshape", "LAYER_TYPES", "build_layer",
           "layer_config"]


def _registry() -> dict[str, type[Layer]]:
    from ..graph import Add, Concat, Graph

    return {cls.__name__: cls for cls in (
        Sequential, Graph, Linear, Sigmoid, ReLU, Tanh, Softmax, Conv1D, Conv2D, MaxPool1D,
        MaxPool2D, AvgPool1D, AvgPool2D, Flatten, Reshape, Dropout, BatchNorm1D, BatchNorm2D,
        Add, Concat)}


#: Every layer type a checkpoint may name. Only these are ever constructed from a file.
LAYER_TYPES: dict[str, type[Layer]] = {}


def build_layer(spec: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``layer_config(layer)`` (weights freshly initialised)."""
    if not LAYER_TYPES:
        LAYER_TYPES.update(_registry())
    kind = spec.get("type")
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    config = dict(spec.get("config", {}))
    if cls is Sequential:
        return Sequential(*[build_layer(c) for c in config.pop("layers")], **config)
    if cls.__name__ == "Graph":
        return cls.from_config(config, build_layer)
    return cls(**config)
