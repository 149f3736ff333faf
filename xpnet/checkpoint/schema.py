"""What a checkpoint's JSON document must hold, checked against its arrays before
anything is built.

The document (``format``, ``format_version``, ``model``, ``params``, ``metadata``, and
optionally ``optimizer`` and ``loss``) is held to its types; the model's description
declares its arrays through the layers' own declarations (``declared_state_of``: each
layer type says which arrays a config of it holds, a Graph checks its node list), and
the file must hold exactly those, of the declared shapes and dtypes, plus the optimizer
state its description names. Every check here raises
:class:`~xpnet._jsonconfig.ConfigError` naming the entry; the caller adds the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._jsonconfig import JSON_KINDS, ConfigError, check_config, check_keys, is_int, show
from ..layers.base import DeclaredState, Layer, declared_state_of
from ..losses import LOSS_TYPES
from ..optim import OPTIMIZERS, SCHEDULES, Optimizer
from .common import PARAM_DTYPES, dtype_text

FORMAT = "xpnet-checkpoint"
#: 1 since the first release; ``loss`` and ``not_trainable`` (optional: the arrays that
#: are not trained, running statistics and parameters frozen by hand) came later, and
#: readers ignore top-level entries they do not know, so files with them still read as
#: version 1 (an older reader loads a frozen parameter as trainable).
FORMAT_VERSION = 1
#: 2: a file that holds tied parameters (a description's ``ties``), optimizer parameter
#: groups (``optimizer.groups``), initialisers described by a config (``init`` as an
#: object) or an optimizer over a parameter frozen after it was made, which version-1
#: readers cannot read (they ask for a newer xpnet); every other file is still written
#: as version 1. The newest version this xpnet reads.
LATEST_FORMAT_VERSION = 2

_HEADER_TYPES = {"model": dict, "params": list, "metadata": dict, "optimizer": dict,
                 "loss": dict, "not_trainable": list}


def check_description(meta: Any, arrays: dict[str, np.ndarray]) -> DeclaredState:
    """Check ``meta`` and ``arrays`` fully without building anything; return the
    declared arrays, name -> (shape, dtype)."""
    check_header(meta)
    declared = declared_state_of(meta["model"])
    names = meta["params"]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"the parameter list names {', '.join(twice)} twice")
    if set(names) != set(declared):
        missing = [n for n in declared if n not in names]
        extra = [n for n in names if n not in declared]
        problems = ([f"it lacks {missing}"] if missing else []) + (
            [f"it lists {extra}, which the architecture does not declare (a layer type "
             f"declares its arrays with param_shapes, see xpnet.Layer)"] if extra else [])
        raise ConfigError(f"the parameter list does not match the architecture: "
                          f"{'; '.join(problems)}")
    expected = set()
    for name, (shape, dtype) in declared.items():
        key = f"param/{name}"
        check_array(key, arrays.get(key), shape, dtype)
        expected.add(key)
    if "optimizer" in meta:
        expected |= check_optimizer(meta["optimizer"], declared, arrays)
    if "loss" in meta:
        check_loss(meta["loss"])
    unexpected = sorted(set(arrays) - expected)
    if unexpected:
        raise ConfigError(f"unexpected entr{'ies' if len(unexpected) > 1 else 'y'} "
                          f"{', '.join(map(repr, unexpected))}, which the description "
                          f"does not declare")
    return declared


def check_header(meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"not an xpnet checkpoint (format is {found!r}, expected "
                          f"{FORMAT!r})")
    version = meta.get("format_version", 0)
    if not is_int(version):
        raise ConfigError(f"format_version is {show(version)}, expected an integer")
    if version > LATEST_FORMAT_VERSION:
        raise ConfigError(f"written by a newer xpnet (format {version}); upgrade xpnet")
    for key, kind in _HEADER_TYPES.items():
        required = key in ("model", "params")
        if (required or key in meta) and not isinstance(meta.get(key), kind):
            raise ConfigError(f"the description's {key!r} is {show(meta.get(key))}, "
                              f"expected {JSON_KINDS[kind]}")
    bad = [n for n in meta["params"] if not isinstance(n, str)]
    if bad:
        raise ConfigError(f"the parameter list holds {show(bad[0])}, expected names "
                          f"(strings)")
    stray = [n for n in meta.get("not_trainable", ()) if n not in meta["params"]]
    if stray:
        raise ConfigError(f"not_trainable names {show(stray[0])}, which is not in the "
                          f"parameter list")


def check_array(key: str, arr: np.ndarray | None, shape: tuple[int, ...],
                dtype: str | None) -> None:
    if arr is None:
        raise ConfigError(f"missing array {key!r}")
    wanted = (dtype,) if dtype is not None else PARAM_DTYPES
    if dtype_text(arr.dtype) not in wanted:
        raise ConfigError(f"array {key!r} has dtype {dtype_text(arr.dtype)}, the "
                          f"architecture declares {' or '.join(wanted)}")
    if tuple(arr.shape) != shape:
        raise ConfigError(f"array {key!r} has shape {tuple(arr.shape)}, the architecture "
                          f"expects {shape}")


def check_optimizer(spec: dict, declared: DeclaredState,
                    arrays: dict[str, np.ndarray]) -> set[str]:
    """Check the optimizer's description and state arrays; return the arrays' keys."""
    where = "optimizer"
    check_keys(where, spec, {"type": "str", "lr": "float | dict", "config": "dict",
                             "steps": "int", "params": "list[str]", "loss_scale": "dict",
                             "groups": "list"},
               {"type", "lr", "config", "steps", "params"})
    if "loss_scale" in spec:
        _check_loss_scale(where, spec["loss_scale"])
    cls = OPTIMIZERS.get(spec["type"])
    if cls is None:
        raise ConfigError(f"unknown optimizer type {spec['type']!r}; known: "
                          f"{', '.join(OPTIMIZERS)}")
    check_config(f"{where} config", cls, spec["config"], skip=("params", "lr"))
    check_lr(where, spec["lr"])
    if "groups" in spec:
        _check_groups(where, cls, spec["groups"], spec["params"])
    if spec["steps"] < 0:
        raise ConfigError(f"{where} steps is {spec['steps']}, expected >= 0")
    _check_param_names(where, spec["params"], declared)
    return _check_slots(cls, spec["params"], declared, arrays)


def _check_loss_scale(where: str, scale: Any) -> None:
    """The dynamic loss scale's state: ``{"scale": > 0, "growth_tracker": >= 0}``."""
    check_keys(f"{where} loss_scale", scale, {"scale": "float", "growth_tracker": "int"},
               {"scale", "growth_tracker"})
    if scale["scale"] <= 0 or scale["growth_tracker"] < 0:
        raise ConfigError(f"{where} loss_scale is {show(scale)}, expected a scale > 0 "
                          f"and a growth_tracker >= 0")


