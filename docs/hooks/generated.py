"""mkdocs hook: parts of pages made from the code at build time, so they cannot drift.

``<!-- xpnet-namespace -->``: the table of ``xpnet.__all__`` (the API index). Each name
links to the object's own path (``xpnet.layers.linear.Linear``). A name that
no API page documents leaves that link unresolved, which fails ``mkdocs build
--strict``: the reference cannot silently miss a public name.
"""

from __future__ import annotations

import inspect
import re
import types

MARKER = "<!-- xpnet-namespace -->"
FIT_SIGNATURE = "<!-- fit-signature -->"
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


def fit_signature() -> str:
    """``xn.fit(...)`` with every parameter and default, wrapped to the page's width."""
    import xpnet

    parts = []
    for p in inspect.signature(xpnet.fit).parameters.values():
        if p.default is not p.empty:
            parts.append(f"{p.name}={p.default!r}")
        elif p.kind is p.KEYWORD_ONLY:
            parts.append(f"{p.name}=...")  # required, by keyword
        else:
            parts.append(p.name)
    lines, line = [], "history = xn.fit("
    for i, p in enumerate(parts):
        piece = p + (", " if i < len(parts) - 1 else ")")
        if len(line) + len(piece.rstrip()) > 88:
            lines.append(line.rstrip())
            line = " " * len("history = xn.fit(")
        line += piece
    lines.append(line)
    return "```python\n" + "\n".join(lines) + "\n```"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, table())
    if FIT_SIGNATURE in markdown:
        markdown = markdown.replace(FIT_SIGNATURE, fit_signature())
    return markdown
