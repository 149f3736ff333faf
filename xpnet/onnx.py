"""Export a trained model to an ONNX file, for serving it outside xpnet (onnxruntime...).

    xn.export_onnx(model, "model.onnx", input_shape=(40,))

Export is a host operation: the model's arrays are copied to the host once (from any
backend and device) and written as the graph's initializers, under their
``state_dict`` names (a tied weight once; GRU's and LSTM's regrouped into ONNX's ``W``,
``R`` and ``B``, named after the layer). The graph computes the model's inference
pass (``model(x)``, ``train=False``): Dropout is the identity, BatchNorm uses its running
statistics. The batch axis is dynamic (named ``N``); so is any axis of ``input_shape``
given as None (a language model's sequence length).

Layouts need no transposes at the boundary: xpnet's are PyTorch's, which ONNX's Conv,
pooling and BatchNormalization share (``(N, C, L)``, ``(N, C, H, W)``, weights ``(out,
in/groups, *kernel)``). Inside, the recurrent layers run ONNX's ``GRU``/``LSTM`` on
time-major ``(L, N, F)`` sequences with their gates reordered (ONNX stacks GRU's as z, r,
h where PyTorch has r, z, n, and LSTM's as i, o, f, c where PyTorch has i, f, g, o);
``linear_before_reset=1`` is PyTorch's (and xpnet's) GRU, ``n = tanh(W_in x + b_in + r *
(W_hn h + b_hn))``. Attention is written out in MatMul, Softmax and Transpose, with the
causal mask made from the sequence's length inside the graph.

Every built-in layer converts; a layer the converter does not know (a user's own, or a
subclass of a built-in one, which may compute something else) is refused with its place
in the model. Needs the ``onnx`` package (``pip install "xpnet[onnx]"``), imported only
when a model is exported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._version import __version__
from .backend import backend_of, dtype_name, to_numpy
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

#: The lowest opset written: 13 is where Softmax works along one axis and Split,
#: Squeeze and Unsqueeze take their axes as inputs.
MIN_OPSET = 13
#: The default opset: 17 has LayerNormalization, and onnxruntime 1.11 (2022) and later
#: run it.
DEFAULT_OPSET = 17


def export_onnx(model: Layer, path: str | os.PathLike | None,
                input_shape: Sequence[int | None] | Sequence[Sequence[int | None]] | None
                = None, *, opset: int = DEFAULT_OPSET, dtype: str = "float32") -> Any:
    """Write ``model``'s inference pass to ``path`` as an ONNX model; return the
    ``onnx.ModelProto``.

    Parameters
    ----------
    model : Layer
        A Sequential, a Graph or any built-in layer, on any backend and device.
    path : str or path-like or None
        Where to write the file (None: only return the model).
    input_shape : tuple, or a list of tuples for a Graph of several inputs
        The shape of one example, without the batch axis: ``(40,)``, ``(1, 28, 28)``,
        ``(L, F)``; an entry None leaves that axis dynamic (``(None,)`` for a language
        model's ids of any length). A Graph's own Input shapes are the default.
    opset : int
        The ONNX operator set, 13 or later (default 17).
    dtype : {"float32", "float64"}
        The floating dtype of the weights and of floating inputs and outputs, whatever
        the model's (default float32, which every runtime runs: onnxruntime's CPU
        kernels have no float64 Conv, Erf, GRU or LSTM). Ids (Embedding) stay int64.

    Notes
    -----
    The graph's inputs are named ``input`` (a Graph's: its Input nodes' names), its
    output ``output``; the batch axis of each is the dynamic ``N``. Raises TypeError
    naming the first layer that cannot be exported, and ValueError for an
    ``input_shape`` the model does not take (the model's own message).
    """
    onnx = _import_onnx()
    from onnx import helper

    if not isinstance(model, Layer):
        raise TypeError(f"export_onnx: model must be an xpnet Layer (a Sequential, a Graph, "
                        f"a layer), got {type(model).__name__}")
    opset = _opset(opset, onnx)
    shapes = _input_shapes(model, input_shape)
    own = _model_dtype(model)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"export_onnx: dtype must be 'float32' or 'float64', got {dtype!r}")
    kinds = ["int64" if d == "int64" else own for d in model.input_dtypes]
    out_shape = _probe(model, shapes, kinds)  # the model's own error for a bad shape

    float_type = np.dtype(dtype)
    b = _Builder(float_type, opset, {id(p): name for name, p in model.named_state()})
    if isinstance(model, Graph):
        in_names = [model._order[i].name for i in model._input_index]
    else:
        in_names = ["input"]
    if "output" in in_names:
        raise ValueError("export_onnx: the Graph has an Input named 'output', which is the "
                         "exported graph's output name; rename the Input")
    b.reserve([*in_names, "output"])
    out = _emit(b, model, list(in_names), "")
    b.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))

    def value_info(name: str, kind: np.dtype, shape: Sequence[int | str | None]) -> Any:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(kind),
                                             list(shape))

    out_dims: list[int | str | None] = ["N", *out_shape[1:]]
    if any(d is None for s in shapes for d in s):  # which output axes follow a dynamic
        # input axis is not worked out: all but the batch and the last are left unnamed
        out_dims = ["N", *[None] * (len(out_shape) - 2), out_shape[-1]][:len(out_shape)]
    in_types = [np.dtype(np.int64) if k == "int64" else float_type for k in kinds]
    graph = helper.make_graph(
        b.nodes, type(model).__name__,
        [value_info(n, t, ["N", *s]) for n, t, s in zip(in_names, in_types, shapes)],
        [value_info("output", float_type, out_dims)],
        initializer=b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph, opset_imports=opsets, producer_name="xpnet", producer_version=__version__,
        # the oldest IR version that carries this opset, so older runtimes read the file
        ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _model_dtype(model: Layer) -> str:
    """The floating dtype of the model's parameters, what it is probed with (float32 for
    a model without any)."""
    for _, p in model.named_state():
        name = dtype_name(backend_of(p.value).xp, p.value.dtype)
        if name in ("float16", "bfloat16", "float32", "float64"):
            return name
    return "float32"


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError('export_onnx needs the onnx package: pip install "xpnet[onnx]" '
                          "(or pip install onnx)") from None
    return onnx


def _opset(opset: Any, onnx: Any) -> int:
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ValueError(f"export_onnx: opset must be an int from {MIN_OPSET} to {top} (the "
                         f"installed onnx's newest), got {opset!r}")
    return opset


def _input_shapes(model: Layer, input_shape: Any) -> list[tuple[int | None, ...]]:
    """One per-example shape per model input, checked."""
    count = model.input_count if isinstance(model, Graph) else 1
    if input_shape is None:
        if not isinstance(model, Graph):
            raise ValueError("export_onnx: input_shape is needed: the shape of one example "
                             "without the batch axis, e.g. input_shape=(40,) or (1, 28, 28)")
        return [model._order[i].shape for i in model._input_index]
    out = [_example_shape(s, input_shape) for s in _shape_per_input(input_shape, count)]
    if isinstance(model, Graph):
        _check_graph_input_shapes(model, out)
    return out


def _shape_per_input(input_shape: Any, count: int) -> list[Any]:
    """``input_shape`` as a list with one (unchecked) shape per model input: a model with
    one input takes a bare shape or a list holding one shape."""
    one_in_list = (isinstance(input_shape, (list, tuple)) and len(input_shape) == 1
                   and isinstance(input_shape[0], (list, tuple)))
    given = list(input_shape) if count > 1 or one_in_list else [input_shape]
    if count > 1 and (len(given) != count or
                      not all(isinstance(s, (list, tuple)) for s in given)):
        raise ValueError(f"export_onnx: the model takes {count} inputs; input_shape must be "
                         f"a list of {count} shapes, got {input_shape!r}")
    return given


def _example_shape(s: Any, input_shape: Any) -> tuple[int | None, ...]:
    """One input's shape as a tuple of positive ints or None (an int ``n`` means
    ``(n,)``); ``input_shape`` is the whole argument, for the message."""
    s = (s,) if isinstance(s, int) else s
    if not isinstance(s, (list, tuple)) or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1)
            for d in s):
        raise ValueError(f"export_onnx: input_shape must be a tuple of positive ints (or "
                         f"None for a dynamic axis), without the batch axis; got "
                         f"{input_shape!r}")
    return tuple(s)


def _check_graph_input_shapes(model: Graph, shapes: list[tuple[int | None, ...]]) -> None:
    """A Graph declares its inputs' shapes; the given ones must match them."""
    for node_index, s in zip(model._input_index, shapes):
        node = model._order[node_index]
        if s != node.shape:
            raise ValueError(f"export_onnx: input {node.name} of the Graph has shape "
                             f"(N, {', '.join(map(str, node.shape))}); input_shape "
                             f"gives {s}")


