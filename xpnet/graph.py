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

Weight sharing: one layer object may be called at several nodes (``f = xn.Linear(4, 3);
xn.Add()(f(a), f(b))``). It is one child of the Graph, so ``parameters()``,
``state_dict()``, ``summary()`` and checkpoints hold its parameters once, named after
its first node in topological order. Each later node runs, in a training pass, on a
*call copy* made at that forward: the layer and every layer below it copied shallowly,
so the Parameter objects (values, gradients, running statistics) and settings are the
very ones of the layer while the cache backward reads (``self._x``...) is the node's
own. With ``W`` used at nodes ``1..k``, each node's backward adds its share into the one
``W.grad``, so

    dC/dW = sum_i dC/dW|node i             (the sum over paths, for a shared weight)

A shared Dropout draws a fresh mask at every node; a shared BatchNorm normalises each
node's batch with that batch's statistics in training and updates its running statistics
once per node, in topological order (as calling one ``torch.nn`` module twice does).
Inference runs every node on the layer itself. A checkpoint records a later use as
``{"name", "inputs", "same_layer_as": <index of the first node>}``. Refused when the
Graph is built: a layer called at a node that is also part of another of its layers (a
Sequential, a nested Graph), since its parameters would then have two names.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from ._jsonconfig import ConfigError, check_keys, show
from .backend import Backend
from .layers.base import (
    DeclaredState,
    Layer,
    build_layer,
    config_path,
    config_where,
    declared_state_of,
    layer_config,
    layer_type_name,
)
from .layers.symbolic import Input, Node, SymbolicTensor
from .summary import count_parameters, describe, shape_text


