"""Parameter, Layer and Sequential: the contract every layer keeps.

A layer computes ``y = forward(x)`` and, given ``dy = dC/dy``, ``backward(dy)``
returns ``dC/dx`` and ADDS ``dC/dparam`` into each parameter's ``.grad``. Forward
keeps what backward needs only when ``train`` is true. Arrays stay where they are:
a layer reads its namespace from its input and never moves data to the host.

Every Layer subclass with a public name is registered as it is defined, so a
checkpoint's description can name it; :func:`build_layer` rebuilds a layer from
``layer_config(layer)`` through the class's ``from_config``, and
:func:`declared_state_of` says which arrays it would hold, from the description alone
(checkpoints check a file against that before building anything).
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import summary as summary_mod
from .._args import FLOAT_DTYPES
from .._compat import namespace
from .._jsonconfig import ConfigError, check_config, check_keys, show, signature
from ..backend import (
    Backend,
    backend_of,
    check_same_place,
    current,
    dtype_name,
    resolve,
    to_numpy,
)
from ..backends import adapter_of
from .symbolic import connect, is_symbolic

if TYPE_CHECKING:
    from ..losses import Loss


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (as PyTorch's method returns it)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _host_copy(value: Any) -> np.ndarray:
    """A NumPy array from an array of any library (through its adapter, DLPack or NumPy).
    bfloat16, which NumPy lacks (torch's ``numpy()`` refuses it), arrives as float32."""
    if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
        try:
            adapter_of(value)
        except TypeError:  # a library xpnet has no adapter for
            return np.from_dlpack(value)
        if "bfloat16" in str(getattr(value, "dtype", "")):
            xp = backend_of(value).xp
            value = xp.astype(value, xp.float32)  # exact: bfloat16 is float32's top half
    host = np.asarray(to_numpy(value))
    return host.astype(np.float32) if host.dtype.name == "bfloat16" else host  # ml_dtypes'


def _state_items(layer: Any, state: Any) -> list[tuple[str, Any]]:
    """``load_state_dict``'s ``state`` as ``(name, value)`` pairs: a mapping's items, or
    the pairs themselves (what ``OrderedDict(pairs)`` takes); every name a string."""
    who = f"load_state_dict for {type(layer).__name__}"
    if isinstance(state, Mapping):
        items = list(state.items())
    else:
        if isinstance(state, (str, bytes)) or not hasattr(state, "__iter__"):
            raise TypeError(f"{who}: state must be a mapping of names to arrays (a "
                            f"state_dict) or (name, value) pairs, got {type(state).__name__}")
        items = list(state)
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"{who}: state must be a mapping of names to arrays (a "
                                f"state_dict) or (name, value) pairs; item {i} is "
                                f"{_short(item)} ({type(item).__name__})")
    for key, _ in items:
        if not isinstance(key, str):
            example = next(iter(dict(layer.named_state())), "0.weight")
            raise TypeError(f"{who}: key {_short(key)} ({type(key).__name__}) is not a "
                            f"string; the keys are parameter names such as {example!r}")
    return [tuple(item) for item in items]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Every layer type a checkpoint may name: filled by ``Layer.__init_subclass__``.
LAYER_TYPES: dict[str, type[Layer]] = {}

#: What a description declares a model holds: every array, by its ``named_state`` name,
#: with its shape and dtype (None where the description names none: float32 or float64).
DeclaredState = dict[str, tuple[tuple[int, ...], str | None]]

#: How deep Sequential and Graph descriptions may nest.
MAX_DEPTH = 64


class Parameter:
    """A trainable array with its gradient.

    ``value`` and ``grad`` have the same shape. ``grad`` is ``None`` until a backward
    pass adds to it, and again after ``zero_grad()``; optimizers rebind ``value``, so
    immutable arrays (JAX) work too. ``trainable=False`` marks state that is saved
    and moved with the model but not optimised (running statistics). Set on a
    parameter, it freezes it: ``model.parameters()`` leaves it out, and an optimizer
    made before leaves it where it is (no step, decay or momentum; compiled steps are
    made again). Checkpoints save the flag and ``xn.load`` restores it.
    """

    __slots__ = ("name", "value", "grad", "trainable", "statistic")

    def __init__(self, name: str, value: Any, trainable: bool = True):
        self.name = name
        self.value = value
        self.grad: Any = None
        self.trainable = trainable
        #: made not trainable (a running statistic), unlike a weight frozen later: mixed
        #: precision casts weights, frozen or not, and never statistics
        self.statistic = not trainable

    def accumulate(self, g: Any) -> None:
        """Add ``g`` into ``grad`` (gradients from several paths sum)."""
        self.grad = g if self.grad is None else self.grad + g

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


