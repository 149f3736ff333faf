"""Loop-free graph models: layers called on symbolic tensors, run in topological order.

    inp = xn.Input(shape=(40,))
    h = xn.ReLU()(xn.Linear(40, 100)(inp))
    h = xn.Add()(h, xn.ReLU()(xn.Linear(100, 100)(h)))     # h feeds two consumers
    model = xn.Graph(inputs=inp, outputs=xn.Linear(100, 10)(h))

Forward visits the nodes in topological order. Backward visits them in reverse: a
node's gradient is complete once every consumer has added its share, so a value used
along several paths receives the sum of their gradients (the chain rule over a DAG).
Building the nodes is ``xpnet.layers.symbolic``'s part; shapes are checked there,
as the graph grows.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .backend import Backend
from .layers.base import Layer, build_layer, layer_config
from .layers.symbolic import Input, Node, SymbolicTensor
from .summary import count_parameters, shape_text


class Graph(Layer):
    """A loop-free model built from ``Input`` tensors to ``outputs``; itself a Layer.

    ``forward(x)`` takes one array per input (a list when there are several) and
    ``backward(dy)`` returns the input gradient(s) in the same form.
    """

    def __init__(self, inputs: SymbolicTensor | list[SymbolicTensor], outputs: SymbolicTensor,
                 *, name: str | None = None):
        super().__init__(name=name)
        self._multi = isinstance(inputs, (list, tuple))
        self.multi_input = self._multi  # forward takes a list of arrays, as merges do
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

    @property
    def input_count(self) -> int:
        """How many arrays ``forward`` takes."""
        return len(self._inputs)

    @property
    def output_layer(self) -> Layer | None:
        """The layer that makes the output (None when an input is the output)."""
        return self._output.layer

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
                args if node.layer.multi_input else args[0], train=train)
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
            if not node.layer.multi_input:
                dxs = [dxs]
            for src, dx in zip(node.inputs, dxs, strict=True):
                # sum over every path: add this consumer's share to what others sent
                grads[id(src)] = dx if grads.get(id(src)) is None else grads[id(src)] + dx
        out = [grads.get(id(n)) for n in self._inputs]
        return out if self._multi else out[0]

    def summary_rows(self) -> list[tuple[str, str, int]]:
        """One row per node, with the nodes it reads (for ``summary``)."""
        rows = []
        for n in self._order:
            if n.layer is None:
                rows.append((f"{n.name}: Input", shape_text(n.shape), 0))
            else:
                src = ", ".join(i.name for i in n.inputs)
                rows.append((f"{n.name}: {n.layer!r} <- {src}", shape_text(n.shape),
                             count_parameters(n.layer)))
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
    def from_config(cls, config: dict[str, Any], *, backend: Backend | None = None) -> Graph:
        with backend if backend is not None else contextlib.nullcontext():
            return cls._from_nodes(config, backend)

    @classmethod
    def _from_nodes(cls, config: dict[str, Any], backend: Backend | None) -> Graph:
        tensors: list[SymbolicTensor] = []
        for spec in config["nodes"]:
            if "input_shape" in spec:
                tensors.append(Input(tuple(spec["input_shape"]), name=spec["name"]))
            else:
                layer = build_layer(spec["layer"], backend=backend)
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
