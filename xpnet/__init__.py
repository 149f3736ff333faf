"""xpnet: backprop written once, as batched matrix math against the Python array API.

The same layers run on NumPy, CuPy, PyTorch, JAX and array-api-strict::

    import xpnet as xn
    xn.use("numpy")                       # or "cupy", "torch", "jax", "array_api_strict"
    model = xn.Sequential(xn.Linear(784, 30), xn.Sigmoid(), xn.Linear(30, 10))

Importing xpnet imports no optional array library and touches no GPU.
"""

from . import backends, data, datasets, distributed, init, models, optim, random
from ._version import __version__
from .backend import Backend, BackendUnavailableError, available, current, to_numpy, use
from .checkpoint import Checkpoint, CheckpointError, load, load_checkpoint, save
from .clip import clip_grad_norm, clip_grad_value
from .generate import generate
from .gradcheck import GradcheckError, gradcheck
from .graph import Graph
from .layers import (
    GELU,
    GRU,
    LSTM,
    Add,
    AvgPool1D,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Concat,
    Conv1D,
    Conv2D,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool1D,
    GlobalAvgPool2D,
    Input,
    Layer,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool1D,
    MaxPool2D,
    MultiHeadAttention,
    Parameter,
    PositionalEmbedding,
    ReLU,
    Reshape,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
    TransformerBlock,
)
from .losses import BinaryCrossEntropy, Loss, QuadraticCost, SoftmaxCrossEntropy
from .onnx import export_onnx
from .optim import SGD, Adam, AdamW, CosineLR, Optimizer, StepLR, WarmupCosineLR
from .random import RandomStream, seed
from .train import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    ModelCheckpoint,
    ReduceLROnPlateau,
    Step,
    TerminateOnNaN,
    TrainStep,
    compile_step,
    evaluate,
    fit,
    metrics,
    predict,
)
from .train.precision import MixedPrecision

__all__ = [
    "Step", "TrainStep", "compile_step",
    "__version__",
    "Backend", "BackendUnavailableError", "available", "current", "seed", "to_numpy", "use",
    "RandomStream",
    "GradcheckError", "gradcheck", "generate",
    "Layer", "Parameter", "Sequential", "Linear", "Sigmoid", "ReLU", "Tanh", "Softmax",
    "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "Flatten",
    "GlobalAvgPool1D", "GlobalAvgPool2D",
    "Dropout", "BatchNorm1D", "BatchNorm2D", "Reshape", "Input", "Add", "Concat", "Graph",
    "Embedding", "LayerNorm", "GELU", "SiLU", "LeakyReLU",
    "GRU", "LSTM",
    "MultiHeadAttention", "TransformerBlock", "PositionalEmbedding",
    "Loss", "QuadraticCost", "SoftmaxCrossEntropy", "BinaryCrossEntropy",
    "Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineLR",
    "WarmupCosineLR", "clip_grad_norm", "clip_grad_value",
    "CSVLogger", "ReduceLROnPlateau", "TerminateOnNaN", "metrics",
    "fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "ModelCheckpoint",
    "MixedPrecision",
    "save", "load", "load_checkpoint", "Checkpoint", "CheckpointError", "export_onnx",
    "backends", "data", "datasets", "distributed", "init", "models", "optim", "random",
]