class Layer:
    """Base class of every layer and model.

    Subclasses define ``forward(x, *, train=True)`` and ``backward(dy)``, list their
    own parameters in ``self._params`` and their sub-layers in ``children()``, and
    return their constructor arguments from ``get_config()`` so checkpoints can
    rebuild them.

    A layer with parameters declares them once, in a classmethod
    ``param_shapes(config) -> {name: shape}``: every array the layer holds, named as
    ``named_state()`` names them (its own, and those of the sub-layers it makes itself:
    TransformerBlock's ``"linear1.weight"``), from ``config`` as ``get_config()``
    returns it. The constructor makes the arrays from it, and a checkpoint checks a
    file's arrays against it before building anything. Making a layer whose arrays
    differ from its declaration (or that makes parameters and declares none) raises
    TypeError at once, naming both. Layers built from other layers' descriptions
    (Sequential, Graph) override ``declared_state`` instead; layers without arrays
    declare nothing.
    """

    #: Whether forward takes a list of inputs (merge layers such as Add and Concat).
    multi_input = False
    #: The dtype of the input a graph or a summary should probe the layer with: None for
    #: the parameters' floating dtype, ``"int64"`` for layers that read ids (Embedding).
    input_dtype: str | None = None
    #: For a layer that reads integer ids (Embedding): how many there are, so ids still in
    #: host memory are checked to lie in ``[0, id_count)`` before they are uploaded.
    id_count: int | None = None
    #: Whether the layer treats each position (each row along the leading axes) on its
    #: own, so that a sequence may be fed to it a few positions at a time (cached
    #: generation, :func:`xpnet.generate`): Linear, LayerNorm, activations, Embedding.
    positionwise = False
    #: The Loss that ``fit`` last trained this model with; ``evaluate``'s default; saved
    #: in checkpoints (``xn.save`` records it, ``xn.load`` restores it). None: none yet.
    loss: Loss | None = None

    @property
    def input_dtypes(self) -> list[str | None]:
        """``input_dtype`` for each array ``forward`` takes (a Graph may take several)."""
        return [self.input_dtype]

    @property
    def input_id_counts(self) -> list[int | None]:
        """``id_count`` for each array ``forward`` takes (a Graph may take several)."""
        return [self.id_count]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # checked against param_shapes once it has returned
            cls.__init__ = _checked_init(vars(cls)["__init__"])
        if cls.__name__.startswith("_") or cls.forward is Layer.forward:
            return  # private or abstract: nothing a checkpoint could name
        LAYER_TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
        # the short name belongs to the first class that takes it (xpnet's own are first)
        LAYER_TYPES.setdefault(cls.__name__, cls)

    def __init__(self, *, name: str | None = None):
        self.name = name
        self._params: list[Parameter] = []
        self._where = ""

    # -- the two passes ---------------------------------------------------------
    def forward(self, x: Any, *, train: bool = True) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def backward_params(self, dy: Any) -> None:
        """Like ``backward`` but only for the parameters: the input gradient is not
        needed (the layer reads the data), so layers that can skip it do."""
        self.backward(dy)

    def decode(self, x: Any, state: Any) -> Any:
        """Inference on the next few positions of a sequence ``x (N, t, ...)``, after the
        ``state.position`` positions already seen, whose keys and values (attention)
        ``state.cache`` holds: what :func:`xpnet.generate` calls, so each new token
        costs one position. A ``positionwise`` layer runs ``forward``; a layer that mixes
        positions defines its own; others cannot decode."""
        if self.positionwise:
            return self.forward(x, train=False)
        raise TypeError(f"{self.label} cannot decode a sequence a few positions at a time "
                        f"(it mixes positions and keeps no cache); generate with "
                        f"use_cache=False")

    def __call__(self, *xs: Any) -> Any:
        """Inference: ``forward(x, train=False)``. On symbolic tensors from
        ``xn.Input``, adds this layer to the graph being built instead."""
        if is_symbolic(xs):
            return connect(self, xs)
        if self.multi_input:  # layer(a, b) or layer([a, b])
            one_list = len(xs) == 1 and isinstance(xs[0], (list, tuple))
            return self.forward(list(xs[0] if one_list else xs), train=False)
        if len(xs) != 1:
            raise TypeError(f"{self.label} takes one input, got {len(xs)}")
        return self.forward(xs[0], train=False)

    def _require_cache(self, value: Any) -> Any:
        if value is None:
            raise RuntimeError(
                f"{self.label}: backward() needs a forward(x, train=True) before it"
            )
        return value

    # -- structure ---------------------------------------------------------------
    def children(self) -> list[Layer]:
        return []

    def named_children(self) -> list[tuple[str, Layer]]:
        """``(name, layer)`` for each sub-layer: its index by default; a composite layer
        that mirrors a PyTorch module overrides this with that module's attribute names
        (``"self_attn"``, ``"linear1"``) so the dotted parameter names match."""
        return [(str(i), child) for i, child in enumerate(self.children())]

    def named_state(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        """Every array of the model, trainable or not, with dotted names. A parameter
        that several layers hold (a tied weight: ``Linear.tied_to(embedding)``) is
        listed once, under the name where the walk meets it first (see :meth:`ties`)."""
        seen: set[int] = set()
        out = []
        for name, p, _ in self._walk_state(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
        return out

    def _walk_state(self, prefix: str = "") -> list[tuple[str, Parameter, Layer]]:
        """``(name, parameter, the layer holding it)`` for every array of every layer,
        depth first, a tied parameter at each of its places."""
        out = [(prefix + p.name, p, self) for p in self._params]
        for name, child in self.named_children():
            out += child._walk_state(f"{prefix}{name}.")
        return out

    def ties(self) -> dict[str, str]:
        """``{name: the name it is listed under}`` for each parameter held at a second
        place in the model (a tied output head's ``"7.weight"`` -> ``"0.weight"``, the
        embedding's): what ``named_state`` and ``state_dict`` leave out, and checkpoints
        record so that ``xn.load`` ties them again."""
        first: dict[int, str] = {}
        out = {}
        for name, p, _ in self._walk_state():
            if id(p) in first:
                out[name] = first[id(p)]
            else:
                first[id(p)] = name
        return out

    def tie(self, name: str, to: str) -> None:
        """Make the parameter called ``name`` the very Parameter called ``to`` (names as
        :meth:`_walk_state` gives them): one array, updated once, its gradient the sum
        over both places, as PyTorch's ``head.weight = embedding.weight``. The two must
        have the same shape; ``name``'s own array is dropped."""
        walk = {n: (p, owner) for n, p, owner in self._walk_state()}
        for what in (name, to):
            if what not in walk:
                raise ValueError(f"{self.label}: tie({name!r}, {to!r}): no parameter "
                                 f"{what!r}; the model has {', '.join(walk)}")
        (old, owner), (new, _) = walk[name], walk[to]
        if old is new:
            return
        if old.shape != new.shape:
            raise ValueError(f"{self.label}: tie({name!r}, {to!r}): shapes {old.shape} and "
                             f"{new.shape} differ")
        owner._params = [new if p is old else p for p in owner._params]
        for attr, value in list(vars(owner).items()):
            if value is old:
                setattr(owner, attr, new)

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [(n, p) for n, p in self.named_state() if p.trainable]

    def arrays(self, *, copy: bool = False) -> list[Any]:
        """Every array of the model (parameters and running statistics), in
        ``named_state`` order, on their device: the one way the model's state leaves it
        and (with :meth:`bind`) comes back, for compiled steps, snapshots, EarlyStopping's
        best weights and the data-parallel broadcast. ``copy``: device copies, which
        later in-place updates do not change."""
        values = [p.value for _, p in self.named_state()]
        if copy:
            values = [namespace(v).asarray(v, copy=True) for v in values]
        return values

    def bind(self, arrays: list[Any]) -> None:
        """Put ``arrays`` (from :meth:`arrays`, or a compiled step's results) in place of
        the model's, in the same order; gradients are left as they are."""
        state = self.named_state()
        arrays = list(arrays)
        if len(arrays) != len(state):
            raise ValueError(f"{self.label}: bind got {len(arrays)} arrays, the model holds "
                             f"{len(state)}")
        for (_, p), a in zip(state, arrays):
            p.value = a

    # -- weights in and out, by PyTorch's names -----------------------------------
    def state_dict(self, *, tied: bool = False) -> OrderedDict[str, np.ndarray]:
        """Every array of the model as host NumPy copies, by the names PyTorch gives the
        equivalent module (``"0.weight"``, ``"1.running_mean"``). A tied parameter is
        listed once, under its first name; ``tied=True`` lists it under each of its names,
        as PyTorch's ``state_dict`` does (so a tied torch model loads it strictly)."""
        out = OrderedDict((name, np.array(to_numpy(p.value), copy=True))
                          for name, p in self.named_state())
        if tied:
            for alias, name in self.ties().items():
                out[alias] = out[name]
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Set the model's arrays from ``state``: NumPy arrays, torch tensors (CPU or
        CUDA, bfloat16 included), arrays of any xpnet backend, or anything with
        ``__dlpack__``, by name: a mapping (a ``state_dict``) or ``(name, value)`` pairs.
        A tied parameter may come under any of its names (PyTorch lists it under each).

        Values go to each parameter's backend and device, in its dtype. PyTorch's
        ``num_batches_tracked`` entries are ignored. A mis-shaped entry is always an
        error; with ``strict`` so are missing and unexpected names. One ValueError lists
        every problem and nothing is changed. Returns ``(missing_keys, unexpected_keys)``.
        """
        own = dict(self.named_state())
        given = {k: v for k, v in _state_items(self, state)
                 if not k.endswith("num_batches_tracked")}
        problems = []
        for alias, name in self.ties().items():  # a tied parameter by its other name
            if alias in given:
                value = given.pop(alias)
                if name not in given:
                    given[name] = value
                elif tuple(getattr(value, "shape", ())) != own[name].shape:
                    problems.append(f"{alias} (tied to {name}): shape "
                                    f"{tuple(getattr(value, 'shape', ()))} given, the model "
                                    f"has {own[name].shape}")
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        hosts = {}
        for name in own:
            if name in given:
                hosts[name] = _host_copy(given[name])
                if tuple(hosts[name].shape) != own[name].shape:
                    problems.append(f"{name}: shape {tuple(hosts[name].shape)} given, the model "
                                    f"has {own[name].shape}")
        if strict:
            problems += [f"missing: {', '.join(missing)}"] if missing else []
            problems += [f"unexpected: {', '.join(unexpected)}"] if unexpected else []
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__}: "
                             + "; ".join(problems))
        for name, host in hosts.items():
            p = own[name]
            be = backend_of(p.value)
            p.value = be.asarray(host, dtype=dtype_name(be.xp, p.value.dtype))
            p.grad = None
        return LoadResult(missing, unexpected)

    def parameters(self) -> list[Parameter]:
        """The trainable parameters, in a fixed order."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for _, p in self.named_state():
            p.grad = None

    def layers(self) -> Iterator[Layer]:
        """This layer and every layer below it, depth first."""
        yield self
        for child in self.children():
            yield from child.layers()

    @property
    def label(self) -> str:
        """How error messages name this layer: its place in the model and its repr."""
        return f"{self._where} {self!r}".strip() if self._where else repr(self)

    # -- where the parameters live -----------------------------------------------
    @property
    def backend(self) -> Backend:
        """The Backend of this layer's parameters (the current one if it has none)."""
        state = self.named_state()
        return backend_of(state[0][1].value) if state else current()

    def to(self, backend: str | Backend | None = None, device: str | None = None) -> Layer:
        """Move every parameter to another backend/device, keeping dtypes. Returns self.

        A device alone (``to("cpu")``, ``to("cuda")``, ``to(device="cuda:1")``) keeps
        the model's library where it can use that device, else picks one
        (:func:`xpnet.backend.for_device`: NumPy for the CPU; CuPy, then torch, then
        JAX for a GPU) or raises saying what to write (``to("torch", "cuda")``)."""
        if backend is None and device is None:
            raise TypeError(f"{self.label}.to: give a backend, a device or both, such as "
                            f"to('torch', 'cuda'), to('cpu') or to(device='cuda')")
        be = resolve(backend, device, like=self.backend, call="to")
        for _, p in self.named_state():
            name = dtype_name(backend_of(p.value).xp, p.value.dtype)
            p.value = be.asarray(to_numpy(p.value), dtype=name)
            p.grad = None
        return self

    def astype(self, dtype: str) -> Layer:
        """Convert every floating parameter to ``dtype`` ("float32" or "float64")."""
        for _, p in self.named_state():
            be = backend_of(p.value)
            if not be.xp.isdtype(p.value.dtype, "real floating"):
                continue
            dt = be.dtype(dtype)
            be.check_dtype(dt, who=self.label)
            p.value = be.xp.astype(p.value, dt)
            p.grad = None
        for layer in self.layers():
            if hasattr(layer, "dtype"):
                layer.dtype = dtype
        return self

    def _new_parameter(self, name: str, host: np.ndarray, dtype: str, trainable: bool = True,
                       *, backend: Backend | None = None) -> Parameter:
        """A parameter with ``host``'s values on ``backend`` (default: the current one),
        listed in ``self._params``."""
        be = backend if backend is not None else current()
        p = Parameter(name, be.asarray(host, dtype=dtype), trainable=trainable)
        self._params.append(p)
        return p

    # -- description -------------------------------------------------------------
    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shape of every array a layer of this ``config`` (as ``get_config()``
        returns it) holds, by its ``named_state`` name, without making it: the one
        declaration the constructor makes the arrays from and checkpoints check files
        against (see the class docstring). A layer without arrays declares none."""
        return {}

    @classmethod
    def declared_state(cls, config: dict[str, Any], *, at: str = "", depth: int = 0
                       ) -> DeclaredState:
        """``{name: (shape, dtype)}`` of every array a layer of this ``config`` holds,
        in ``named_state`` order, from the description alone (nothing is allocated).

        ``config`` may come from a file: it is first held to the constructor's
        annotations. By default the arrays are ``param_shapes(config)``, of the
        config's ``dtype``; a layer whose sub-layers come from descriptions in its
        config (Sequential, Graph) overrides this and declares theirs with
        :func:`declared_state_of`. ``at`` is where the config sits in a model's
        description (``"layers[2]"``) and ``depth`` how deep, for messages and the
        nesting limit. Raises :class:`~xpnet._jsonconfig.ConfigError` naming the entry.
        """
        where = config_where(at, layer_type_name(cls))
        check_config(where, cls, config, skip=("backend", "device"))
        try:
            shapes = cls.param_shapes(config)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: cannot work out its parameter shapes ({e})") from None
        params = signature(cls)
        dtype = config.get("dtype", params["dtype"].default) if "dtype" in params else None
        if shapes and dtype is not None and dtype not in FLOAT_DTYPES:
            raise ConfigError(f"{where} dtype is {show(dtype)}, expected "
                              f"{' or '.join(FLOAT_DTYPES)}")
        return {name: (tuple(shape), dtype) for name, shape in shapes.items()}

    def summary(self, input_shape: tuple[int, ...] | None = None, print_fn=print) -> str:
        """Print (and return) a table of layers, output shapes and parameter counts
        (see :func:`xpnet.summary.summary`)."""
        return summary_mod.summary(self, input_shape, print_fn)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (without its weights)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | None = None) -> Layer:
        """The layer ``get_config()`` describes, with its parameters on ``backend``
        (default: the current backend) and freshly initialised."""
        if backend is not None and _takes_backend(cls):
            return cls(**config, backend=backend)
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                         if k not in ("name", "dtype") and not k.endswith("init"))
        return f"{type(self).__name__}({args})"


def check_like_parameters(layer: Layer, x: Any, ref: Any) -> None:
    """``x`` has the library, device and dtype of the parameter value ``ref`` (metadata
    only, no host read); else an error naming ``layer`` and both sides."""
    check_same_place(layer, x, ref)
    if x.dtype != ref.dtype:
        xp = backend_of(ref).xp
        raise TypeError(
            f"{layer.label}: expected input of dtype {dtype_name(xp, ref.dtype)} (the "
            f"parameters'), got {dtype_name(xp, x.dtype)}; convert the data, e.g. "
            f"xp.astype(x, xp.{dtype_name(xp, ref.dtype)}), or the model with astype()"
        )


def _takes_backend(cls: type) -> bool:
    return "backend" in inspect.signature(cls.__init__).parameters


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` followed, once the outermost constructor has returned, by the check that
    the layer holds the arrays its class declares."""
    @functools.wraps(init)
    def __init__(self: Layer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is __init__:  # not a super().__init__ call: the layer is made
            _check_declaration(self)

    return __init__


def _check_declaration(layer: Layer) -> None:
    """TypeError unless ``layer`` holds exactly the arrays ``param_shapes`` declares for
    its ``get_config()``, in ``named_state`` order (see Layer's docstring)."""
    cls = type(layer)
    name = cls.__name__
    rule = ("a layer declares every array it holds in a classmethod param_shapes(config) "
            "-> {name: shape}, config as get_config() returns it, and makes them from "
            "it (see xpnet.Layer)")
    if getattr(cls.param_shapes, "__func__", None) is Layer.param_shapes.__func__:
        made = [p.name for p in getattr(layer, "_params", [])]
        if made:
            raise TypeError(f"{name} makes parameters {made} but declares none: {rule}")
        return  # no arrays of its own; its sub-layers were checked when they were made
    try:
        declared = [(n, tuple(s)) for n, s in cls.param_shapes(layer.get_config()).items()]
    except Exception as e:  # noqa: BLE001 - re-raised with the rule
        raise TypeError(f"{name}.param_shapes(get_config()) raised {type(e).__name__}: "
                        f"{e}; {rule}") from e
    held = [(n, p.shape) for n, p in layer.named_state()]
    if held != declared:
        order = " (the same arrays in another order)" if dict(held) == dict(declared) else ""
        raise TypeError(f"{name} holds arrays {dict(held)} but param_shapes(get_config()) "
                        f"declares {dict(declared)}{order}: {rule}")


class Sequential(Layer):
    """Layers applied one after another; backward runs them in reverse.

    Composing never changes a layer's parameters: each was drawn when it was made.
    """

    def __init__(self, *layers: Layer, name: str | None = None):
        super().__init__(name=name)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Layer")
            first = next(j for j, other in enumerate(layers) if other is layer)
            if first != i:  # one cache would serve two calls, and its weights list twice
                raise ValueError(f"Sequential: item {i} is the same layer object as item "
                                 f"{first} ({layer!r}); to share weights, call it twice in "
                                 f"a Graph (xn.Input + layer calls)")
            layer._where = f"{name or 'Sequential'}[{i}]"
        self._layers = list(layers)
        self._first_with_params = next(
            (i for i, layer in enumerate(self._layers) if layer.named_state()), None)

    def children(self) -> list[Layer]:
        return self._layers

    @property
    def input_dtype(self) -> str | None:  # what the first layer reads
        return self._layers[0].input_dtype if self._layers else None

    @property
    def id_count(self) -> int | None:  # type: ignore[override]
        return self._layers[0].id_count if self._layers else None

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, i: int) -> Layer:
        return self._layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self._layers)

    def forward(self, x: Any, *, train: bool = True) -> Any:
        for layer in self._layers:
            x = layer.forward(x, train=train)
        return x

    def backward(self, dy: Any) -> Any:
        for layer in reversed(self._layers):
            dy = layer.backward(dy)
        return dy

    def decode(self, x: Any, state: Any) -> Any:
        for layer in self._layers:
            x = layer.decode(x, state)
        return x

    def backward_params(self, dy: Any) -> None:
        """Backward down to the first layer with parameters, without its input gradient."""
        first = self._first_with_params
        if first is None:
            return
        for layer in reversed(self._layers[first + 1:]):
            dy = layer.backward(dy)
        self._layers[first].backward_params(dy)

    def get_config(self) -> dict[str, Any]:
        return {"layers": [layer_config(layer) for layer in self._layers]}

    @classmethod
    def declared_state(cls, config: dict[str, Any], *, at: str = "", depth: int = 0
                       ) -> DeclaredState:
        """Each layer's arrays, prefixed with its index (as ``named_state``)."""
        check_keys(config_where(at, layer_type_name(cls)), config,
                   {"layers": "list", "name": "str | None"}, {"layers"})
        out: DeclaredState = {}
        for i, spec in enumerate(config["layers"]):
            for name, declared in declared_state_of(spec, at=config_path(at, f"layers[{i}]"),
                                                    depth=depth + 1).items():
                out[f"{i}.{name}"] = declared
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | None = None) -> Layer:
        config = dict(config)
        layers = [build_layer(spec, backend=backend) for spec in config.pop("layers")]
        return cls(*layers, **config)

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(layer).replace("\n", "\n  ") for layer in self._layers)
        return f"Sequential(\n{inner}\n)"


