"""Loop-free graph models: layers called on symbolic tensors, run in topological order.

    inp = xn.Input(shape=(40,))
    h = xn.ReLU()(xn.Linear(40, 100)(inp))
    h = xn.Add()(h, xn.ReLU()(xn.Linear(100, 100)(h)))     # h feeds two consumers
    model = xn.Graph(inputs=inp, outputs=xn.Linear(100, 10)(h))

Forward visits the nodes in topological order. Backward visits them in reverse: a
node's gradient is complete once every consumer has added its share, so a value used
along several paths receives the sum of their gradients (the chain rule over a DAG).
Shapes are checked while the graph is built, by running each new layer once on a
small zero batch, so mismatches name the nodes involved before any training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._compat import namespace
from .backend import current
from .layers.base import Layer, _count, _shape_text, layer_config


class SymbolicTensor:
    """The output of a node while a graph is being built: its node and per-example shape."""

    def __init__(self, node: Node):
        self.node = node

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    def __repr__(self) -> str:
        return f"SymbolicTensor({self.node.name}, shape=(N, {', '.join(map(str, self.shape))}))"


class Node:
    """One layer application: ``layer`` applied to the outputs of ``inputs``."""

    def __init__(self, layer: Layer | None, inputs: list[Node], shape: tuple[int, ...],
                 name: str):
        self.layer, self.inputs, self.shape, self.name = layer, inputs, shape, name

    def __repr__(self) -> str:
        return f"Node({self.name})"


_counter = [0]


def _node_name(layer: Layer | None) -> str:
    _counter[0] += 1
    kind = "input" if layer is None else type(layer).__name__.lower()
    return f"{kind}_{_counter[0]}"


def Input(shape: tuple[int, ...], *, name: str | None = None) -> SymbolicTensor:
    """A graph input of per-example ``shape`` (the batch axis is not included)."""
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    return SymbolicTensor(Node(None, [], shape, name or _node_name(None)))


def connect(layer: Layer, inputs: tuple[Any, ...]) -> SymbolicTensor:
    """Apply ``layer`` to symbolic tensors (what ``layer(tensor)`` does while building)."""
    if not all(isinstance(t, SymbolicTensor) for t in inputs):
        raise TypeError(f"{layer.label}: cannot mix symbolic tensors and arrays in one call")
    if getattr(layer, "_node", None) is not None:
        raise ValueError(
            f"{layer.label} is already used at node {layer._node.name}; a layer object can "
            f"appear once in a graph (create another layer to repeat it)"
        )
    merge = isinstance(layer, Merge)
    if not merge and len(inputs) != 1:
        raise TypeError(f"{layer.label} takes one input, got {len(inputs)}")
    if merge and len(inputs) < 2:
        raise TypeError(f"{layer.label} merges two or more inputs, got {len(inputs)}")
    nodes = [t.node for t in inputs]
    state = layer.named_state()
    be = layer.backend if state else current()
    dtype = state[0][1].value.dtype if state else "float32"
    probes = [be.asarray(np.zeros((2, *n.shape)), dtype=dtype) for n in nodes]
    try:
        out = layer.forward(probes if merge else probes[0], train=False)
    except (ValueError, TypeError) as e:
        names = ", ".join(f"{n.name} (N, {', '.join(map(str, n.shape))})" for n in nodes)
        raise ValueError(f"cannot apply {layer.label} to {names}: {e}") from None
    producer = nodes[0].layer
    if (layer.init_hint and len(nodes) == 1 and getattr(producer, "init", None) == "auto"
            and hasattr(producer, "reset")):
        producer.reset(layer.init_hint)  # as Sequential does: He before a ReLU
    node = Node(layer, nodes, tuple(out.shape[1:]), layer.name or _node_name(layer))
    layer._node = node
    return SymbolicTensor(node)


class Merge(Layer):
    """A layer of several inputs: ``forward([x1, x2, ...])``, ``backward(dy) -> [dx1, ...]``."""


class Add(Merge):
    """Element-wise sum of inputs of equal shape (a residual connection)."""

    def forward(self, xs: list[Any], *, train: bool = True) -> Any:
        shapes = [tuple(x.shape) for x in xs]
        if len(set(shapes)) != 1:
            raise ValueError(f"{self.label}: inputs must have equal shapes, got {shapes}")
        self._n = len(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def backward(self, dy: Any) -> list[Any]:
        return [dy] * self._n


class Concat(Merge):
    """Join inputs along ``axis`` (1: features of ``(N, F)`` or channels of ``(N, C, ...)``)."""

    def __init__(self, axis: int = 1, *, name: str | None = None):
        super().__init__(name=name)
        if axis == 0:
            raise ValueError("Concat: axis 0 is the batch axis; join along axis >= 1")
        self.axis = axis
        self._sizes: list[int] = []

    def forward(self, xs: list[Any], *, train: bool = True) -> Any:
        ax = self.axis % xs[0].ndim
        rest = [tuple(s for i, s in enumerate(x.shape) if i != ax) for x in xs]
        if len(set(rest)) != 1 or len({x.ndim for x in xs}) != 1:
            raise ValueError(f"{self.label}: inputs must agree on every axis but {self.axis}, "
                             f"got shapes {[tuple(x.shape) for x in xs]}")
        self._sizes = [int(x.shape[ax]) for x in xs]
        return namespace(xs[0]).concat(xs, axis=ax)

    def backward(self, dy: Any) -> list[Any]:
        ax = self.axis % dy.ndim
        out, start = [], 0
        for size in self._sizes:
            key = tuple(slice(start, start + size) if i == ax else slice(None)
                        for i in range(dy.ndim))
            out.append(dy[key])
            start += size
        return out

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}


class Graph(Layer):
    """A loop-free model built from ``Input`` tensors to ``outputs``; itself a Layer.

    ``forward(x)`` takes one array per input (a list when there are several) and
    ``backward(dy)`` returns the input gradient(s) in the same form.
    """

    def __init__(self, inputs: SymbolicTensor | list[SymbolicTensor], outputs: SymbolicTensor,
                 *, name: str | None = None):
        super().__init__(name=name)
        self._multi = isinstance(inputs, (list, tuple))
        ins = list(inputs) if self._multi else [inputs]
        if not isinstance(outputs, SymbolicTensor) or not all(
                isinstance(t, SymbolicTensor) for t in ins):
            raise TypeError("Graph: inputs and outputs must be tensors from xn.Input(...) and "
                            "layer calls")
        self._inputs = [t.node for t in ins]
        self._output = outputs.node
        self._order = _topological_order(self._output)
        reached_inputs = [n for n in self._order if n.layer is None]
        unknown = [n.name for n in reached_inputs if n not in self._inputs]
        if unknown:
            raise ValueError(f"Graph: the outputs depend on input(s) {', '.join(unknown)} "
                             f"that are not listed in inputs=")
        unused = [n.name for n in self._inputs if n not in reached_inputs]
        if unused:
            raise ValueError(f"Graph: input(s) {', '.join(unused)} are not connected to the "
                             f"outputs")
        self._layers = [n.layer for n in self._order if n.layer is not None]
        for n in self._order:
            if n.layer is not None:
                n.layer._where = f"{name or 'Graph'} node {n.name}"
        self._index = {id(n): i for i, n in enumerate(self._order)}

    def children(self) -> list[Layer]:
        return self._layers

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xs = list(x) if self._multi else [x]
        if len(xs) != len(self._inputs):
            raise ValueError(f"{self.label}: expected {len(self._inputs)} inputs, got {len(xs)}")
        values: dict[int, Any] = {}
        for node, value in zip(self._inputs, xs, strict=True):
            if tuple(value.shape[1:]) != node.shape:
                raise ValueError(f"{self.label}: input {node.name} expects shape "
                                 f"(N, {', '.join(map(str, node.shape))}), got "
                                 f"{tuple(value.shape)}")
            values[id(node)] = value
        for node in self._order:
            if node.layer is None:
                continue
            args = [values[id(n)] for n in node.inputs]
            values[id(node)] = node.layer.forward(
                args if isinstance(node.layer, Merge) else args[0], train=train)
        return values[id(self._output)]

    def backward(self, dy: Any) -> Any:
        grads: dict[int, Any] = {id(self._output): dy}
        for node in reversed(self._order):
            g = grads.pop(id(node), None)
            if g is None or node.layer is None:
                if node.layer is None:
                    grads[id(node)] = g  # an input: kept for the caller
                continue
            dxs = node.layer.backward(g)
            if not isinstance(node.layer, Merge):
                dxs = [dxs]
            for src, dx in zip(node.inputs, dxs, strict=True):
                # sum over every path: add this consumer's share to what others sent
                grads[id(src)] = dx if grads.get(id(src)) is None else grads[id(src)] + dx
        out = [grads.get(id(n)) for n in self._inputs]
        return out if self._multi else out[0]

    def _summary_rows(self, input_shape: tuple[int, ...] | None) -> list[tuple[str, str, int]]:
        rows = []
        for n in self._order:
            if n.layer is None:
                rows.append((f"{n.name}: Input", _shape_text(n.shape), 0))
            else:
                src = ", ".join(i.name for i in n.inputs)
                rows.append((f"{n.name}: {n.layer!r} <- {src}", _shape_text(n.shape),
                             _count(n.layer)))
        return rows

    def get_config(self) -> dict[str, Any]:
        nodes = []
        for n in self._order:
            spec: dict[str, Any] = {"name": n.name,
                                    "inputs": [self._index[id(i)] for i in n.inputs]}
            if n.layer is None:
                spec["input_shape"] = list(n.shape)
            else:
                spec["layer"] = layer_config(n.layer)
            nodes.append(spec)
        return {"nodes": nodes, "inputs": [self._index[id(n)] for n in self._inputs],
                "output": self._index[id(self._output)], "multi": self._multi}

    @classmethod
    def from_config(cls, config: dict[str, Any], build) -> Graph:
        tensors: list[SymbolicTensor] = []
        for spec in config["nodes"]:
            if "input_shape" in spec:
                tensors.append(Input(tuple(spec["input_shape"]), name=spec["name"]))
            else:
                layer = build(spec["layer"])
                tensors.append(layer(*[tensors[i] for i in spec["inputs"]]))
                tensors[-1].node.name = spec["name"]
        ins = [tensors[i] for i in config["inputs"]]
        return cls(inputs=ins if config.get("multi") else ins[0],
                   outputs=tensors[config["output"]])

    def __repr__(self) -> str:
        return f"Graph({len(self._layers)} layers, inputs={[n.name for n in self._inputs]})"


def _topological_order(output: Node) -> list[Node]:
    """Every node the output depends on, producers before consumers; raises on a cycle."""
    order: list[Node] = []
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    stack: list[tuple[Node, int]] = [(output, 0)]
    path: list[Node] = []
    while stack:
        node, i = stack.pop()
        if i == 0:
            if state.get(id(node)) == 2:
                continue
            state[id(node)] = 1
            path.append(node)
        if i < len(node.inputs):
            stack.append((node, i + 1))
            nxt = node.inputs[i]
            if state.get(id(nxt)) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise ValueError("Graph: cycle through nodes " +
                                 " -> ".join(n.name for n in reversed(cycle)))
            if state.get(id(nxt)) != 2:
                stack.append((nxt, 0))
        else:
            state[id(node)] = 2
            path.pop()
            order.append(node)
    return order
