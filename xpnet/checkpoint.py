"""Checkpoints: arrays plus a JSON description, in one NumPy ``.npz`` file, no pickle.

A checkpoint holds every model array (``param/<name>``), the optimizer's state arrays
(``opt/<slot>/<name>``) and one JSON document (``__meta__``) with the architecture,
the optimizer's type, settings and step count, and user metadata. Loading rebuilds
the model from the JSON with the layer registry only and so never executes anything
from the file. Before a byte of array data is read or a layer is built, every array's
declared size is checked against the bytes the file holds, and the description is
checked against the stored arrays (names, shapes, dtypes, config types): a damaged or
crafted file raises :class:`CheckpointError` and nothing else. Writing goes to a
temporary file of its own in the same folder, is fsynced, then renamed over the target:
a failure at any point leaves the previous checkpoint as it was.

A path ending in ``.safetensors`` is written as a safetensors file instead, for other
tools: the model's arrays under their ``named_state`` names, the optimizer's under
``optimizer.<slot>.<name>``, the same JSON document in the string metadata (``xpnet``),
and a SHA-256 of the document and every tensor (``xpnet.sha256``), since the format has
no checksum of its own. Loading tells the formats apart by content, not by name.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import struct
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import random
from .backend import Backend, backend_of, current, dtype_name, resolve, to_numpy
from .graph import Graph
from .layers import LAYER_TYPES, Layer, Sequential, build_layer, layer_config
from .optim import OPTIMIZERS, SCHEDULES, Optimizer, schedule_config

FORMAT = "xpnet-checkpoint"
FORMAT_VERSION = 1
PARAM_DTYPES = ("float32", "float64")
#: How deep Sequential and Graph models may nest in a checkpoint's description.
MAX_DEPTH = 64
# Deflate never expands more than about 1032:1, so no honest member declares more.
_DEFLATE_RATIO = 1032
_CHUNK = 1 << 24
SAFETENSORS_SUFFIX = ".safetensors"
_ST_DOC, _ST_HASH, _ST_OPT = "xpnet", "xpnet.sha256", "optimizer."
_ST_DTYPES = ("F32", "F64")  # PARAM_DTYPES as safetensors names them
# What zipfile and NumPy's header parser raise on damaged bytes (CheckpointError, itself
# a RuntimeError, is re-raised before these are caught).
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
           ValueError, OSError, EOFError, KeyError, IndexError, OverflowError, struct.error,
           zlib.error, TypeError, SyntaxError, RecursionError)


#: Every array a description declares: name -> (shape, dtype; None: float32 or float64).
_Declared = dict[str, tuple[tuple[int, ...], str | None]]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read: the message says what is wrong."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: Layer
    optimizer: Optimizer | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# -- writing ------------------------------------------------------------------------
def save(path: str | Path, model: Layer, optimizer: Optimizer | None = None,
         **metadata: Any) -> None:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` atomically.

    ``metadata`` must be JSON-serialisable (epoch, accuracy, ...); the xpnet version,
    backend, device and dtype are recorded as well. What :func:`load` would refuse
    (say, an optimizer over only some of the model's parameters) is refused here,
    before anything is written. Saves from several threads or processes to one path
    never mix: the last rename wins. A ``.safetensors`` path writes that format (the
    module's docstring says how), which needs the ``safetensors`` package.
    """
    from ._version import __version__

    path = Path(path)
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
    if optimizer is not None:
        meta["optimizer"] = _optimizer_meta(model, optimizer, arrays)
    try:
        blob = json.dumps(meta).encode()
    except TypeError as e:
        raise CheckpointError(f"save {path}: metadata is not JSON-serialisable ({e})") from None
    # check what load will see (tuples become lists in JSON), so a save never writes a
    # file that load refuses
    written = json.loads(blob)
    _check_description(f"save {path}", written, arrays)
    if optimizer is not None:
        _check_optimizer_covers(f"save {path}", written["optimizer"]["params"], model)
    if path.suffix == SAFETENSORS_SUFFIX:
        data = _safetensors_bytes(blob, arrays)
        _atomic_write(path, lambda f: f.write(data))
    else:
        arrays["__meta__"] = np.frombuffer(blob, dtype=np.uint8)
        _atomic_write(path, lambda f: np.savez(f, **arrays))