def layer_type_name(cls: type[Layer]) -> str:
    """How a description names ``cls``: its class name, or its qualified name when
    another class holds the short one."""
    return cls.__name__ if LAYER_TYPES.get(cls.__name__) is cls else \
        f"{cls.__module__}.{cls.__qualname__}"


def layer_config(layer: Layer) -> dict[str, Any]:
    """``{"type": ..., "config": ...}``: a JSON-able description of a layer, and
    ``"ties"`` (``{name: name it is tied to}``) where parameters in different sub-layers
    of it are tied (a tie inside one sub-layer is that sub-layer's description's)."""
    spec = {"type": layer_type_name(type(layer)), "config": layer.get_config()}
    ties = layer.ties()
    if ties:
        for name, child in layer.named_children():
            for alias in child.ties():
                ties.pop(f"{name}.{alias}", None)
        if ties:
            spec["ties"] = ties
    return spec


def _known_types() -> str:
    return ", ".join(k for k in LAYER_TYPES if "." not in k)


def build_layer(spec: dict[str, Any], *, backend: Backend | None = None) -> Layer:
    """Rebuild a layer from ``layer_config(layer)`` (weights freshly initialised), its
    parameters on ``backend`` (default: the current one). Only registered Layer types
    are ever constructed."""
    kind = spec.get("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known: {_known_types()}")
    layer = cls.from_config(dict(spec.get("config", {})), backend=backend)
    for alias, name in spec.get("ties", {}).items():
        layer.tie(alias, name)
    return layer


