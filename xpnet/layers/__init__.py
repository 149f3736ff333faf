"""Layers, one family per file."""

from .activations import ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter, Sequential
from .linear import Linear

__all__ = ["Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax"]