def _optimizer_meta(model: Layer, opt: Optimizer, arrays: dict[str, np.ndarray]) -> dict:
    names = {id(p): name for name, p in model.named_parameters()}
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
    lr: Any = opt.lr
    if callable(lr):
        try:
            lr = schedule_config(lr)
        except TypeError as e:
            raise CheckpointError(f"save: {e}") from None
    return {"type": type(opt).__name__, "lr": lr, "config": opt.get_config(),
            "steps": opt.steps, "params": order}


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(f"safetensors checkpoints need the safetensors package ({e}); "
                          f"install it with: pip install \"xpnet[safetensors]\"") from None
    return safetensors


def _st_name(key: str) -> str:
    """``param/0.weight`` -> ``0.weight``, ``opt/m/0.weight`` -> ``optimizer.m.0.weight``."""
    kind, _, rest = key.partition("/")
    return rest if kind == "param" else _ST_OPT + rest.replace("/", ".", 1)


def _st_key(name: str) -> str:
    """The inverse of :func:`_st_name` (slot names hold no dot; state names never start
    with ``optimizer.``)."""
    if name.startswith(_ST_OPT):
        return "opt/" + name[len(_ST_OPT):].replace(".", "/", 1)
    return f"param/{name}"


def _digest(doc: bytes, tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 of the document and of each tensor's name, dtype, shape and bytes, in name
    order, so any change to what load would use shows."""
    h = hashlib.sha256(doc)
    for name in sorted(tensors):
        a = tensors[name]
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _safetensors_bytes(doc: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    st = _safetensors()
    tensors = {_st_name(k): np.ascontiguousarray(a) for k, a in arrays.items()}
    return st.numpy.save(tensors, metadata={_ST_DOC: doc.decode(),
                                            _ST_HASH: _digest(doc, tensors)})


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    _remove_stale_temps(folder, path.name)
    # one name per call: saves from two threads (or processes) must never share a file
    tmp = folder / (f".{path.name}.{os.getpid()}.{threading.get_ident()}."
                    f"{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Delete ``.<name>.<pid>...tmp`` files whose writing process no longer exists.

    A save killed between writing and renaming leaves its temporary file behind; a
    live process's file (this one's included: another thread may be writing it) is kept.
    """
    if os.name != "posix":  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows
        return
    prefix = f".{name}."
    try:
        entries = [e.name for e in os.scandir(folder)]
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid_text = entry[len(prefix):-len(".tmp")].split(".")[0]
        if not (pid_text.isascii() and pid_text.isdigit()) or int(pid_text) <= 0:
            continue  # not one of ours; pid 0 would signal our own process group
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            (folder / entry).unlink(missing_ok=True)
        except (OSError, OverflowError):
            pass  # alive under another user (EPERM), or not a pid at all: keep it


# -- reading the file ---------------------------------------------------------------
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
            raw, arrays = _read_safetensors(path)
        else:
            arrays = _read_arrays(path)
            raw = arrays.pop("__meta__")
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise CheckpointError(f"{path}: entry '__meta__' is {_dtype_text(raw.dtype)} "
                                      f"of shape {raw.shape}, expected uint8 bytes of shape (n,)")
            raw = raw.tobytes()
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


def _read_safetensors(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The document and arrays of a safetensors checkpoint, its checksum verified."""
    st = _safetensors()
    tensors = {}
    try:
        # safe_open checks that the header's offsets tile the file before any data is read
        with st.safe_open(str(path), framework="numpy") as f:
            info = f.metadata() or {}
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _ST_DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, "
                                          f"expected F32 or F64 (float32 or float64)")
                tensors[name] = f.get_tensor(name)
    except st.SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or "
                              f"corrupted): {e}") from None
    if _ST_DOC not in info or _ST_HASH not in info:
        raise CheckpointError(f"{path}: a safetensors file without xpnet's metadata (keys "
                              f"{sorted(info)}, expected {_ST_DOC!r} and {_ST_HASH!r}); "
                              f"read it with safetensors.numpy.load_file")
    doc = info[_ST_DOC].encode()
    digest = _digest(doc, tensors)
    if digest != info[_ST_HASH]:
        raise CheckpointError(f"{path}: corrupted: the contents' SHA-256 is {digest}, the "
                              f"file records {info[_ST_HASH]!r}")
    return doc, {_st_key(name): a for name, a in tensors.items()}


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every member of the zip at ``path`` as an array, each checked before it is read."""
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise CheckpointError(f"{path}: a single .npy array, not an xpnet checkpoint "
                                  f"(an .npz archive with a __meta__ entry)")
        fh.seek(0)
        size = os.fstat(fh.fileno()).st_size
        with zipfile.ZipFile(fh) as zf:
            if "__meta__.npy" not in zf.namelist():
                raise CheckpointError(f"{path}: not an xpnet checkpoint (no __meta__ entry)")
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key == info.filename:
                    raise CheckpointError(f"{path}: entry {info.filename!r} is not a .npy array")
                if key in arrays:
                    raise CheckpointError(f"{path}: entry {info.filename!r} appears twice")
                arrays[key] = _read_member(path, zf, info, size)
    return arrays


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                 file_size: int) -> np.ndarray:
    key = info.filename.removesuffix(".npy")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: entry {key!r} uses zip compression method "
                              f"{info.compress_type}, expected stored (0) or deflated (8)")
    # bound what the header may make us allocate by what the file holds
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO
    if info.compress_size > file_size or info.file_size > ratio * info.compress_size:
        raise CheckpointError(f"{path}: entry {key!r} declares {info.file_size} bytes from "
                              f"{info.compress_size} stored, in a file of {file_size} bytes")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: entry {key!r} has .npy format {version}, "
                                  f"expected (1, 0) or (2, 0)")
        allowed = ("uint8",) if key == "__meta__" else PARAM_DTYPES
        if dtype.hasobject or not dtype.isnative or dtype.name not in allowed:
            raise CheckpointError(f"{path}: entry {key!r} has dtype {_dtype_text(dtype)}, "
                                  f"expected {' or '.join(allowed)}")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: entry {key!r} declares shape {shape}, expected "
                                  f"sizes >= 0")
        nbytes = math.prod(shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise CheckpointError(
                f"{path}: entry {key!r} declares shape {shape} ({nbytes} bytes of data), but "
                f"holds {info.file_size - f.tell()} bytes of data"
            )
        flat = np.empty(math.prod(shape), dtype=dtype)
        view, got = memoryview(flat.view(np.uint8)), 0
        while got < nbytes:  # in chunks: read() of it all would hold a second copy
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                break
            got += n
        if got != nbytes or f.read(1):  # reading to the end also checks the CRC
            raise CheckpointError(f"{path}: entry {key!r} is truncated ({got} of {nbytes} "
                                  f"bytes of data)")
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _dtype_text(dtype: np.dtype) -> str:
    """``float32`` for a plain number type, ``<U1``, ``|O`` or ``>f4`` for the others."""
    return dtype.name if dtype.isnative and dtype.kind in "biufc" else dtype.str


# -- checking the description against the arrays --------------------------------------
def _check_description(who: str, meta: Any, arrays: dict[str, np.ndarray],
                       ) -> _Declared:
    """Check ``meta`` and ``arrays`` fully without building anything; return the
    declared arrays, name -> (shape, dtype)."""
    _check_header(who, meta)
    declared = _declared_state(who, meta["model"])
    names = meta["params"]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"{who}: the parameter list names {', '.join(twice)} twice")
    if set(names) != set(declared):
        missing = [n for n in declared if n not in names]
        extra = [n for n in names if n not in declared]
        problems = ([f"it lacks {missing}"] if missing else []) + (
            [f"it lists {extra}, which the architecture does not declare (a layer type with "
             f"parameters declares them with param_shapes)"] if extra else [])
        raise CheckpointError(f"{who}: the parameter list does not match the architecture: "
                              f"{'; '.join(problems)}")
    expected = set()
    for name, (shape, dtype) in declared.items():
        key = f"param/{name}"
        _check_array(who, key, arrays.get(key), shape, dtype)
        expected.add(key)
    if "optimizer" in meta:
        expected |= _check_optimizer(who, meta["optimizer"], declared, arrays)
    unexpected = sorted(set(arrays) - expected)
    if unexpected:
        raise CheckpointError(f"{who}: unexpected entr{'ies' if len(unexpected) > 1 else 'y'} "
                              f"{', '.join(map(repr, unexpected))}, which the description "
                              f"does not declare")
    return declared


