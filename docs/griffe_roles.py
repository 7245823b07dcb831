"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

FogVerse's docstrings name other objects the Sphinx way (``:class:`~fogverse.Consumer```);
Markdown would print the role itself. ``~`` keeps only the last component, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")


def _span(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_span, obj.docstring.value)