def _check_groups(where: str, cls: type[Optimizer], groups: list, params: list[str]) -> None:
    """Each parameter group: its params, rate and config; together they hold the
    optimizer's ``params`` in order, each once."""
    members = []
    for i, group in enumerate(groups):
        here = f"{where} groups[{i}]"
        check_keys(here, group, {"params": "list[str]", "lr": "float | dict",
                                 "config": "dict"}, {"params", "lr", "config"})
        check_config(f"{here} config", cls, group["config"], skip=("params", "lr"))
        check_lr(here, group["lr"])
        members += group["params"]
    if members != params:
        raise ConfigError(f"{where} groups hold {members}, expected the optimizer's "
                          f"params {params} in order, each once")


def _check_param_names(where: str, names: list[str], declared: DeclaredState) -> None:
    """The optimizer's params: names the model declares, each once."""
    unknown = [n for n in names if n not in declared]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"{where} params {names} name {unknown or 'a parameter'} "
                          f"{'not in the model' if unknown else 'twice'}")


def _check_slots(cls: type[Optimizer], names: list[str], declared: DeclaredState,
                 arrays: dict[str, np.ndarray]) -> set[str]:
    """Each parameter's state arrays (``opt/<slot>/<name>``): all of the optimizer's slots
    or none, shaped as the parameter; return their keys."""
    keys = set()
    for name in names:
        present = [s for s in cls.slots if f"opt/{s}/{name}" in arrays]
        if present and len(present) != len(cls.slots):
            raise ConfigError(f"{cls.__name__} state of {name!r} has slots {present}, "
                              f"expected all of {list(cls.slots)} or none")
        shape, dtype = declared[name]
        for slot in present:
            key = f"opt/{slot}/{name}"
            check_array(key, arrays[key], shape, dtype)
            keys.add(key)
    return keys


def check_lr(where: str, lr: Any) -> None:
    """A rate: a positive number, or ``{"schedule": a class in SCHEDULES, "config"}``."""
    if isinstance(lr, dict):
        check_keys(f"{where} lr", lr, {"schedule": "str", "config": "dict"},
                   {"schedule", "config"})
        sched = SCHEDULES.get(lr["schedule"])
        if sched is None:
            raise ConfigError(f"unknown schedule {lr['schedule']!r}; known: "
                              f"{', '.join(SCHEDULES)}")
        check_config(f"{where} lr config", sched, lr["config"])
    elif lr <= 0:
        raise ConfigError(f"{where} lr is {show(lr)}, expected a positive number")


def check_optimizer_covers(names: list[str], model: Layer) -> None:
    """The optimizer must hold the model's trainable parameters, and besides them only
    parameters frozen after it was made (``trainable = False``)."""
    trainable = [n for n, _ in model.named_parameters()]
    frozen = {n for n, p in model.named_state() if not p.trainable}
    missing = [n for n in trainable if n not in names]
    extra = [n for n in names if n not in trainable and n not in frozen]
    if missing or extra:
        raise ConfigError(
            f"the optimizer holds {len(names)} parameter(s), expected the model's "
            f"{len(trainable)} trainable ones: it lacks {missing or 'none'} and holds "
            f"{extra or 'none'} that are not trainable"
        )


def check_loss(spec: Any) -> None:
    """``{"type": a class in LOSS_TYPES, "config": its constructor arguments}``."""
    check_keys("loss", spec, {"type": "str", "config": "dict"}, {"type", "config"})
    if spec["type"] not in LOSS_TYPES:
        raise ConfigError(f"unknown loss type {spec['type']!r}; known: "
                          f"{', '.join(LOSS_TYPES)}")
    check_config(f"loss config ({spec['type']})", LOSS_TYPES[spec["type"]], spec["config"])