class Graph(Layer):
    """A loop-free model built from ``Input`` tensors to ``outputs``; itself a Layer.

    ``forward(x)`` takes one array per input (a list when there are several) and
    ``backward(dy)`` returns the input gradient(s) in the same form. A layer called at
    several nodes shares its parameters between them (see the module's docstring); its
    gradient is the sum over its nodes.

    Parameters
    ----------
    inputs : SymbolicTensor or list of SymbolicTensor
        From ``xn.Input(shape)``; ``forward`` takes ``(N, *shape)`` arrays in this order.
    outputs : SymbolicTensor
        What calling layers on ``inputs`` built; ``forward`` returns ``(N, *outputs.shape)``.
    name : str, optional
        Names the graph in error messages.
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
        _check_inputs_connected(self._order, self._inputs)
        self._index = {id(n): i for i, n in enumerate(self._order)}
        # per node, by its place in self._order: its layer (None for an input), the nodes
        # it reads, and the earlier node whose layer it reuses (None: its first use)
        self._node_layers = [n.layer for n in self._order]
        self._node_inputs = [[self._index[id(i)] for i in n.inputs] for n in self._order]
        self._same_as: list[int | None] = _first_uses(self._node_layers)
        self._input_index = [self._index[id(n)] for n in self._inputs]
        self._output_index = self._index[id(self._output)]
        self._layers = [layer for layer, same in zip(self._node_layers, self._same_as,
                                                     strict=True)
                        if layer is not None and same is None]
        self._place_children(name)
        self._check_one_name_per_parameter()
        self._check_shared_layers_copy()
        self._runners: list[Layer | None] = list(self._node_layers)  # what the last forward ran

    def _place_children(self, name: str | None) -> None:
        """Tell each child the node of its first use, for its error messages."""
        for layer, n, same in zip(self._node_layers, self._order, self._same_as, strict=True):
            if layer is not None and same is None:
                layer._where = f"{name or 'Graph'} node {n.name}"

    def _check_shared_layers_copy(self) -> None:
        """A layer that cannot run at another node (see ``_call_copy``) says so now, when
        the Graph is built, rather than at the first training forward."""
        for layer in {id(self._node_layers[j]): self._node_layers[j]
                      for j in self._same_as if j is not None}.values():
            _call_copy(layer)

    def _check_one_name_per_parameter(self) -> None:
        """A layer shared inside another child (``f`` at a node and inside a Sequential at
        another) would list its parameters twice; a description could not say so."""
        seen: dict[tuple[int, int], str] = {}
        for pname, p, owner in self._walk_state():
            # the same parameter in two layers is a tie (Linear.tied_to), which
            # descriptions record; the same layer twice is what is refused here
            if (id(p), id(owner)) in seen:
                raise ValueError(
                    f"{self.label}: parameter {pname!r} is the same object as "
                    f"{seen[id(p), id(owner)]!r}: a layer may be called at several nodes of "
                    f"a Graph, but not also be part of another layer of it (call the shared "
                    f"layer at its own nodes instead)")
            seen[id(p), id(owner)] = pname

    def children(self) -> list[Layer]:
        """Each layer once, in the order of its first node (a shared layer is one child)."""
        return self._layers

    @property
    def input_count(self) -> int:
        """How many arrays ``forward`` takes."""
        return len(self._inputs)

    @property
    def input_dtypes(self) -> list[str | None]:
        """Per input, what the layers reading it take: ``"int64"`` ids for an Embedding,
        None for the parameters' floating dtype."""
        out = []
        for i in self._input_index:
            readers = [self._node_layers[j] for j, ins in enumerate(self._node_inputs)
                       if i in ins]
            out.append(next((r.input_dtype for r in readers if r.input_dtype), None))
        return out

    @property
    def input_id_counts(self) -> list[int | None]:
        """Per input, the fewest ids a layer reading it takes (Embedding's
        ``num_embeddings``), None where no layer reads ids."""
        out = []
        for i in self._input_index:
            counts = [self._node_layers[j].id_count for j, ins in enumerate(self._node_inputs)
                      if i in ins]
            out.append(min((c for c in counts if c is not None), default=None))
        return out

    @property
    def input_dtype(self) -> str | None:  # type: ignore[override]
        return None if self._multi else self.input_dtypes[0]

    @property
    def id_count(self) -> int | None:  # type: ignore[override]
        return None if self._multi else self.input_id_counts[0]

    @property
    def output_layer(self) -> Layer | None:
        """The layer that makes the output (None when an input is the output)."""
        return self._output.layer

    def forward(self, x: Any, *, train: bool = True) -> Any:
        xs = list(x) if self._multi else [x]
        if len(xs) != len(self._inputs):
            raise ValueError(f"{self.label}: expected {len(self._inputs)} inputs, got {len(xs)}")
        values: list[Any] = [None] * len(self._order)
        for node, i, value in zip(self._inputs, self._input_index, xs, strict=True):
            if tuple(value.shape[1:]) != node.shape:
                raise ValueError(f"{self.label}: input {node.name} expects shape "
                                 f"(N, {', '.join(map(str, node.shape))}), got "
                                 f"{tuple(value.shape)}")
            values[i] = value
        runners = list(self._node_layers)
        for i, layer in enumerate(self._node_layers):
            if layer is None:
                continue
            if train and self._same_as[i] is not None:  # a later use keeps its own cache
                layer = runners[i] = _call_copy(layer)
                layer._where = f"{self.name or 'Graph'} node {self._order[i].name}"
            args = [values[j] for j in self._node_inputs[i]]
            values[i] = layer.forward(args if layer.multi_input else args[0], train=train)
        self._runners = runners
        return values[self._output_index]

    def backward(self, dy: Any) -> Any:
        grads: list[Any] = [None] * len(self._order)
        grads[self._output_index] = dy
        for i in reversed(range(len(self._order))):
            layer, g = self._runners[i], grads[i]
            if layer is None or g is None:
                continue  # an input keeps its gradient for the caller
            grads[i] = None
            dxs = layer.backward(g)
            if not layer.multi_input:
                dxs = [dxs]
            for src, dx in zip(self._node_inputs[i], dxs, strict=True):
                # sum over every path: add this consumer's share to what others sent
                grads[src] = dx if grads[src] is None else grads[src] + dx
        out = [grads[i] for i in self._input_index]
        return out if self._multi else out[0]

    def summary_rows(self) -> list[tuple[str, str, int]]:
        """One row per node, with the nodes it reads (for ``summary``); a shared layer's
        parameters are counted at its first node only."""
        rows = []
        for n, same in zip(self._order, self._same_as, strict=True):
            if n.layer is None:
                rows.append((f"{n.name}: Input", shape_text(n.shape), 0))
                continue
            src = ", ".join(i.name for i in n.inputs)
            if same is None:
                rows.append((f"{n.name}: {describe(n.layer)} <- {src}", shape_text(n.shape),
                             count_parameters(n.layer, trainable_only=False)))
            else:
                rows.append((f"{n.name}: {describe(n.layer)} <- {src} (shares "
                             f"{self._order[same].name}'s layer)", shape_text(n.shape), 0))
        return rows

    def get_config(self) -> dict[str, Any]:
        """Nodes in topological order: an input's shape, a layer's description, or for a
        later use of a layer ``"same_layer_as"``: the index of its first node."""
        nodes = []
        for n, same in zip(self._order, self._same_as, strict=True):
            spec: dict[str, Any] = {"name": n.name,
                                    "inputs": [self._index[id(i)] for i in n.inputs]}
            if n.layer is None:
                spec["input_shape"] = list(n.shape)
            elif same is not None:
                spec["same_layer_as"] = same
            else:
                spec["layer"] = layer_config(n.layer)
            nodes.append(spec)
        return {"nodes": nodes, "inputs": list(self._input_index),
                "output": self._output_index, "multi": self._multi}

    @classmethod
    def declared_state(cls, config: dict[str, Any], *, at: str = "", depth: int = 0
                       ) -> DeclaredState:
        """The arrays of the layers at the nodes ``config`` lists, each prefixed with its
        place among the nodes with a ``"layer"`` (as ``named_state``), after checking the
        node list as ``get_config`` writes it: every node an input, a layer or a later
        use of an earlier node's layer, reading earlier nodes only; distinct input nodes
        (one unless ``multi``); an output node every node leads to."""
        where = config_where(at, layer_type_name(cls))
        check_keys(where, config, {"nodes": "list", "inputs": "list[int]", "output": "int",
                                   "multi": "bool"}, {"nodes", "inputs", "output"})
        nodes = config["nodes"]
        is_input = [_check_node_config(where, nodes, j) for j in range(len(nodes))]
        _check_graph_ends(where, config, is_input)
        _check_all_lead_to_output(where, nodes, config["output"])
        return _declared_node_state(nodes, at, depth)

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
                continue
            if "same_layer_as" in spec:  # the layer object of that earlier node, again
                layer = tensors[spec["same_layer_as"]].node.layer
                if layer is None:
                    raise ValueError(f"Graph: node {spec['name']} reuses the layer of node "
                                     f"{spec['same_layer_as']}, which is an input")
            else:
                layer = build_layer(spec["layer"], backend=backend)
            tensors.append(layer(*[tensors[i] for i in spec["inputs"]]))
            tensors[-1].node.name = spec["name"]
        ins = [tensors[i] for i in config["inputs"]]
        return cls(inputs=ins if config.get("multi") else ins[0],
                   outputs=tensors[config["output"]])

    def __repr__(self) -> str:
        return f"Graph({len(self._layers)} layers, inputs={[n.name for n in self._inputs]})"


