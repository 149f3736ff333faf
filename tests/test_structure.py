"""The package's shape: no import cycles, and array libraries only behind the adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xpnet as xn

ROOT = Path(xn.__file__).parent
LIBRARIES = {"torch", "jax", "jaxlib", "cupy", "cupyx", "array_api_strict"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """Every xpnet module that ``path``'s imports run, at any depth (inside functions
    too), with the line. ``from pkg import name`` depends on the submodule ``pkg.name``
    when there is one, else on ``pkg`` itself (an attribute its ``__init__`` sets)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the xpnet modules its imports run.

    Importing ``a.b.c`` from outside package ``a.b`` first runs ``a/b/__init__.py``, so
    that counts too; a package's own modules do not re-run its ``__init__`` unless they
    import a name from it.
    """
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(path, set(modules)):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target or target == name:
                continue
            deps.add(target)  # named explicitly: counts even when it is an ancestor
            parts = target.split(".")
            for i in range(1, len(parts)):
                dep = ".".join(parts[:i])
                if dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    return graph


def test_no_import_cycles_counting_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(d) is None:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m)


def test_only_the_adapters_import_array_libraries():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if "backends" in path.relative_to(ROOT).parts:
            continue
        for target, line in _imports(path, set()):
            if target.split(".")[0] in LIBRARIES or target.startswith("array_api_compat."):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not offenders, "\n".join(offenders)


def test_every_adapter_is_registered_and_answers():
    from xpnet import backends

    assert list(backends.ADAPTERS) == ["numpy", "cupy", "torch", "jax", "array_api_strict"]
    for name, a in backends.ADAPTERS.items():
        assert backends.adapter(name) is a
        for alias in a.aliases:
            assert backends.adapter(alias.upper()) is a
    import numpy as np

    assert backends.adapter_of(np.zeros(2)).name == "numpy"
    with pytest.raises(TypeError, match="not an array of a supported backend: list"):
        backends.adapter_of([1.0])
