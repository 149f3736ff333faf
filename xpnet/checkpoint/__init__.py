"""Checkpoints: arrays plus a JSON description, in one NumPy ``.npz`` file, no pickle.

A checkpoint holds every model array (``param/<name>``), the optimizer's state arrays
(``opt/<slot>/<name>``) and one JSON document (``__meta__``) with the architecture,
the optimizer's type, settings and step count, the loss the model was trained with
(``model.loss``), and user metadata. Loading rebuilds the model from the JSON with the
layer registry only and so never executes anything from the file. Before a byte of
array data is read or a layer is built, every array's declared size is checked
against the bytes the file holds, and the description is checked against the stored
arrays (names, shapes, dtypes, config types): a damaged or crafted file raises
:class:`CheckpointError` and nothing else. Writing goes to a temporary file of its own
in the same folder, is fsynced, then renamed over the target: a failure at any point
leaves the previous checkpoint as it was.

A path ending in ``.safetensors`` is written as a safetensors file instead, for other
tools: the model's arrays under their ``named_state`` names, the optimizer's under
``optimizer.<slot>.<name>``, the same JSON document in the string metadata (``xpnet``),
and a SHA-256 of the document and every tensor (``xpnet.sha256``), since the format has
no checksum of its own. Loading tells the formats apart by content, not by name.

The package, one idea a module: ``atomic`` (the atomic write), ``npz`` and
``safetensors`` (the two formats, bytes in and out with their own checks), ``schema``
(what the document must hold, checked against the arrays; each layer type declares its
arrays itself, ``Layer.declared_state``), and here ``save``, ``load`` and
``load_checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import random
from .._jsonconfig import ConfigError
from ..backend import Backend, backend_of, current, dtype_name, resolve, to_numpy
from ..layers.base import (
    MAX_DEPTH,
    DeclaredState,
    Layer,
    build_layer,
    declared_state_of,
    layer_config,
)
from ..losses import LOSS_TYPES, Loss, loss_config
from ..optim import OPTIMIZERS, SCHEDULES, Optimizer, schedule_config
from .atomic import atomic_write
from .common import PARAM_DTYPES, CheckpointError, dtype_text
from .npz import read_npz, write_npz
from .safetensors import (
    SAFETENSORS_SUFFIX,
    digest,
    import_safetensors,
    read_safetensors,
    safetensors_bytes,
    st_name,
)
from .schema import (
    FORMAT,
    FORMAT_VERSION,
    LATEST_FORMAT_VERSION,
    check_description,
    check_optimizer_covers,
)

__all__ = ["save", "load", "load_checkpoint", "check_describable", "Checkpoint",
           "CheckpointError", "FORMAT",
           "FORMAT_VERSION", "PARAM_DTYPES", "MAX_DEPTH", "SAFETENSORS_SUFFIX"]

# What zipfile and NumPy's header parser raise on damaged bytes (CheckpointError, itself
# a RuntimeError, is re-raised before these are caught).
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
           ValueError, OSError, EOFError, KeyError, IndexError, OverflowError, struct.error,
           zlib.error, TypeError, SyntaxError, RecursionError)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns (the loss, if saved, is ``model.loss``)."""

    model: Layer
    optimizer: Optimizer | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _naming(who: str) -> Iterator[None]:
    """A description found wrong becomes a CheckpointError that names ``who`` (the file,
    or ``save <file>``)."""
    try:
        yield
    except ConfigError as e:
        raise CheckpointError(f"{who}: {e}") from None


# -- writing ------------------------------------------------------------------------
#: The file names :func:`save` writes, by suffix: xpnet's format, or safetensors.
SUFFIXES = (".xpnet", SAFETENSORS_SUFFIX)


def check_suffix(path: Path, who: str = "save") -> None:
    """ValueError unless ``path`` ends in a suffix of :data:`SUFFIXES`: a ``.pt``,
    ``.h5`` or ``.npz`` name would hold a file those tools cannot read."""
    if path.suffix.lower() not in SUFFIXES:
        got = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise ValueError(f"{who}: {str(path)!r} has {got}; xpnet writes .xpnet (its own "
                         f"format) or .safetensors files, so name the file "
                         f"{str(path.with_suffix('.xpnet'))!r} or "
                         f"{str(path.with_suffix('.safetensors'))!r}")


