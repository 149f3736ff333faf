"""Checkpoints: arrays plus a JSON description, in one NumPy ``.npz`` file, no pickle.

A checkpoint holds every model array (``param/<name>``), the optimizer's state arrays
(``opt/<slot>/<name>``) and one JSON document (``__meta__``) with the architecture,
the optimizer's type, settings and step count, and user metadata. Loading rebuilds
the model from the JSON with the layer registry only, reads arrays with
``allow_pickle=False``, and so never executes anything from the file. Writing goes to
a temporary file in the same folder, is fsynced, then renamed over the target: a
failure at any point leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import random
from .backend import Backend, backend_of, current, dtype_name, resolve, to_numpy
from .layers import Layer, build_layer, layer_config
from .optim import OPTIMIZERS, SCHEDULES, Optimizer

FORMAT = "xpnet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read: the message says what is wrong."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: Layer
    optimizer: Optimizer | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save(path: str | Path, model: Layer, optimizer: Optimizer | None = None,
         **metadata: Any) -> None:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` atomically.

    ``metadata`` must be JSON-serialisable (epoch, accuracy, ...); the xpnet version,
    backend, device and dtype are recorded as well.
    """
    from . import __version__

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
    arrays["__meta__"] = np.frombuffer(blob, dtype=np.uint8)
    _atomic_write(path, arrays)


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
        lr = {"schedule": type(lr).__name__, "config": lr.get_config()}
    return {"type": type(opt).__name__, "lr": lr, "config": opt.get_config(),
            "steps": opt.steps, "params": order}


def _atomic_write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
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


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise CheckpointError(f"{path}: not an xpnet checkpoint (no __meta__ entry)")
            arrays = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(
            f"{path}: not a readable xpnet checkpoint (truncated, corrupted or another "
            f"format): {e}"
        ) from None
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the checkpoint's description is corrupted ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xpnet checkpoint (format is "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer xpnet (format {meta['format_version']}); upgrade xpnet"
        )
    return meta, arrays


def load_checkpoint(path: str | Path, *, backend: str | Backend | None = None,
                    device: str | None = None) -> Checkpoint:
    """Rebuild the model, its optimizer (if saved) and metadata on any backend.

    ``backend``/``device`` default to the current backend, so a checkpoint written on
    a GPU loads on a CPU-only machine.
    """
    path = Path(path)
    meta, arrays = _read(path)
    be = resolve(backend, device)
    # Building draws initial weights, which the file's replace at once: draw them from
    # a stream of their own, so loading leaves the seeded stream where it was.
    with random.RandomStream(0).active():
        try:
            model = build_layer(meta["model"], backend=be)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the model ({e})") from None
    state = dict(model.named_state())
    if sorted(state) != sorted(meta.get("params", [])):
        raise CheckpointError(f"{path}: the parameter list does not match the architecture")
    for name, p in state.items():
        key = f"param/{name}"
        if key not in arrays:
            raise CheckpointError(f"{path}: missing array {key!r}")
        arr = arrays[key]
        if tuple(arr.shape) != p.shape:
            raise CheckpointError(
                f"{path}: array {key!r} has shape {tuple(arr.shape)}, the architecture "
                f"expects {p.shape}"
            )
        p.value = be.asarray(arr, dtype=str(arr.dtype))
    optimizer = None
    if "optimizer" in meta:
        optimizer = _rebuild_optimizer(path, meta["optimizer"], model, arrays, be)
    return Checkpoint(model, optimizer, dict(meta.get("metadata", {})))


def _rebuild_optimizer(path: Path, spec: dict, model: Layer, arrays: dict[str, np.ndarray],
                       be: Backend) -> Optimizer:
    cls = OPTIMIZERS.get(spec.get("type"))
    if cls is None:
        raise CheckpointError(f"{path}: unknown optimizer type {spec.get('type')!r}")
    params = dict(model.named_parameters())
    lr = spec["lr"]
    if isinstance(lr, dict):
        sched = SCHEDULES.get(lr.get("schedule"))
        if sched is None:
            raise CheckpointError(f"{path}: unknown schedule {lr.get('schedule')!r}")
        lr = sched(**lr["config"])
    try:
        opt = cls([params[n] for n in spec["params"]], lr=lr, **spec["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the optimizer ({e})") from None
    opt.steps = int(spec["steps"])
    for slot in opt.state:
        for i, name in enumerate(spec["params"]):
            key = f"opt/{slot}/{name}"
            if key in arrays:
                opt.state[slot][i] = be.asarray(arrays[key], dtype=str(arrays[key].dtype))
    return opt


def load(path: str | Path, *, backend: str | Backend | None = None,
         device: str | None = None) -> Layer:
    """Rebuild the model saved at ``path`` on ``backend``/``device`` (default: current)."""
    return load_checkpoint(path, backend=backend, device=device).model
