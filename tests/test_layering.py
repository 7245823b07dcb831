"""The core never imports its add-ons: they attach to a node through ``fogverse.plugins``.

The core is every module of the package but the add-ons (auto-scaling, dynamic partitions, the
live view, the local broker) and the command line that assembles them. Each core module's
syntax tree is read whole, so an import inside a function or under ``TYPE_CHECKING`` counts
as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fogverse"
ADD_ONS = ("fogverse.autoscale", "fogverse.partitions", "fogverse.view")
NOT_CORE = ("autoscale", "view", "broker", "partitions.py", "cli.py", "__main__.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] not in NOT_CORE
        and not p.relative_to(PACKAGE).parts[0].startswith("partitions")
    )


def imported_names(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every module ``source`` imports or names to ``importlib.import_module``/``__import__``,
    relative imports resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and _callee(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _is_add_on(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ADD_ONS)


def test_the_walk_sees_every_way_of_importing_an_add_on() -> None:
    hidden = """
import typing
if typing.TYPE_CHECKING:
    from fogverse.partitions import ConsumerStart
def later():
    from ..autoscale.observer import enable_heartbeats
    import fogverse.view
    importlib.import_module("fogverse.autoscale.lock")
from .. import view
"""
    found = [n for n in imported_names(hidden, "fogverse.parallel.pool") if _is_add_on(n)]
    assert sorted(found) == [
        "fogverse.autoscale.lock",
        "fogverse.autoscale.observer",
        "fogverse.autoscale.observer.enable_heartbeats",
        "fogverse.partitions",
        "fogverse.partitions.ConsumerStart",
        "fogverse.view",
        "fogverse.view",
    ]


def test_the_core_is_what_it_says() -> None:
    names = {_module_name(p) for p in core_modules()}
    for expected in (
        "fogverse",
        "fogverse.node.loop",
        "fogverse.node.io",
        "fogverse.node.delivery",
        "fogverse.node.offsets",
        "fogverse.codec",
        "fogverse.plugins",
        "fogverse.transport.confluent",
        "fogverse.transport.errors",
        "fogverse.transport.aiokafka_clients",
        "fogverse.parallel.pool",
        "fogverse.node.parallel",
    ):
        assert expected in names
    assert not any(_is_add_on(n) or n.startswith("fogverse.broker") for n in names)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_core_module_imports_an_add_on(path: Path) -> None:
    module = _module_name(path)
    found = [
        n
        for n in imported_names(path.read_text(), module, path.name == "__init__.py")
        if _is_add_on(n)
    ]
    assert not found, (
        f"{module} imports {sorted(set(found))}: add-ons attach through fogverse.plugins"
    )


def test_admin_clients_are_made_in_one_place() -> None:
    """confluent-kafka's AdminClient is made by fogverse.admin only; the live view's probe
    keeps aiokafka's (librdkafka's ListConsumerGroupOffsets can crash the process)."""
    makers: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _callee(node.func) in (
                "AdminClient",
                "AIOKafkaAdminClient",
            ):
                makers.setdefault(str(path.relative_to(PACKAGE)), set()).add(_callee(node.func))
    assert makers == {"admin.py": {"AdminClient"}, "view/probe.py": {"AIOKafkaAdminClient"}}