def _check_node_config(where: str, nodes: list[Any], j: int) -> bool:
    """Check ``nodes[j]`` of a Graph config: an input, a layer or a later use of an earlier
    node's layer, reading earlier nodes only. True for an input node."""
    node = nodes[j]
    here = f"{where} nodes[{j}]"
    kinds = ("layer", "input_shape", "same_layer_as")
    if not isinstance(node, dict) or sum(k in node for k in kinds) != 1:
        raise ConfigError(f"{here} is {show(node)}, expected an object with one of "
                          f"'layer', 'input_shape' or 'same_layer_as'")
    check_keys(here, node, {"name": "str", "inputs": "list[int]",
                            "input_shape": "list[int]", "layer": "dict",
                            "same_layer_as": "int"}, {"name", "inputs"})
    if "input_shape" in node and (node["inputs"] or not node["input_shape"]
                                  or min(node["input_shape"]) < 1):
        raise ConfigError(f"{here} is an input of shape {node['input_shape']} fed by "
                          f"{node['inputs']}, expected a positive shape and no inputs")
    if "input_shape" not in node and not all(0 <= i < j for i in node["inputs"]):
        raise ConfigError(f"{here} reads nodes {node['inputs']}, expected indices of "
                          f"earlier nodes (0 to {j - 1})")
    # a later use of a layer (weight sharing) names the node that holds the layer;
    # its parameters are declared there, once
    same = node.get("same_layer_as")
    if same is not None and not (0 <= same < j and "layer" in nodes[same]):
        raise ConfigError(f"{here} same_layer_as is {same}, expected the index of an "
                          f"earlier node with a 'layer' (0 to {j - 1})")
    return "input_shape" in node


