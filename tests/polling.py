"""Waiting in tests: poll a condition until it holds, or fail once a deadline has passed.

``until`` is for async tests, ``wait_until`` for synchronous ones; both fail the same way."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["until", "wait_until"]


def _timed_out(timeout: float, what: str | Callable[[], str]) -> str:
    # A callable ``what`` says what is still wrong at the deadline (leftover pids, ...).
    return f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}"


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str | Callable[[], str],
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
        assert loop.time() < deadline, _timed_out(timeout, what)
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.01,
) -> None:
    """:func:`until` for synchronous tests: blocks the calling thread between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, _timed_out(timeout, what)
        time.sleep(interval)
