"""Symbolic tensors: what calling layers on ``xn.Input(...)`` builds, before a Graph.

    inp = xn.Input(shape=(40,))
    h = xn.ReLU()(xn.Linear(40, 100)(inp))      # a SymbolicTensor: node + shape

Each call adds a :class:`Node` (a layer applied to earlier nodes). Shapes are checked
as the graph grows, by running the new layer once on a small zero batch, so a
mismatch names the nodes involved before any training. Building never changes a
layer's parameters. Calling one layer object at several nodes shares it between them
(``xpnet.graph`` says how); a named layer's later nodes are named ``name_2``, ``name_3``...
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np

from ..backend import current


class Node:
    """One layer application: ``layer`` applied to the outputs of ``inputs``
    (``layer`` is None for an input)."""

    def __init__(self, layer: Any, inputs: list[Node], shape: tuple[int, ...], name: str):
        self.layer, self.inputs, self.shape, self.name = layer, inputs, shape, name

    def __repr__(self) -> str:
        return f"Node({self.name})"


class SymbolicTensor:
    """The output of a node while a graph is being built: its node and per-example shape."""

    def __init__(self, node: Node):
        self.node = node

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    def __repr__(self) -> str:
        return f"SymbolicTensor({self.node.name}, shape=(N, {', '.join(map(str, self.shape))}))"


_counter = itertools.count(1)
#: How many nodes each layer object has been called at, to name a named layer's later
#: nodes ``name_2``, ``name_3``... (weak: building a graph keeps no layer alive).
_uses: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _node_name(layer: Any) -> str:
    kind = "input" if layer is None else type(layer).__name__.lower()
    return f"{kind}_{next(_counter)}"


def Input(shape: int | tuple[int, ...], *, name: str | None = None) -> SymbolicTensor:
    """A graph input of per-example ``shape`` (the batch axis is not included)."""
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    return SymbolicTensor(Node(None, [], shape, name or _node_name(None)))


def is_symbolic(xs: tuple[Any, ...]) -> bool:
    return any(isinstance(x, SymbolicTensor) for x in xs)


def connect(layer: Any, inputs: tuple[Any, ...]) -> SymbolicTensor:
    """Apply ``layer`` to symbolic tensors (what ``layer(tensor)`` does while building)."""
    if not all(isinstance(t, SymbolicTensor) for t in inputs):
        raise TypeError(f"{layer.label}: cannot mix symbolic tensors and arrays in one call")
    multi = layer.multi_input
    if not multi and len(inputs) != 1:
        raise TypeError(f"{layer.label} takes one input, got {len(inputs)}")
    if multi and len(inputs) < 2:
        raise TypeError(f"{layer.label} merges two or more inputs, got {len(inputs)}")
    nodes = [t.node for t in inputs]
    state = layer.named_state()
    be = layer.backend if state else current()
    dtype = layer.input_dtype or (state[0][1].value.dtype if state else "float32")
    probes = [be.asarray(np.zeros((2, *n.shape)), dtype=dtype) for n in nodes]
    try:
        out = layer.forward(probes if multi else probes[0], train=False)
    except (ValueError, TypeError) as e:
        names = ", ".join(f"{n.name} (N, {', '.join(map(str, n.shape))})" for n in nodes)
        raise ValueError(f"cannot apply {layer.label} to {names}: {e}") from None
    uses = _uses.get(layer, 0) + 1
    _uses[layer] = uses
    name = _node_name(layer) if not layer.name else (
        layer.name if uses == 1 else f"{layer.name}_{uses}")
    return SymbolicTensor(Node(layer, nodes, tuple(out.shape[1:]), name))
