"""A griffe extension for the API reference: Sphinx roles in docstrings become code.

The docstrings are numpydoc, read by Sphinx-minded tools and by mkdocstrings alike; they name
other objects with roles such as ``:func:`saegeo.classify``` (``~`` keeps only the last part,
as in Sphinx). mkdocstrings renders Markdown, where a role would show as literal text, so each
becomes inline code of the name it shows.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_as_code, obj.docstring.value)
