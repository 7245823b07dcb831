"""Running nodes from a script: one call, uvloop when available, clean exit on signals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run"]

logger = logging.getLogger(__name__)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Unix
        return None
    return uvloop.new_event_loop


def run(*nodes_or_coros: Any) -> None:
    """Run nodes (their ``run()`` coroutines are awaited together) or coroutines until they
    all finish; SIGINT/SIGTERM make every node drain, commit and return, so the process
    exits with status 0."""

    async def main() -> None:
        aws: list[Awaitable[Any]] = [
            n.run() if hasattr(n, "run") and not asyncio.iscoroutine(n) else n
            for n in nodes_or_coros
        ]
        await asyncio.gather(*aws)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
