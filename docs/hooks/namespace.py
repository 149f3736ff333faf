"""mkdocs hook: the table of ``xpnet.__all__`` on the API index page, made at build time.

Each name links to the object's own path (``xpnet.layers.linear.Linear``). A name that
no API page documents leaves that link unresolved, which fails ``mkdocs build
--strict``: the reference cannot silently miss a public name.
"""

from __future__ import annotations

import inspect
import re
import types

MARKER = "<!-- xpnet-namespace -->"
ROLE = re.compile(r":(?:py:)?\w+:`~?([\w.]+)`")


def _target(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{obj.__module__}.{obj.__qualname__}"


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return ROLE.sub(r"`\1`", first).replace("|", "\\|")


def table() -> str:
    import xpnet

    rows = ["| name | what it is |", "|---|---|"]
    for name in xpnet.__all__:
        if name == "__version__":
            rows.append(f"| `xn.__version__` | the version string, `{xpnet.__version__}` |")
            continue
        obj = getattr(xpnet, name)
        rows.append(f"| [`xn.{name}`][{_target(obj)}] | {_summary(obj)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, table())
    return markdown