def save(path: str | Path, model: Layer, optimizer: Optimizer | None = None,
         **metadata: Any) -> None:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` atomically.

    ``metadata`` must be JSON-serialisable (epoch, accuracy, ...); the xpnet version,
    backend, device and dtype are recorded as well, and ``model.loss`` when it is set
    (a class in ``xpnet.losses.LOSS_TYPES``; another is left out, with a warning, so a
    checkpoint of a model trained with a loss of your own is still written). What
    :func:`load` would refuse (say, an optimizer over only some of the model's
    parameters) is refused here, before anything is written. Saves from several
    threads or processes to one path never mix: the last rename wins. A
    ``.safetensors`` path writes that format (the package's docstring says how), which
    needs the ``safetensors`` package; a ``.xpnet`` path xpnet's own. Any other suffix
    (``.pt``, ``.h5``, none) is refused with a ValueError: the file would not be what
    its name says.
    """
    from .._version import __version__

    path = Path(path)
    check_suffix(path, "save")
    check_describable(model, f"save {path}")
    state = model.named_state()
    arrays = {f"param/{name}": to_numpy(p.value) for name, p in state}
    be = backend_of(state[0][1].value) if state else current()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xpnet_version": __version__,
        "backend": be.name,
        "device": be.device_name,
        "dtype": dtype_name(be.xp, state[0][1].value.dtype) if state else None,
        "model": layer_config(model),
        "params": [name for name, _ in state],
        "metadata": metadata,
    }
    frozen = [name for name, p in state if not p.trainable]
    if frozen:  # running statistics, and parameters frozen by hand: load restores them
        meta["not_trainable"] = frozen
    if optimizer is not None:
        meta["optimizer"] = _optimizer_meta(model, optimizer, arrays)
    meta["format_version"] = _format_version(meta)
    if model.loss is not None:
        try:
            meta["loss"] = loss_config(model.loss)
        except TypeError as e:  # the weights matter more: saved without the loss
            warnings.warn(f"save {path}: {e}; saved without it", UserWarning, stacklevel=2)
    try:
        blob = json.dumps(meta).encode()
    except TypeError as e:
        raise CheckpointError(f"save {path}: metadata is not JSON-serialisable ({e})") from None
    # check what load will see (tuples become lists in JSON), so a save never writes a
    # file that load refuses
    written = json.loads(blob)
    with _naming(f"save {path}"):
        check_description(written, arrays)
        if optimizer is not None:
            check_optimizer_covers(written["optimizer"]["params"], model)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        data = safetensors_bytes(blob, arrays)
        atomic_write(path, lambda f: f.write(data))
    else:
        atomic_write(path, lambda f: write_npz(f, blob, arrays))


def check_describable(model: Layer, who: str = "save") -> None:
    """CheckpointError unless every layer's description is JSON: a layer made with an
    ``init`` that is a callable of your own (not a name or an initialiser of
    :mod:`xpnet.init`) cannot be described, and the error names it and the ways out.
    ``ModelCheckpoint`` asks this when training starts."""
    def find(obj: Any, where: str) -> tuple[str, Any] | None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                found = find(v, f"{where} {k}" if k != "config" else where)
                if found:
                    return found
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                found = find(v, f"{where}[{i}]")
                if found:
                    return found
        elif not (obj is None or isinstance(obj, (str, int, float, bool))):
            return where, obj
        return None

    def walk(layer: Layer, path: str) -> Iterator[tuple[Layer, str]]:
        yield layer, path
        for name, child in layer.named_children():
            yield from walk(child, f"{path}.{name}" if path else name)

    for layer, path in walk(model, ""):
        own = {k: v for k, v in layer.get_config().items() if k not in ("layers", "nodes")}
        found = find(own, "")  # a layer's own arguments; its sub-layers' in their turn
        if found is not None:
            where, value = found
            place = f"layer {path} ({type(layer).__name__})" if path else type(layer).__name__
            raise CheckpointError(
                f"{who}: {place}{where} is {value!r}, which a checkpoint cannot "
                f"describe: give the layer a name or an initialiser of xpnet.init "
                f"(xn.init.normal(0.02), xn.init.scaled(...)), or register yours with "
                f"xn.init.register(name, fn) and pass its name. The weights are saved as "
                f"they are either way: to save this model now, set that layer's init to a "
                f"name (it only matters to reset())")


def _optimizer_meta(model: Layer, opt: Optimizer, arrays: dict[str, np.ndarray]) -> dict:
    names = {id(p): name for name, p in model.named_state()}  # frozen ones too
    missing = [i for i, p in enumerate(opt.params) if id(p) not in names]
    if missing:
        raise CheckpointError(
            f"save: the optimizer holds {len(missing)} parameter(s) that are not in the model"
        )
    order = [names[id(p)] for p in opt.params]
    for slot, values in opt.state.items():
        for name, v in zip(order, values, strict=True):
            if v is not None:
                arrays[f"opt/{slot}/{name}"] = to_numpy(v)
    groups = opt.param_groups
    if len(groups) == 1:  # the group's own settings (a plateau may have lowered its rate)
        out = {"type": type(opt).__name__, "lr": _lr_meta(groups[0]["lr"]),
               "config": opt.group_config(0), "steps": opt.steps, "params": order}
    else:  # the constructor's defaults, and every group's settings
        out = {"type": type(opt).__name__, "lr": _lr_meta(opt.defaults["lr"]),
               "config": opt.get_config(), "steps": opt.steps, "params": order,
               "groups": [{"params": [names[id(p)] for p in g["params"]],
                           "lr": _lr_meta(g["lr"]), "config": opt.group_config(i)}
                          for i, g in enumerate(groups)]}
    scale = opt.loss_scale_state()
    if scale:  # fp16's loss scale goes on with the optimizer it steps
        out["loss_scale"] = scale
    return out


def _lr_meta(lr: Any) -> Any:
    """A rate as the document holds it: a number, or a schedule's description."""
    if not callable(lr):
        return lr
    try:
        return schedule_config(lr)
    except TypeError as e:
        raise CheckpointError(f"save: {e}") from None


def _lr_of(lr: Any) -> Any:
    return SCHEDULES[lr["schedule"]](**lr["config"]) if isinstance(lr, dict) else lr


def _format_version(meta: dict[str, Any]) -> int:
    """1 for a document that version-1 readers read right; 2 when it holds what they
    would misread or refuse with a muddled message (ties, parameter groups,
    initialisers described by a config): they then ask for a newer xpnet."""
    def newer(obj: Any) -> bool:
        if isinstance(obj, dict):
            return any(k == "ties" or k == "groups" or (k.endswith("init") and
                                                         isinstance(v, dict)) or newer(v)
                       for k, v in obj.items())
        return isinstance(obj, list) and any(newer(v) for v in obj)

    # an optimizer over a parameter frozen after it was made: version-1 readers, which
    # know no frozen parameters, would refuse it
    frozen_in_optimizer = bool(set(meta.get("not_trainable", ())) & set(
        meta.get("optimizer", {}).get("params", ())))
    return LATEST_FORMAT_VERSION if frozen_in_optimizer or newer(
        {"model": meta["model"], "optimizer": meta.get("optimizer", {})}) else FORMAT_VERSION


# -- reading ------------------------------------------------------------------------
def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON document and the arrays (``param/<name>``, ``opt/<slot>/<name>``) of
    either format, unchecked."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        # safetensors: an 8-byte little-endian header length, then the JSON header
        if len(head) == 9 and head[8:] == b"{":
            raw, arrays = read_safetensors(path)
        else:
            raw, arrays = read_npz(path)
    except CheckpointError:
        raise
    except _DAMAGE as e:
        raise CheckpointError(
            f"{path}: not a readable xpnet checkpoint (truncated, corrupted or another "
            f"format): {type(e).__name__}: {e}"
        ) from None
    try:
        meta = json.loads(raw.decode())
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, nesting too deep
        raise CheckpointError(
            f"{path}: the checkpoint's description is corrupted ({type(e).__name__}: {e})"
        ) from None
    return meta, arrays


def load_checkpoint(path: str | Path, *, backend: str | Backend | None = None,
                    device: str | None = None) -> Checkpoint:
    """Rebuild the model (with ``model.loss``, if saved), its optimizer (if saved) and
    metadata on any backend, from either format (told apart by the file's content).

    ``backend``/``device`` default to the current backend, so a checkpoint written on
    a GPU loads on a CPU-only machine. Raises :class:`CheckpointError` for a file
    that is damaged, crafted or not a checkpoint, before building anything.
    """
    path = Path(path)
    meta, arrays = _read(path)
    with _naming(str(path)):
        declared = check_description(meta, arrays)
    be = resolve(backend, device)
    # Building draws initial weights, which the file's replace at once: draw them from
    # a stream of their own, so loading leaves the seeded stream where it was.
    with be, random.RandomStream(0).active():  # layers without weights probe shapes on be
        try:
            model = build_layer(meta["model"], backend=be)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                ArithmeticError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the model ({e})") from None
    state = model.named_state()
    built = {n: p.shape for n, p in state}
    if built != {n: shape for n, (shape, _) in declared.items()}:
        # a layer's param_shapes disagrees with its constructor: a bug, not the file's
        raise CheckpointError(f"{path}: the rebuilt model holds arrays {built}, its "
                              f"description declares {declared}")
    frozen = meta.get("not_trainable")
    for name, p in state:
        key = f"param/{name}"
        p.value = be.asarray(arrays[key], dtype=dtype_text(arrays[key].dtype))
        if frozen is not None:  # files before it: as the layers make them
            p.trainable = name not in frozen
    optimizer = None
    if "optimizer" in meta:
        optimizer = _rebuild_optimizer(path, meta["optimizer"], model, arrays, be)
    if "loss" in meta:
        model.loss = _rebuild_loss(path, meta["loss"])
    return Checkpoint(model, optimizer, dict(meta.get("metadata", {})))


def _rebuild_optimizer(path: Path, spec: dict, model: Layer, arrays: dict[str, np.ndarray],
                       be: Backend) -> Optimizer:
    with _naming(str(path)):
        check_optimizer_covers(spec["params"], model)
    cls = OPTIMIZERS[spec["type"]]
    params = dict(model.named_state())  # with parameters frozen after it was made
    try:
        if "groups" in spec:
            given: Any = [{"params": [params[n] for n in g["params"]], "lr": _lr_of(g["lr"]),
                           **g["config"]} for g in spec["groups"]]
        else:
            given = [params[n] for n in spec["params"]]
        opt = cls(given, lr=_lr_of(spec["lr"]), **spec["config"])
        opt.steps = spec["steps"]
        rates = [opt.group_lr(i) for i in range(len(opt.param_groups))]
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the optimizer ({e})") from None
    for rate in rates:
        if not math.isfinite(rate) or rate < 0:
            raise CheckpointError(f"{path}: the optimizer's learning rate at step "
                                  f"{opt.steps} is {rate}, expected a finite number >= 0")
    for slot in opt.state:
        for i, name in enumerate(spec["params"]):
            key = f"opt/{slot}/{name}"
            if key in arrays:
                opt.state[slot][i] = be.asarray(arrays[key], dtype=dtype_text(arrays[key].dtype))
    if "loss_scale" in spec:
        opt.loss_scale = dict(spec["loss_scale"])  # taken up by the next fp16 step
    return opt


def _rebuild_loss(path: Path, spec: dict) -> Loss:
    try:
        return LOSS_TYPES[spec["type"]](**spec["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the loss ({e})") from None


def load(path: str | Path, *, backend: str | Backend | None = None,
         device: str | None = None) -> Layer:
    """Rebuild the model saved at ``path`` on ``backend``/``device`` (default: current),
    ``model.loss`` included if it was saved."""
    return load_checkpoint(path, backend=backend, device=device).model


# -- names kept for code written against the single module xpnet/checkpoint.py ------
_safetensors = import_safetensors
_digest = digest
_st_name = st_name


def _declared_state(who: str, spec: Any) -> DeclaredState:
    """``declared_state_of(spec)``, a wrong description named after ``who``."""
    with _naming(who):
        return declared_state_of(spec)
