"""Layers, one family per file, and the registry that rebuilds them from a config."""

from __future__ import annotations

from typing import Any

from .activations import ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter, Sequential, layer_config
from .linear import Linear

__all__ = ["Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax",
           "LAYER_TYPES", "build_layer", "layer_config"]

#: Every layer type a checkpoint may name. Only these are ever constructed from a file.
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Sequential, Linear, Sigmoid, ReLU, Tanh, Softmax)
}


def build_layer(spec: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``layer_config(layer)`` (weights freshly initialised)."""
    kind = spec.get("type")
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    config = dict(spec.get("config", {}))
    if cls is Sequential:
        return Sequential(*[build_layer(c) for c in config.pop("layers")], **config)
    return cls(**config)