def _probe(model: Layer, shapes: list[tuple[int | None, ...]], kinds: list[str]
           ) -> tuple[int, ...]:
    """The output shape of ``model`` on zeros of the input shapes, batch 1 (dynamic axes
    1): a shape the model does not take fails here with the model's own message."""
    be = model.backend
    xs = [be.asarray(np.zeros((1, *(1 if d is None else d for d in s))), dtype=k)
          for s, k in zip(shapes, kinds)]
    try:
        y = model.forward(xs if model.multi_input else xs[0], train=False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"export_onnx: the model does not take inputs of shape "
                         f"{', '.join(str(('N', *s)) for s in shapes)}: {e}") from None
    return tuple(int(d) for d in y.shape)


class _Builder:
    """The graph being written: nodes, initializers, fresh names."""

    def __init__(self, float_type: np.dtype, opset: int, names: dict[int, str]):
        self.float_type, self.opset = float_type, opset
        self.param_names = names  # id(Parameter) -> its state_dict name
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._taken: set[str] = set()
        self._params_done: dict[int, str] = {}
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper

    def reserve(self, names: list[str]) -> None:
        """Names that ``fresh`` never gives (the graph's inputs and output)."""
        self._taken.update(names)

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1,
           **attrs: Any) -> Any:
        """Add one node; its output name (or names, for ``outputs > 1``)."""
        outs = [self.fresh(f"{hint}/{op_type}" + (f":{i}" if outputs > 1 else ""))
                for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs,
                                                name=self.fresh(f"{hint}/{op_type}#node"),
                                                **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float, hint: str) -> str:
        """A 0-d constant of the export's floating dtype."""
        return self.const(np.asarray(value, dtype=self.float_type), hint)

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def host(self, p: Parameter) -> np.ndarray:
        """``p``'s value copied to the host, in the export's floating dtype."""
        value = p.value
        if "bfloat16" in str(value.dtype):  # NumPy has no bfloat16; float32 holds it exactly
            xp = backend_of(value).xp
            value = xp.astype(value, xp.float32)
        return np.asarray(to_numpy(value)).astype(self.float_type)

    def param(self, p: Parameter) -> str:
        """The initializer holding ``p`` as it is, under its state_dict name (once)."""
        done = self._params_done.get(id(p))
        if done is None:
            name = self.fresh(self.param_names.get(id(p), p.name))
            self.initializers.append(self.numpy_helper.from_array(self.host(p), name))
            done = self._params_done[id(p)] = name
        return done

    def reduce_mean(self, x: str, axes: list[int], hint: str) -> str:
        """Mean over ``axes``, kept (the axes became an input at opset 18)."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes, f"{hint}/axes")], hint,
                           keepdims=1)
        return self.op("ReduceMean", [x], hint, axes=axes, keepdims=1)


# -- converters: (builder, layer, input names, path) -> output name -------------------

Converter = Callable[[_Builder, Any, list[str], str], str]
_CONVERTERS: dict[type, Converter] = {}


def _converts(*kinds: type) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for kind in kinds:
            _CONVERTERS[kind] = fn
        return fn

    return register


def _emit(b: _Builder, layer: Layer, ins: list[str], path: str) -> str:
    """Write ``layer`` applied to ``ins``; its output's name. ``path`` is the layer's place
    (``"3"``, ``"3.self_attn"``, a Graph node's name; ``""`` for the model itself)."""
    def inner(step: str) -> str:
        return f"{path}.{step}" if path else step

    if type(layer) is Sequential:
        x = ins[0]
        for i, child in enumerate(layer):
            x = _emit(b, child, [x], inner(str(i)))
        return x
    if type(layer) is Graph:
        values: list[Any] = [None] * len(layer._order)
        for i, name in zip(layer._input_index, ins):
            values[i] = name
        for i, node_layer in enumerate(layer._node_layers):
            if node_layer is not None:  # a shared layer: its one set of initializers
                args = [values[j] for j in layer._node_inputs[i]]
                values[i] = _emit(b, node_layer, args, inner(layer._order[i].name))
        return values[layer._output_index]
    fn = _CONVERTERS.get(type(layer))
    if fn is None:
        where = f"layer {path}" if path else "the model"
        kind = type(layer)
        known = ", ".join(sorted(["Sequential", "Graph", *(k.__name__ for k in _CONVERTERS)]))
        raise TypeError(
            f"export_onnx: cannot export {where}, {layer.label} (class "
            f"{kind.__module__}.{kind.__qualname__}): no ONNX conversion is known for it. "
            f"Exported are xpnet's built-in layers ({known}); a subclass of one is refused "
            f"too, since its forward may compute something else")
    return fn(b, layer, ins, path or type(layer).__name__)


def _dense(b: _Builder, x: str, weight: Parameter, bias: Parameter | None, path: str) -> str:
    """``x @ W.T + b`` on ``(..., in)``: MatMul by the weight's transpose (a Transpose
    node of the stored weight, which runtimes fold, so a tied weight is stored once)."""
    w_t = b.op("Transpose", [b.param(weight)], path, perm=[1, 0])
    y = b.op("MatMul", [x, w_t], path)
    return y if bias is None else b.op("Add", [y, b.param(bias)], path)


@_converts(Linear)
def _linear(b: _Builder, layer: Linear, ins: list[str], path: str) -> str:
    return _dense(b, ins[0], layer.weight, layer.bias, path)


@_converts(ReLU, Sigmoid, Tanh)
def _elementwise(b: _Builder, layer: Layer, ins: list[str], path: str) -> str:
    op = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}[type(layer)]
    return b.op(op, ins, path)