def _check_graph_ends(where: str, config: dict[str, Any], is_input: list[bool]) -> None:
    """A Graph config's ``inputs`` are distinct input nodes (one unless ``multi``) and its
    ``output`` is a node index."""
    ins, output = config["inputs"], config["output"]
    if (not ins or len(set(ins)) != len(ins)
            or not all(0 <= i < len(is_input) and is_input[i] for i in ins)
            or (not config.get("multi", False) and len(ins) != 1)):
        raise ConfigError(f"{where} inputs is {ins}, expected distinct input nodes (one "
                          f"unless multi)")
    if not 0 <= output < len(is_input):
        raise ConfigError(f"{where} output is {output}, expected a node index (0 to "
                          f"{len(is_input) - 1})")


def _check_all_lead_to_output(where: str, nodes: list[dict[str, Any]], output: int) -> None:
    reached, todo = set(), [output]
    while todo:
        j = todo.pop()
        if j not in reached:
            reached.add(j)
            todo += nodes[j]["inputs"]
    unused = [j for j in range(len(nodes)) if j not in reached]
    if unused:
        raise ConfigError(f"{where} nodes {unused} do not lead to the output")


def _declared_node_state(nodes: list[dict[str, Any]], at: str, depth: int) -> DeclaredState:
    """The arrays the nodes' layers declare, each prefixed with the node's place among the
    nodes with a ``"layer"`` (a node with ``same_layer_as`` adds no child: its layer is
    an earlier node's)."""
    out: DeclaredState = {}
    k = 0
    for j, node in enumerate(nodes):
        if "layer" in node:
            for name, declared in declared_state_of(
                    node["layer"], at=config_path(at, f"nodes[{j}]"),
                    depth=depth + 1).items():
                out[f"{k}.{name}"] = declared
            k += 1
    return out


def _check_inputs_connected(order: list[Node], inputs: list[Node]) -> None:
    """The input nodes the output reaches (``order``) must be exactly the listed ones."""
    reached_inputs = [n for n in order if n.layer is None]
    unknown = [n.name for n in reached_inputs if n not in inputs]
    if unknown:
        raise ValueError(f"Graph: the outputs depend on input(s) {', '.join(unknown)} "
                         f"that are not listed in inputs=")
    unused = [n.name for n in inputs if n not in reached_inputs]
    if unused:
        raise ValueError(f"Graph: input(s) {', '.join(unused)} are not connected to the "
                         f"outputs")


def _first_uses(node_layers: list[Layer | None]) -> list[int | None]:
    """Per node, the index of the earlier node whose layer it calls again, or None (an
    input, or the layer's first use)."""
    first: dict[int, int] = {}
    same_as: list[int | None] = []
    for i, layer in enumerate(node_layers):
        j = i if layer is None else first.setdefault(id(layer), i)
        same_as.append(None if j == i else j)
    return same_as


def _call_copy(layer: Layer) -> Layer:
    """``layer`` for one more call site: it and every layer below it copied shallowly, so
    everything else (Parameter objects, settings, the backend) is the very same object,
    while the copy's forward rebinds a cache of its own. Made at each training forward,
    so it never falls behind the layer (``astype``, ``reset``, a changed ``p``)."""
    new = _fresh(layer, {})
    originals = {id(lay) for lay in layer.layers()}
    if any(id(lay) in originals for lay in new.layers()):
        raise TypeError(f"{layer.label}: cannot run at another graph node: a sub-layer it "
                        f"lists in children() is held where a copy cannot reach it (keep "
                        f"sub-layers in attributes, lists, tuples or dicts)")
    return new


def _fresh(value: Any, copies: dict[int, Any]) -> Any:
    """``value`` with each Layer in it replaced by its shallow copy (one copy per layer,
    in ``copies``); lists, tuples and dicts are rebuilt only where they hold a layer."""
    if isinstance(value, Layer):
        done = copies.get(id(value))
        if done is None:
            done = copies[id(value)] = copy.copy(value)
            for key, item in vars(value).items():
                new = _fresh(item, copies)
                if new is not item:
                    vars(done)[key] = new
        return done
    if isinstance(value, (list, tuple)):
        items = [_fresh(v, copies) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            out = copy.copy(value)
            out[:] = items
            return out
        return value._make(items) if hasattr(value, "_make") else type(value)(items)
    if isinstance(value, dict):
        fresh = {k: _fresh(v, copies) for k, v in value.items()}
        if all(fresh[k] is v for k, v in value.items()):
            return value
        out = copy.copy(value)
        out.update(fresh)
        return out
    return value


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