def _check_array(who: str, key: str, arr: np.ndarray | None, shape: tuple[int, ...],
                 dtype: str | None) -> None:
    if arr is None:
        raise CheckpointError(f"{who}: missing array {key!r}")
    wanted = (dtype,) if dtype is not None else PARAM_DTYPES
    if _dtype_text(arr.dtype) not in wanted:
        raise CheckpointError(f"{who}: array {key!r} has dtype {_dtype_text(arr.dtype)}, the "
                              f"architecture declares {' or '.join(wanted)}")
    if tuple(arr.shape) != shape:
        raise CheckpointError(f"{who}: array {key!r} has shape {tuple(arr.shape)}, the "
                              f"architecture expects {shape}")


_HEADER_TYPES = {"model": dict, "params": list, "metadata": dict, "optimizer": dict}


def _check_header(who: str, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{who}: not an xpnet checkpoint (format is {found!r}, "
                              f"expected {FORMAT!r})")
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise CheckpointError(f"{who}: format_version is {_show(version)}, expected an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{who}: written by a newer xpnet (format {version}); upgrade xpnet"
        )
    for key, kind in _HEADER_TYPES.items():
        required = key in ("model", "params")
        if (required or key in meta) and not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{who}: the description's {key!r} is "
                                  f"{_show(meta.get(key))}, expected {_JSON_KINDS[kind]}")
    bad = [n for n in meta["params"] if not isinstance(n, str)]
    if bad:
        raise CheckpointError(f"{who}: the parameter list holds {_show(bad[0])}, expected "
                              f"names (strings)")


