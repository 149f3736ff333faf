"""``model.summary()``: a table of layers, output shapes and parameter counts that fits
an 80-column terminal."""

from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

#: Widest line the table prints: an 80-column terminal without wrapping.
WIDTH = 79


def summary(model: Any, input_shape: tuple[int, ...] | None = None,
            print_fn: Callable[[str], Any] | None = print) -> str:
    """Print (and return) one row per layer: name, output shape, parameters, then the
    totals: all, trainable and non-trainable (running statistics, frozen parameters).

    Output shapes come from one inference pass on a zero input of shape
    ``(1, *input_shape)`` in the model's dtype; ``input_shape`` (one example's shape)
    defaults to the first Linear's width, and without it the shapes show ``?`` and a
    line says to pass it. A model that knows its own rows (a Graph) provides
    ``summary_rows()``; a layer a Graph calls at several nodes is counted at its first.
    Each layer is shown by its class and the arguments that differ from their defaults;
    every line is under 80 columns (a long layer description wraps in its column).
    """
    own = getattr(model, "summary_rows", None)
    rows = own() if own is not None else _rows_in_sequence(model, input_shape)
    state = [p for _, p in model.named_state()]  # a tied parameter once
    total = sum(math.prod(p.shape) for p in state)
    trainable = sum(math.prod(p.shape) for p in state if p.trainable)
    shape_w = max(len("Output shape"), *(len(r[1]) for r in rows)) + 2
    count_w = max(len("Param #"), *(len(f"{r[2]:,}") for r in rows))
    name_w = WIDTH - shape_w - count_w
    lines = [f"{'Layer':<{name_w}}{'Output shape':<{shape_w}}{'Param #':>{count_w}}",
             "-" * WIDTH]
    for name, shape, count in rows:
        parts = textwrap.wrap(name, name_w - 2, subsequent_indent="  ",
                              break_on_hyphens=False) or [""]
        lines.append(f"{parts[0]:<{name_w}}{shape:<{shape_w}}{count:>{count_w},}")
        lines += parts[1:]
    lines += ["-" * WIDTH, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}"]
    if any(r[1] == "?" for r in rows):
        lines.append("Output shapes are ? without input_shape=: pass one example's shape, "
                     "e.g.\nsummary(input_shape=(40,)) for inputs of shape (n, 40)")
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _rows_in_sequence(model: Any, input_shape: tuple[int, ...] | None
                      ) -> list[tuple[str, str, int]]:
    """(name, output shape, parameter count) per child, run one after another."""
    children = model.children()
    layers = children or [model]
    names = [f"{i}: {describe(layer)}" if children else describe(layer)
             for i, layer in enumerate(layers)]
    if input_shape is None:  # known when the first leaf layer is a Linear
        first = next(lay for lay in model.layers() if not lay.children())
        input_shape = (first.in_features,) if hasattr(first, "in_features") else None
    shapes = ["?"] * len(layers)
    if input_shape is not None:
        x = model.backend.asarray(np.zeros((1, *input_shape)), dtype=_input_dtype(model))
        for i, layer in enumerate(layers):
            x = layer.forward(x, train=False)
            shapes[i] = shape_text(tuple(x.shape)[1:])
    return [(n, sh, count_parameters(layer, trainable_only=False))
            for n, sh, layer in zip(names, shapes, layers, strict=True)]


def _input_dtype(model: Any) -> Any:
    """What the model reads: integer ids for an Embedding first, else the dtype of its
    trainable parameters (a float64 model takes float64)."""
    if getattr(model, "input_dtype", None):
        return model.input_dtype
    weights = [p for _, p in model.named_state() if p.trainable]
    return weights[0].value.dtype if weights else "float32"


def describe(layer: Any) -> str:
    """``Conv1D(1, 25, 5, stride=2, padding=1)``: the class, its required arguments by
    position, and the others only where they differ from their defaults (no names,
    dtypes or initialisers; ``...`` for sub-layers' descriptions)."""
    full = layer.get_config()
    config = {k: v for k, v in full.items()
              if k not in ("name", "dtype") and not k.endswith("init") and not _nested(v)}
    try:
        params = inspect.signature(type(layer)).parameters
    except (TypeError, ValueError):  # no signature to read defaults from: every argument
        params = {}
    parts, keywords = [], False
    for k, p in params.items():
        if k not in config:
            continue
        v = config.pop(k)
        if p.default is inspect.Parameter.empty and not keywords and p.kind in (
                p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            parts.append(repr(v))
            continue
        keywords = True
        if p.default is inspect.Parameter.empty or not _same(v, p.default):
            parts.append(f"{k}={v!r}")
    parts += [f"{k}={v!r}" for k, v in config.items()]
    if any(_nested(v) for v in full.values()):
        parts.append("...")  # its sub-layers
    return f"{type(layer).__name__}({', '.join(parts)})"


def _nested(value: Any) -> bool:
    """A sub-layer's description (a dict, or a list of them): a row of its own."""
    return isinstance(value, dict) or (isinstance(value, (list, tuple)) and
                                       any(isinstance(v, dict) for v in value))


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)  # a config's list for a tuple default
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def shape_text(shape: tuple[int, ...]) -> str:
    """``(N, 10, 5)`` for a per-example shape ``(10, 5)``."""
    return "(N" + "".join(f", {d}" for d in shape) + ")"


def count_parameters(layer: Any, trainable_only: bool = True) -> int:
    """Values in ``layer`` and below: trainable ones, or all (running statistics and
    frozen parameters too) with ``trainable_only=False``."""
    return sum(math.prod(p.shape) for _, p in layer.named_state()
               if p.trainable or not trainable_only)
