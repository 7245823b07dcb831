"""Waiting in tests: poll a condition until it holds, or fail once a deadline has passed."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["until"]


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.01,
) -> None:
    """Poll ``predicate`` (a plain or an async callable) every ``interval`` seconds until it
    is true; raise AssertionError naming ``what`` after ``timeout`` seconds.

    Pass a longer ``interval`` where one evaluation is costly (reading a topic, scanning
    processes, connecting to a port)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(interval)