def declared_state_of(spec: Any, *, at: str = "", depth: int = 0) -> DeclaredState:
    """``{name: (shape, dtype)}`` of every array the layer ``spec`` describes (a
    ``layer_config`` read back from JSON, perhaps from a hostile file), in
    ``named_state`` order, without building anything: the registered class's
    ``declared_state`` of its config. ``at``/``depth``: see ``Layer.declared_state``.
    Raises :class:`~xpnet._jsonconfig.ConfigError` naming the entry that is wrong."""
    where = config_where(at)
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: models nest more than {MAX_DEPTH} deep")
    if not isinstance(spec, dict) or not set(spec) <= {"type", "config", "ties"}:
        raise ConfigError(f"{where} is {show(spec)}, expected an object with 'type' and "
                          f"'config' (and 'ties')")
    kind, config = spec.get("type"), spec.get("config", {})
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where}: unknown layer type {kind!r}; known: {_known_types()}")
    if not isinstance(config, dict):
        raise ConfigError(f"{config_where(at, kind)} config is {show(config)}, expected an "
                          f"object")
    declared = cls.declared_state(config, at=at, depth=depth)
    return _untie(config_where(at, kind), declared, spec.get("ties", {}))


def _untie(where: str, declared: DeclaredState, ties: Any) -> DeclaredState:
    """``declared`` less the names ``ties`` (from a description) says are tied to an
    earlier one: each must name two declared arrays of one shape and dtype, the second
    listed before the first, and never itself tied."""
    if not isinstance(ties, dict):
        raise ConfigError(f"{where} ties is {show(ties)}, expected an object")
    order = list(declared)
    for alias, name in ties.items():
        if not isinstance(name, str) or alias not in declared or name not in declared:
            raise ConfigError(f"{where} ties {alias!r} to {show(name)}: both must be arrays "
                              f"the layer declares ({', '.join(order)})")
        if name in ties or order.index(name) >= order.index(alias):
            raise ConfigError(f"{where} ties {alias!r} to {name!r}, which is tied itself or "
                              f"comes after it")
        if declared[alias] != declared[name]:
            raise ConfigError(f"{where} ties {alias!r} {declared[alias]} to {name!r} "
                              f"{declared[name]}: shapes and dtypes must agree")
    return {n: d for n, d in declared.items() if n not in ties}


def config_where(at: str, kind: str | None = None) -> str:
    """How messages name a place in a model's description: ``model config layers[0]
    (Linear)``."""
    text = f"model config {at}".rstrip()
    return text if kind is None else f"{text} ({kind})"


def config_path(at: str, step: str) -> str:
    """``at`` one step further in: ``layers[1]`` then ``nodes[3]`` is ``layers[1].nodes[3]``."""
    return f"{at}.{step}" if at else step