def _declared_state(who: str, spec: Any) -> _Declared:
    """Name -> (shape, dtype) of every array the described model holds, named as
    ``Layer.named_state`` names them, from the description alone."""
    out: _Declared = {}
    _walk(who, spec, "", "", 0, out)
    return out


def _walk(who: str, spec: Any, prefix: str, at: str, depth: int,
          out: _Declared) -> None:
    where = f"model config {at}".rstrip()
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{who}: {where}: models nest more than {MAX_DEPTH} deep")
    if not isinstance(spec, dict) or not set(spec) <= {"type", "config"}:
        raise CheckpointError(f"{who}: {where} is {_show(spec)}, expected an object with "
                              f"'type' and 'config'")
    kind, config = spec.get("type"), spec.get("config", {})
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CheckpointError(f"{who}: {where}: unknown layer type {kind!r}; known: "
                              f"{', '.join(k for k in LAYER_TYPES if '.' not in k)}")
    where = f"model config {at}{' ' if at else ''}({kind})"
    if not isinstance(config, dict):
        raise CheckpointError(f"{who}: {where} config is {_show(config)}, expected an object")
    if issubclass(cls, Sequential):
        _check_keys(who, where, config, {"layers": "list", "name": "str | None"}, {"layers"})
        for i, child in enumerate(config["layers"]):
            _walk(who, child, f"{prefix}{i}.", _join(at, f"layers[{i}]"), depth + 1, out)
    elif issubclass(cls, Graph):
        _walk_graph(who, config, prefix, at, where, depth, out)
    else:
        params = _signature(cls, skip=("backend", "device"))
        _check_keys(who, where, config, {n: _annotation(p) for n, p in params.items()},
                    {n for n, p in params.items() if p.default is p.empty})
        shapes_of = getattr(cls, "param_shapes", None)
        if shapes_of is None:  # no parameters (were there any, the parameter list refuses)
            return
        try:
            shapes = shapes_of(config)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{who}: {where}: cannot work out its parameter shapes "
                                  f"({e})") from None
        dtype = config.get("dtype", params["dtype"].default) if "dtype" in params else None
        if shapes and dtype is not None and dtype not in PARAM_DTYPES:
            raise CheckpointError(f"{who}: {where} dtype is {_show(dtype)}, expected "
                                  f"{' or '.join(PARAM_DTYPES)}")
        for name, shape in shapes.items():
            out[prefix + name] = (tuple(shape), dtype)