@_converts(Softmax)
def _softmax(b: _Builder, layer: Softmax, ins: list[str], path: str) -> str:
    return b.op("Softmax", ins, path, axis=-1)


@_converts(LeakyReLU)
def _leaky_relu(b: _Builder, layer: LeakyReLU, ins: list[str], path: str) -> str:
    return b.op("LeakyRelu", ins, path, alpha=float(layer.negative_slope))


@_converts(SiLU)
def _silu(b: _Builder, layer: SiLU, ins: list[str], path: str) -> str:
    return b.op("Mul", [ins[0], b.op("Sigmoid", ins, path)], path)


@_converts(GELU)
def _gelu(b: _Builder, layer: GELU, ins: list[str], path: str) -> str:
    if b.opset >= 20:
        return b.op("Gelu", ins, path, approximate=layer.approximate)
    x = ins[0]
    if layer.approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", [b.op("Mul", [x, x], path), x], path)
        inner = b.op("Add", [x, b.op("Mul", [cube, b.scalar(0.044715, f"{path}/c")], path)],
                     path)
        t = b.op("Tanh", [b.op("Mul", [inner, b.scalar(math.sqrt(2 / math.pi),
                                                       f"{path}/k")], path)], path)
    else:  # x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2
        t = b.op("Erf", [b.op("Mul", [x, b.scalar(1 / math.sqrt(2), f"{path}/k")], path)],
                 path)
    one_plus = b.op("Add", [t, b.scalar(1.0, f"{path}/one")], path)
    return b.op("Mul", [b.op("Mul", [x, b.scalar(0.5, f"{path}/half")], path), one_plus],
                path)


