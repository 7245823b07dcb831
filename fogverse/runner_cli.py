"""``fogverse run TARGET``: run a node from a module or a pipeline script."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

__all__ = ["load_target", "register"]


def load_target(target: str) -> Any:
    """``package.module:Name`` or ``path/to/script.py:Name``; ``Name`` defaults to ``main``."""
    where, _, name = target.partition(":")
    name = name or "main"
    if where.endswith(".py") or "/" in where:
        path = Path(where).resolve()
        if not path.exists():
            raise SystemExit(f"fogverse run: no such file: {where}")
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"fogverse run: {where} has no attribute {name!r}") from None


def _run(args: argparse.Namespace) -> int:
    from fogverse.app import run

    obj = load_target(args.target)
    if inspect.isclass(obj):
        obj = obj()
    elif inspect.iscoroutinefunction(obj):
        run(obj())
        return 0
    elif callable(obj) and not hasattr(obj, "run"):
        obj = obj()
    # A parallel node's module was imported by the target itself; don't load it otherwise.
    parallel = sys.modules.get("fogverse.node.parallel")
    if parallel is not None and isinstance(obj, parallel.ParallelRunnable):
        run(obj.run(args.process_number, args.max_running_task))
    else:
        run(obj)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a node: module:Class, script.py:Class or a coroutine")
    p.add_argument("target", help="module:Name or path/to/script.py:Name")
    p.add_argument(
        "--process-number", type=int, default=None, help="worker processes for a parallel node"
    )
    p.add_argument(
        "--max-running-task", type=int, default=None, help="tasks in flight for a parallel node"
    )
    p.set_defaults(func=_run)