def _join(at: str, step: str) -> str:
    return f"{at}.{step}" if at else step


def _walk_graph(who: str, config: dict, prefix: str, at: str, where: str, depth: int,
                out: _Declared) -> None:
    _check_keys(who, where, config, {"nodes": "list", "inputs": "list[int]", "output": "int",
                                     "multi": "bool"}, {"nodes", "inputs", "output"})
    nodes = config["nodes"]
    is_input = []
    kinds = ("layer", "input_shape", "same_layer_as")
    for j, node in enumerate(nodes):
        here = f"{where} nodes[{j}]"
        if not isinstance(node, dict) or sum(k in node for k in kinds) != 1:
            raise CheckpointError(f"{who}: {here} is {_show(node)}, expected an object with "
                                  f"one of 'layer', 'input_shape' or 'same_layer_as'")
        _check_keys(who, here, node, {"name": "str", "inputs": "list[int]",
                                      "input_shape": "list[int]", "layer": "dict",
                                      "same_layer_as": "int"},
                    {"name", "inputs"})
        if "input_shape" in node and (node["inputs"] or not node["input_shape"]
                                      or min(node["input_shape"]) < 1):
            raise CheckpointError(f"{who}: {here} is an input of shape {node['input_shape']} "
                                  f"fed by {node['inputs']}, expected a positive shape and no "
                                  f"inputs")
        if "input_shape" not in node and not all(0 <= i < j for i in node["inputs"]):
            raise CheckpointError(f"{who}: {here} reads nodes {node['inputs']}, expected "
                                  f"indices of earlier nodes (0 to {j - 1})")
        # a later use of a layer (weight sharing) names the node that holds the layer;
        # its parameters are declared there, once
        same = node.get("same_layer_as")
        if same is not None and not (0 <= same < j and "layer" in nodes[same]):
            raise CheckpointError(f"{who}: {here} same_layer_as is {same}, expected the index "
                                  f"of an earlier node with a 'layer' (0 to {j - 1})")
        is_input.append("input_shape" in node)
    ins, output = config["inputs"], config["output"]
    if (not ins or len(set(ins)) != len(ins) or not all(0 <= i < len(nodes) and is_input[i]
                                                          for i in ins)
            or (not config.get("multi", False) and len(ins) != 1)):
        raise CheckpointError(f"{who}: {where} inputs is {ins}, expected distinct input nodes "
                              f"(one unless multi)")
    if not 0 <= output < len(nodes):
        raise CheckpointError(f"{who}: {where} output is {output}, expected a node index "
                              f"(0 to {len(nodes) - 1})")
    reached, todo = set(), [output]
    while todo:
        j = todo.pop()
        if j not in reached:
            reached.add(j)
            todo += nodes[j]["inputs"]
    unused = [j for j in range(len(nodes)) if j not in reached]
    if unused:
        raise CheckpointError(f"{who}: {where} nodes {unused} do not lead to the output")
    k = 0
    for j, node in enumerate(nodes):
        if "layer" in node:  # named by their place among the nodes with a layer (a
            # node with same_layer_as adds no child: its layer is an earlier node's)
            _walk(who, node["layer"], f"{prefix}{k}.", _join(at, f"nodes[{j}]"), depth + 1, out)
            k += 1