@_converts(Dropout)
def _dropout(b: _Builder, layer: Dropout, ins: list[str], path: str) -> str:
    return ins[0]  # the identity in inference


@_converts(Conv1D, Conv2D)
def _conv(b: _Builder, layer: Any, ins: list[str], path: str) -> str:
    inputs = [ins[0], b.param(layer.weight)] + ([b.param(layer.bias)] if layer.bias else [])
    return b.op("Conv", inputs, path, kernel_shape=list(layer.kernel_size),
                strides=list(layer.stride), pads=list(layer.padding) * 2,
                dilations=list(layer.dilation), group=layer.groups)


@_converts(MaxPool1D, MaxPool2D, AvgPool1D, AvgPool2D)
def _pool(b: _Builder, layer: Any, ins: list[str], path: str) -> str:
    op = "MaxPool" if layer.mode == "max" else "AveragePool"
    return b.op(op, ins, path, kernel_shape=list(layer.kernel_size),
                strides=list(layer.stride))


@_converts(GlobalAvgPool1D, GlobalAvgPool2D)
def _global_pool(b: _Builder, layer: Any, ins: list[str], path: str) -> str:
    return b.op("Flatten", [b.op("GlobalAveragePool", ins, path)], path, axis=1)


@_converts(BatchNorm1D, BatchNorm2D)
def _batch_norm(b: _Builder, layer: Any, ins: list[str], path: str) -> str:
    inputs = [ins[0]] + [b.param(p) for p in (layer.weight, layer.bias, layer.running_mean,
                                              layer.running_var)]
    return b.op("BatchNormalization", inputs, path, epsilon=float(layer.eps))


