"""``fogverse run TARGET``: run a node from a module or a pipeline script."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from fogverse.cli import positive_int

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
        if spec is None or spec.loader is None:  # a directory, or a name without .py
            raise SystemExit(f"fogverse run: not a Python script: {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            # Only the target itself; a module the target imports that is missing keeps
            # its traceback.
            if exc.name is None or not (where + ".").startswith(exc.name + "."):
                raise
            raise SystemExit(f"fogverse run: no module named {exc.name!r}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"fogverse run: {where} has no attribute {name!r}") from None


def _run(args: argparse.Namespace) -> int:
    from fogverse.app import run

    obj = load_target(args.target)
    if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "run")):
        obj = obj()
    # A parallel node's module was imported by the target itself; don't load it otherwise.
    parallel = sys.modules.get("fogverse.node.parallel")
    if parallel is not None and isinstance(obj, parallel.ParallelRunnable):
        run(obj.run(args.process_number, args.max_running_task))
        return 0
    problem = None
    if not (asyncio.iscoroutine(obj) or callable(getattr(obj, "run", None))):
        problem = f"{args.target} gave {type(obj).__name__}, not a node or a coroutine"
    elif args.process_number is not None or args.max_running_task is not None:
        # Silently ignored, they would leave a node meant to be parallel on one process.
        problem = (
            f"--process-number and --max-running-task are for parallel nodes; "
            f"{args.target} is a {type(obj).__name__}"
        )
    if problem is not None:
        if asyncio.iscoroutine(obj):
            obj.close()  # never awaited, on purpose
        raise SystemExit(f"fogverse run: {problem}")
    run(obj)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a node: module:Class, script.py:Class or a coroutine")
    p.add_argument("target", help="module:Name or path/to/script.py:Name")
    p.add_argument(
        "--process-number",
        type=positive_int,
        default=None,
        help="worker processes for a parallel node",
    )
    p.add_argument(
        "--max-running-task",
        type=positive_int,
        default=None,
        help="tasks in flight for a parallel node",
    )
    p.set_defaults(func=_run)
