"""The documentation site's reference covers the public surface, and its nav every page.

The site itself is built strictly by ``make docs`` and by ``make test`` (beside the suite);
these checks are the fast ones a missing entry would otherwise only show as a stale page.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC = ["fogverse", "processors", "fogverse.autoscale", "fogverse.partitions", "fogverse.view"]


def _documented() -> set[str]:
    names = set()
    for page in (DOCS / "api").glob("*.md"):
        for target in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M):
            names.add(target.rsplit(".", 1)[-1])
    return names


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_has_a_reference_entry(module: str) -> None:
    missing = sorted(set(importlib.import_module(module).__all__) - _documented())
    assert not missing, f"{module}: not in docs/api/: {missing}"


def test_every_page_is_in_the_nav() -> None:
    def pages(entries: list) -> set[str]:
        found: set[str] = set()
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found |= pages(value) if isinstance(value, list) else {value}
        return found

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.glob("**/*.md")}
    assert pages(config["nav"]) == on_disk