@_converts(LayerNorm)
def _layer_norm(b: _Builder, layer: LayerNorm, ins: list[str], path: str) -> str:
    x, d = ins[0], layer.normalized_shape
    if b.opset >= 17:
        scale = (b.param(layer.weight) if layer.weight is not None else
                 b.const(np.ones(d, dtype=b.float_type), f"{path}/ones"))
        inputs = [x, scale] + ([b.param(layer.bias)] if layer.bias is not None else [])
        return b.op("LayerNormalization", inputs, path, axis=-1, epsilon=float(layer.eps))
    centred = b.op("Sub", [x, b.reduce_mean(x, [-1], path)], path)
    var = b.reduce_mean(b.op("Mul", [centred, centred], path), [-1], path)
    std = b.op("Sqrt", [b.op("Add", [var, b.scalar(layer.eps, f"{path}/eps")], path)], path)
    y = b.op("Div", [centred, std], path)
    if layer.weight is not None:
        y = b.op("Mul", [y, b.param(layer.weight)], path)
    if layer.bias is not None:
        y = b.op("Add", [y, b.param(layer.bias)], path)
    return y


@_converts(Flatten)
def _flatten(b: _Builder, layer: Flatten, ins: list[str], path: str) -> str:
    return b.op("Flatten", ins, path, axis=1)


@_converts(Reshape)
def _reshape(b: _Builder, layer: Reshape, ins: list[str], path: str) -> str:
    # 0 keeps the input's (dynamic) batch size; xpnet's shape entries are all >= 1
    return b.op("Reshape", [ins[0], b.ints([0, *layer.shape], f"{path}/shape")], path)


@_converts(Add)
def _add(b: _Builder, layer: Add, ins: list[str], path: str) -> str:
    return b.op("Sum", ins, path)


@_converts(Concat)
def _concat(b: _Builder, layer: Concat, ins: list[str], path: str) -> str:
    return b.op("Concat", ins, path, axis=layer.axis)


@_converts(Embedding)
def _embedding(b: _Builder, layer: Embedding, ins: list[str], path: str) -> str:
    # int64 ids, as the graph's input declares them; runtimes refuse ids out of range
    return b.op("Gather", [b.param(layer.weight), ins[0]], path, axis=0)


def _axis_size(b: _Builder, x: str, axis: int, path: str) -> str:
    """The length of ``x``'s axis ``axis`` as a 1-D int64 tensor of one entry."""
    shape = b.op("Shape", [x], path)
    return b.op("Gather", [shape, b.ints([axis], f"{path}/axis")], path, axis=0)


@_converts(PositionalEmbedding)
def _positional(b: _Builder, layer: PositionalEmbedding, ins: list[str], path: str) -> str:
    length = _axis_size(b, ins[0], 1, path)  # W[:L], L the input's (dynamic) length
    rows = b.op("Slice", [b.param(layer.weight), b.ints([0], f"{path}/start"), length,
                          b.ints([0], f"{path}/axes")], path)
    return b.op("Add", [ins[0], rows], path)


