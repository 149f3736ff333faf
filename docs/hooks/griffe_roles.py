"""griffe extension: Sphinx roles in xpnet's docstrings become links in the API pages.

xpnet's docstrings cross-reference with ``:func:`name```, ``:class:`~a.b.C``` and the
like. mkdocstrings reads Markdown, so each role becomes an autorefs link to the object
it names, resolved from the documented object's scope outward (class, module, package),
as Sphinx does. The link is optional: a target no page documents (a standard-library
class) renders as plain code instead of failing the build. A reST literal-block marker
``::`` at the end of a line becomes ``:`` (the indented block after it is code in
Markdown already).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.M)


def _resolve(obj: griffe.Object, target: str) -> str:
    if target.startswith("xpnet"):
        return target
    head = target.split(".", 1)[0]
    scope: Any = obj
    while scope is not None:
        if head in scope.members:
            return f"{scope.path}.{target}"
        scope = scope.parent
    return target


def convert(obj: griffe.Object, text: str) -> str:
    def link(m: re.Match) -> str:
        short, target = m.group(1), m.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        return (f'<autoref identifier="{_resolve(obj, target)}" optional>'
                f"<code>{shown}</code></autoref>")

    return LITERAL.sub(":", ROLE.sub(link, text))


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = convert(obj, obj.docstring.value)