def _check_optimizer(who: str, spec: dict, declared: _Declared,
                     arrays: dict[str, np.ndarray]) -> set[str]:
    """Check the optimizer's description and state arrays; return the arrays' keys."""
    where = "optimizer"
    _check_keys(who, where, spec, {"type": "str", "lr": "float | dict", "config": "dict",
                                   "steps": "int", "params": "list[str]"},
                {"type", "lr", "config", "steps", "params"})
    cls = OPTIMIZERS.get(spec["type"])
    if cls is None:
        raise CheckpointError(f"{who}: unknown optimizer type {spec['type']!r}; known: "
                              f"{', '.join(OPTIMIZERS)}")
    params = _signature(cls, skip=("params", "lr"))
    _check_keys(who, f"{where} config", spec["config"],
                {n: _annotation(p) for n, p in params.items()},
                {n for n, p in params.items() if p.default is p.empty})
    lr = spec["lr"]
    if isinstance(lr, dict):
        _check_keys(who, f"{where} lr", lr, {"schedule": "str", "config": "dict"},
                    {"schedule", "config"})
        sched = SCHEDULES.get(lr["schedule"])
        if sched is None:
            raise CheckpointError(f"{who}: unknown schedule {lr['schedule']!r}; known: "
                                  f"{', '.join(SCHEDULES)}")
        params = _signature(sched)
        _check_keys(who, f"{where} lr config", lr["config"],
                    {n: _annotation(p) for n, p in params.items()},
                    {n for n, p in params.items() if p.default is p.empty})
    elif lr <= 0:
        raise CheckpointError(f"{who}: {where} lr is {_show(lr)}, expected a positive number")
    if spec["steps"] < 0:
        raise CheckpointError(f"{who}: {where} steps is {spec['steps']}, expected >= 0")
    names = spec["params"]
    unknown = [n for n in names if n not in declared]
    if unknown or len(set(names)) != len(names):
        raise CheckpointError(f"{who}: {where} params {names} name {unknown or 'a parameter'} "
                              f"{'not in the model' if unknown else 'twice'}")
    keys = set()
    for name in names:
        present = [s for s in cls.slots if f"opt/{s}/{name}" in arrays]
        if present and len(present) != len(cls.slots):
            raise CheckpointError(
                f"{who}: {cls.__name__} state of {name!r} has slots {present}, expected all "
                f"of {list(cls.slots)} or none"
            )
        shape, dtype = declared[name]
        for slot in present:
            key = f"opt/{slot}/{name}"
            _check_array(who, key, arrays[key], shape, dtype)
            keys.add(key)
    return keys


def _check_optimizer_covers(who: str, names: list[str], model: Layer) -> None:
    """The optimizer must hold exactly the model's trainable parameters."""
    trainable = [n for n, _ in model.named_parameters()]
    missing = [n for n in trainable if n not in names]
    extra = [n for n in names if n not in trainable]
    if missing or extra:
        raise CheckpointError(
            f"{who}: the optimizer holds {len(names)} parameter(s), expected the model's "
            f"{len(trainable)} trainable ones: it lacks {missing or 'none'} and holds "
            f"{extra or 'none'} that are not trainable"
        )


