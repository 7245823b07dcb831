"""The view's modules import one another without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import fogverse.view

PACKAGE = Path(fogverse.view.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every fogverse.view module ``path`` imports, at any depth (functions,
    TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("fogverse.view."):
                found.add(node.module.removeprefix("fogverse.view."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fogverse.view."):
                    found.add(alias.name.removeprefix("fogverse.view."))
    return found


def test_no_module_of_the_view_imports_itself_back() -> None:
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "service" in graph["cli"] and "server" in graph["service"], "the graph is read"

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph.get(node, ()):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    for module in graph:
        assert cycle_from(module, module, (module,)) is None, cycle_from(module, module, (module,))
