"""Configs read as JSON, checked against what they describe before anything is built.

A checkpoint's document describes layers, an optimizer, a schedule and a loss by
their constructor arguments. Read from a file, each value may be anything JSON holds;
:func:`check_config` holds it to the constructor's annotations (``int`` is no float and
no bool, ``float`` is finite, ``tuple[float, float]`` is an array of two numbers), and
:func:`check_keys` to an explicit table where there is no constructor to read (a
Graph's node list). Both raise :class:`ConfigError`, whose message names the place
(``model config layers[0] (Linear) in_features is 3.7 (number), expected int``); the
checkpoint code adds the file's name.

Layers (``Layer.declared_state``), graphs and the checkpoint package all use this
module, and it uses none of them.
"""

from __future__ import annotations

import inspect
import math
from typing import Any


class ConfigError(ValueError):
    """A description (a layer's, optimizer's, schedule's or loss's config, or a
    checkpoint's document) that does not fit what it describes; the message says where."""


JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
              int: "an integer", float: "a number", type(None): "null"}


def show(value: Any) -> str:
    """``value`` for a message, cut short, with its JSON kind: ``3.7 (number)``."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({JSON_KINDS.get(type(value), type(value).__name__).split()[-1]})"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def signature(cls: type, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """The named constructor arguments a description may give."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and n not in skip and p.kind in kinds}


def annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is p.empty:
        return "Any"
    return a if isinstance(a, str) else inspect.formatannotation(a)


def check_config(where: str, cls: type, config: Any, skip: tuple[str, ...] = ()) -> None:
    """``config`` holds only arguments of ``cls``'s constructor (less ``skip``), every
    required one, each of its annotated type."""
    params = signature(cls, skip)
    check_keys(where, config, {n: annotation(p) for n, p in params.items()},
               {n for n, p in params.items() if p.default is p.empty})


def check_keys(where: str, obj: Any, types: dict[str, str], required: set[str]) -> None:
    """``obj`` is an object with only the keys of ``types``, the ``required`` ones
    among them, each value of its annotated type."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is {show(obj)}, expected an object")
    for key in obj:
        if key not in types:
            raise ConfigError(f"{where} has unknown entry {key!r}; expected "
                              f"{', '.join(types) or 'none'}")
    for key in sorted(required):
        if key not in obj:
            raise ConfigError(f"{where} lacks entry {key!r}")
    for key, value in obj.items():
        if not matches(value, types[key]):
            wanted = types[key].replace("float", "finite float")
            raise ConfigError(f"{where} {key} is {show(value)}, expected {wanted}")


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if c == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def matches(value: Any, annotation: str) -> bool:
    """Whether the JSON ``value`` fits ``annotation`` (ints are not floats' stand-ins
    here: 3.7 or True is no int); names this does not know match anything."""
    alternatives = _split(annotation, "|")
    if len(alternatives) > 1:
        return any(matches(value, a) for a in alternatives)
    a = annotation.strip()
    simple = {"int": is_int, "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str), "None": lambda v: v is None,
              "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
              "Callable": callable,  # no JSON value: a function given in code
              "float": lambda v: (is_int(v) or isinstance(v, float)) and math.isfinite(v)}
    if a in simple:
        return simple[a](value)
    for head in ("tuple[", "list["):
        if a.startswith(head) and a.endswith("]"):
            items = _split(a[len(head):-1], ",")
            if not isinstance(value, list):
                return False
            if head == "list[" or items[-1] == "...":
                return all(matches(v, items[0]) for v in value)
            return len(value) == len(items) and all(map(matches, value, items))
    return True