# -- small checks on JSON values ------------------------------------------------------
_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({_JSON_KINDS.get(type(value), type(value).__name__).split()[-1]})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _signature(cls: type, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """The named constructor arguments a description may give."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and n not in skip and p.kind in kinds}


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is p.empty:
        return "Any"
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _check_keys(who: str, where: str, obj: Any, types: dict[str, str],
                required: set[str]) -> None:
    """``obj`` is an object with only the keys of ``types``, the ``required`` ones
    among them, each value of its annotated type."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{who}: {where} is {_show(obj)}, expected an object")
    for key in obj:
        if key not in types:
            raise CheckpointError(f"{who}: {where} has unknown entry {key!r}; expected "
                                  f"{', '.join(types) or 'none'}")
    for key in sorted(required):
        if key not in obj:
            raise CheckpointError(f"{who}: {where} lacks entry {key!r}")
    for key, value in obj.items():
        if not _matches(value, types[key]):
            wanted = types[key].replace("float", "finite float")
            raise CheckpointError(f"{who}: {where} {key} is {_show(value)}, expected {wanted}")


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if c == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _matches(value: Any, annotation: str) -> bool:
    """Whether the JSON ``value`` fits ``annotation`` (ints are not floats' stand-ins
    here: 3.7 or True is no int); names this does not know match anything."""
    alternatives = _split(annotation, "|")
    if len(alternatives) > 1:
        return any(_matches(value, a) for a in alternatives)
    a = annotation.strip()
    simple = {"int": _is_int, "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str), "None": lambda v: v is None,
              "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
              "float": lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)}
    if a in simple:
        return simple[a](value)
    for head in ("tuple[", "list["):
        if a.startswith(head) and a.endswith("]"):
            items = _split(a[len(head):-1], ",")
            if not isinstance(value, list):
                return False
            if head == "list[" or items[-1] == "...":
                return all(_matches(v, items[0]) for v in value)
            return len(value) == len(items) and all(map(_matches, value, items))
    return True


# -- loading -------------------------------------------------------------------------
def load_checkpoint(path: str | Path, *, backend: str | Backend | None = None,
                    device: str | None = None) -> Checkpoint:
    """Rebuild the model, its optimizer (if saved) and metadata on any backend, from
    either format (told apart by the file's content).

    ``backend``/``device`` default to the current backend, so a checkpoint written on
    a GPU loads on a CPU-only machine. Raises :class:`CheckpointError` for a file
    that is damaged, crafted or not a checkpoint, before building anything.
    """
    path = Path(path)
    meta, arrays = _read(path)
    declared = _check_description(str(path), meta, arrays)
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
        # the layers' param_shapes disagree with their constructors: a bug, not the file's
        raise CheckpointError(f"{path}: the rebuilt model holds arrays {built}, its "
                              f"description declares {declared}")
    for name, p in state:
        key = f"param/{name}"
        p.value = be.asarray(arrays[key], dtype=_dtype_text(arrays[key].dtype))
    optimizer = None
    if "optimizer" in meta:
        optimizer = _rebuild_optimizer(path, meta["optimizer"], model, arrays, be)
    return Checkpoint(model, optimizer, dict(meta.get("metadata", {})))


def _rebuild_optimizer(path: Path, spec: dict, model: Layer, arrays: dict[str, np.ndarray],
                       be: Backend) -> Optimizer:
    _check_optimizer_covers(str(path), spec["params"], model)
    cls = OPTIMIZERS[spec["type"]]
    params = dict(model.named_parameters())
    try:
        lr = spec["lr"]
        if isinstance(lr, dict):
            lr = SCHEDULES[lr["schedule"]](**lr["config"])
        opt = cls([params[n] for n in spec["params"]], lr=lr, **spec["config"])
        opt.steps = spec["steps"]
        rate = opt.current_lr()
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the optimizer ({e})") from None
    if not math.isfinite(rate) or rate < 0:
        raise CheckpointError(f"{path}: the optimizer's learning rate at step {opt.steps} is "
                              f"{rate}, expected a finite number >= 0")
    for slot in opt.state:
        for i, name in enumerate(spec["params"]):
            key = f"opt/{slot}/{name}"
            if key in arrays:
                opt.state[slot][i] = be.asarray(arrays[key], dtype=_dtype_text(arrays[key].dtype))
    return opt


def load(path: str | Path, *, backend: str | Backend | None = None,
         device: str | None = None) -> Layer:
    """Rebuild the model saved at ``path`` on ``backend``/``device`` (default: current)."""
    return load_checkpoint(path, backend=backend, device=device).model
