"""The scaffolding the master's periodic workers share: start, stop and a loop that survives.

Once the master has caught up (``master.ready``), a worker evaluates every ``_interval()``
seconds until it is stopped. An evaluation that raises is logged and the next one runs on
time: a broker restart or one bad stage must not end a signal for the rest of the master's life.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fogverse.autoscale.messages import ControlMessage
from fogverse.autoscale.state import ControlState

__all__ = ["FailureLog", "PeriodicWorker"]


@dataclass
class _Failing:
    failures: int = 0
    suppressed: int = 0
    logged: dict[tuple[str, str], float] = field(default_factory=dict)


class FailureLog:
    """Logs failures that may repeat every few seconds for as long as an outage lasts.

    Each distinct error (type and message) of ``what`` is logged at once with its traceback;
    the same error again at most every ``every`` seconds, saying how many went unlogged. The
    first success after failures is logged once.
    """

    def __init__(
        self,
        log: logging.Logger,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self._failing: dict[str, _Failing] = {}

    def failed(self, what: str, exc: BaseException, level: int = logging.ERROR) -> None:
        run = self._failing.setdefault(what, _Failing())
        run.failures += 1
        key = (type(exc).__qualname__, str(exc))
        current = self.clock()
        last = run.logged.get(key)
        if last is not None and current - last < self.every:
            run.suppressed += 1
            return
        run.logged[key] = current
        unlogged = f" ({run.suppressed} failure(s) since not logged)" if run.suppressed else ""
        run.suppressed = 0
        self.log.log(level, "%s failed: %r%s", what, exc, unlogged, exc_info=exc)

    def recovered(self, what: str) -> None:
        run = self._failing.pop(what, None)
        if run is not None:
            self.log.info("%s works again after %d failure(s)", what, run.failures)


class PeriodicWorker(ABC):
    """A master observer that evaluates every ``_interval()`` seconds once the master is ready.

    Subclasses implement ``_interval`` and ``_tick`` (one evaluation); a ``start`` override
    does its own wiring and then awaits ``super().start(master)``; a ``stop`` override awaits
    ``super().stop()`` first, so that no evaluation starts new work while it winds down.
    """

    NAME: ClassVar[str]
    """Names the worker's task and its log lines."""

    def __init__(self) -> None:
        self.state: ControlState | None = None
        self._task: asyncio.Task[None] | None = None
        # The subclass's logger, so a worker's failures are logged under its own module.
        self._failures = FailureLog(logging.getLogger(type(self).__module__))

    @abstractmethod
    def _interval(self) -> float:
        """Seconds from the end of one evaluation to the start of the next."""

    @abstractmethod
    async def _tick(self) -> None:
        """One evaluation."""

    async def start(self, master: Any) -> None:
        self.state = master.state
        self._task = asyncio.create_task(self._loop(master.ready), name=self.NAME)

    async def stop(self) -> None:
        """Cancel the loop and wait for it; a second call does nothing."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than ``await task``: a cancellation of the caller itself must propagate,
        # not be taken for the loop's.
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            self._failures.log.error("%s ended", self.NAME, exc_info=task.exception())

    def on_message(self, message: ControlMessage) -> None:
        return None  # everything a periodic worker needs is in the master's state

    async def _loop(self, ready: asyncio.Event) -> None:
        await ready.wait()
        while True:
            try:
                await self._tick()
            except Exception as exc:
                self._failures.failed(f"{self.NAME} evaluation", exc)
            else:
                self._failures.recovered(f"{self.NAME} evaluation")
            await asyncio.sleep(self._interval())
