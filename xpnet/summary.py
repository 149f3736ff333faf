"""``model.summary()``: a table of layers, output shapes and parameter counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


def summary(model: Any, input_shape: tuple[int, ...] | None = None,
            print_fn: Callable[[str], Any] | None = print) -> str:
    """Print (and return) one row per layer: name, output shape, trainable parameters.

    Output shapes come from one inference pass on a zero input of shape
    ``(1, *input_shape)``; ``input_shape`` defaults to the first Linear's width. A model
    that knows its own rows (a Graph) provides ``summary_rows()``; a layer a Graph calls
    at several nodes is counted at its first, so the total counts each parameter once.
    """
    own = getattr(model, "summary_rows", None)
    rows = own() if own is not None else _rows_in_sequence(model, input_shape)
    w = max(len(r[0]) for r in rows) + 2
    lines = [f"{'Layer':<{w}}{'Output shape':<18}{'Params':>10}", "-" * (w + 28)]
    lines += [f"{name:<{w}}{shape:<18}{count:>10,}" for name, shape, count in rows]
    lines += ["-" * (w + 28), f"Total trainable parameters: {sum(r[2] for r in rows):,}"]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _rows_in_sequence(model: Any, input_shape: tuple[int, ...] | None
                      ) -> list[tuple[str, str, int]]:
    """(name, output shape, trainable count) per child, run one after another."""
    children = model.children()
    layers = children or [model]
    names = [f"{i}: {layer!r}" if children else repr(layer) for i, layer in enumerate(layers)]
    if input_shape is None:  # known when the first leaf layer is a Linear
        first = next(lay for lay in model.layers() if not lay.children())
        input_shape = (first.in_features,) if hasattr(first, "in_features") else None
    shapes = ["?"] * len(layers)
    if input_shape is not None:
        x = model.backend.asarray(np.zeros((1, *input_shape)),
                                  dtype=getattr(model, "input_dtype", None) or "float32")
        for i, layer in enumerate(layers):
            x = layer.forward(x, train=False)
            shapes[i] = shape_text(tuple(x.shape)[1:])
    return [(n, sh, count_parameters(layer))
            for n, sh, layer in zip(names, shapes, layers, strict=True)]


def shape_text(shape: tuple[int, ...]) -> str:
    """``(N, 10, 5)`` for a per-example shape ``(10, 5)``."""
    return "(N" + "".join(f", {d}" for d in shape) + ")"


def count_parameters(layer: Any) -> int:
    """Trainable values in ``layer`` and below."""
    return sum(math.prod(p.shape) for _, p in layer.named_state() if p.trainable)