def _gate_rows(b: _Builder, p: Parameter, order: list[int], count: int) -> np.ndarray:
    """``p``'s host value with its ``count`` stacked gate blocks in ``order``."""
    value = b.host(p)
    blocks = np.split(value, count, axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


@_converts(GRU, LSTM)
def _recurrent(b: _Builder, layer: Any, ins: list[str], path: str) -> str:
    gru = isinstance(layer, GRU)
    # PyTorch's (r, z, n) -> ONNX's (z, r, h); (i, f, g, o) -> (i, o, f, c)
    order, count = ([1, 0, 2], 3) if gru else ([0, 3, 1, 2], 4)
    hid = layer.hidden_size
    dirs = ("", "_reverse")[:1 + layer.bidirectional]
    w = np.stack([_gate_rows(b, getattr(layer, f"weight_ih_l0{s}"), order, count)
                  for s in dirs])
    r = np.stack([_gate_rows(b, getattr(layer, f"weight_hh_l0{s}"), order, count)
                  for s in dirs])
    inputs = [b.op("Transpose", ins, path, perm=[1, 0, 2]),  # (N, L, F) -> (L, N, F)
              b.const(w, f"{path}.W"), b.const(r, f"{path}.R")]
    if layer.use_bias:
        bias = np.stack([np.concatenate(
            [_gate_rows(b, getattr(layer, f"bias_ih_l0{s}"), order, count),
             _gate_rows(b, getattr(layer, f"bias_hh_l0{s}"), order, count)]) for s in dirs])
        inputs.append(b.const(bias, f"{path}.B"))
    attrs: dict[str, Any] = {"hidden_size": hid,
                             "direction": "bidirectional" if layer.bidirectional else "forward"}
    if gru:
        attrs["linear_before_reset"] = 1
    outs = b.op("GRU" if gru else "LSTM", inputs, path, outputs=2 if gru else 3, **attrs)
    width = len(dirs) * hid
    if layer.return_sequences:  # Y (L, D, N, H) -> (N, L, D, H) -> (N, L, D H)
        y = b.op("Transpose", [outs[0]], path, perm=[2, 0, 1, 3])
        return b.op("Reshape", [y, b.ints([0, 0, width], f"{path}/shape")], path)
    # Y_h (D, N, H): the forward direction's after the last step, the reverse one's
    # after the first, side by side as (N, D H)
    y = b.op("Transpose", [outs[1]], path, perm=[1, 0, 2])
    return b.op("Reshape", [y, b.ints([0, width], f"{path}/shape")], path)


@_converts(MultiHeadAttention)
def _attention(b: _Builder, layer: MultiHeadAttention, ins: list[str], path: str) -> str:
    e, h = layer.embed_dim, layer.num_heads
    d = e // h
    qkv = _dense(b, ins[0], layer.in_proj_weight, layer.in_proj_bias, f"{path}.in_proj")
    # (N, L, 3E) -> (N, L, 3, H, d) -> (3, N, H, L, d)
    qkv = b.op("Reshape", [qkv, b.ints([0, 0, 3, h, d], f"{path}/heads")], path)
    qkv = b.op("Transpose", [qkv], path, perm=[2, 0, 3, 1, 4])
    q, k, v = (b.op("Gather", [qkv, b.const(np.asarray(i, dtype=np.int64), f"{path}/{n}")],
                    path, axis=0) for i, n in enumerate("qkv"))
    q = b.op("Mul", [q, b.scalar(1.0 / math.sqrt(d), f"{path}/scale")], path)
    s = b.op("MatMul", [q, b.op("Transpose", [k], path, perm=[0, 1, 3, 2])], path)
    if layer.causal:
        s = b.op("Add", [s, _causal_mask(b, ins[0], path)], path)
    p = b.op("Softmax", [s], path, axis=-1)
    heads = b.op("Transpose", [b.op("MatMul", [p, v], path)], path, perm=[0, 2, 1, 3])
    joined = b.op("Reshape", [heads, b.ints([0, 0, e], f"{path}/join")], path)
    return _dense(b, joined, layer.out_weight, layer.out_bias, f"{path}.out_proj")


def _causal_mask(b: _Builder, x: str, path: str) -> str:
    """``(L, L)`` from ``x``'s length: 0 where key ``j <= i``, else half the dtype's most
    negative number (as xpnet's layer: finite, so the masked weights are exactly 0)."""
    shape = b.op("Shape", [x], path)
    length = b.op("Gather", [shape, b.const(np.asarray(1, dtype=np.int64),
                                            f"{path}/len_axis")], path, axis=0)
    i = b.op("Range", [b.const(np.asarray(0, dtype=np.int64), f"{path}/zero"), length,
                       b.const(np.asarray(1, dtype=np.int64), f"{path}/step")], path)
    rows = b.op("Unsqueeze", [i, b.ints([1], f"{path}/col")], path)
    cols = b.op("Unsqueeze", [i, b.ints([0], f"{path}/row")], path)
    above = b.op("Cast", [b.op("Greater", [cols, rows], path)], path,
                 to=b.helper.np_dtype_to_tensor_dtype(b.float_type))
    return b.op("Mul", [above, b.scalar(np.finfo(b.float_type).min / 2, f"{path}/neg")],
                path)


@_converts(TransformerBlock)
def _transformer_block(b: _Builder, layer: TransformerBlock, ins: list[str], path: str) -> str:
    x = ins[0]
    a = _emit(b, layer.self_attn, [_emit(b, layer.norm1, [x], f"{path}.norm1")],
              f"{path}.self_attn")
    x = b.op("Add", [x, a], path)
    h = _emit(b, layer.linear1, [_emit(b, layer.norm2, [x], f"{path}.norm2")],
              f"{path}.linear1")
    h = _emit(b, layer.linear2, [_emit(b, layer.activation, [h], f"{path}.activation")],
              f"{path}.linear2")
    return b.op("Add", [x, h], path)
