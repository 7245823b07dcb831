"""At-least-once bookkeeping for one input: its outputs' acks decide when it may be committed.

An input is finished when the node has sealed it (nothing more will be sent for it) and
every record sent on its behalf — outputs and dead letters alike — has been acknowledged.
Only then does its offset count towards the partition's commit watermark.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from fogverse.metrics import Profiler, Stamps
from fogverse.offsets import OffsetTracker, Pending
from fogverse.record import Headers, Record

__all__ = ["ERROR_HEADER_PREFIX", "Delivery", "current_delivery", "error_headers"]

ERROR_HEADER_PREFIX = "fogverse.error."
_MAX_MESSAGE = 1024
_MAX_TRACEBACK = 8192

current_delivery: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "fogverse_current_delivery", default=None
)
"""The input whose outputs are being sent right now; ``Producer.send`` reads it for the
default key and headers, and to tie each ack to the input it derives from."""

FailureHandler = Callable[["Delivery", BaseException], Awaitable[None]]
Fallback = Callable[[BaseException], Awaitable[None]]
"""Called with a dead letter's failure: sends (and tracks) a replacement, or raises."""


class Delivery:
    __slots__ = (
        "content_type",
        "on_failure",
        "on_fatal",
        "pending",
        "profiler",
        "record",
        "sealed",
        "stamps",
        "token",
        "tracker",
    )

    def __init__(
        self,
        record: Record,
        tracker: OffsetTracker | None,
        on_failure: FailureHandler,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.record = record
        self.tracker = tracker
        self.token: Pending | None = None
        if tracker is not None and record.partition is not None and record.offset is not None:
            self.token = tracker.begin((record.topic or "", record.partition), record.offset)
        self.pending = 0
        self.sealed = False
        self.content_type: str | None = None
        self.on_failure = on_failure
        self.on_fatal = on_fatal
        self.profiler: Profiler | None = None
        self.stamps: Stamps | None = None

    def track(
        self,
        ack: asyncio.Future[Any],
        *,
        dead_letter: bool = False,
        fallback: Fallback | None = None,
    ) -> None:
        """Count ``ack`` (a transport's delivery future) against this input until it resolves.

        A failed output goes to ``on_failure`` (its dead letter). A failed dead letter is
        fatal, unless it has a ``fallback``: that is called with the failure to send (and
        track) a replacement, and only its raising is fatal.
        """
        self.pending += 1
        if not dead_letter:
            ack.add_done_callback(self._on_ack)
        elif fallback is None:
            ack.add_done_callback(self._on_dead_letter_ack)
        else:
            ack.add_done_callback(lambda fut: self._on_ack(fut, fallback))

    def _on_ack(self, fut: asyncio.Future[Any], fallback: Fallback | None = None) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.pending -= 1
            if self.sealed and self.pending == 0:
                self._finish()
            return
        exc = _failure(fut)
        handled = self.on_failure(self, exc) if fallback is None else fallback(exc)
        # Keep this input open until what replaces the record is queued and tracked in turn.
        task = asyncio.ensure_future(handled)
        task.add_done_callback(self._after_failure_handled)

    def _after_failure_handled(self, task: asyncio.Future[Any]) -> None:
        exc = _failure(task)
        if exc is not None:
            self._give_up(exc)
            return
        self._release()

    def _on_dead_letter_ack(self, fut: asyncio.Future[Any]) -> None:
        exc = _failure(fut)
        if exc is not None:
            self._give_up(exc)
            return
        self._release()

    def _give_up(self, exc: BaseException) -> None:
        # Neither the output nor its dead letter reached Kafka: never commit past this input,
        # and do not make the node's drain wait for it either (it would wait out its timeout).
        if self.token is not None and self.tracker is not None:
            self.tracker.abandon(self.token)
            self.token = None
        self.on_fatal(exc)

    def _release(self) -> None:
        self.pending -= 1
        if self.sealed and self.pending == 0:
            self._finish()

    def seal(self) -> None:
        """Nothing more will be sent for this input."""
        self.sealed = True
        if self.pending == 0:
            self._finish()

    def _finish(self) -> None:
        if self.stamps is not None and self.profiler is not None:
            self.profiler.finish(self.stamps)
        if self.token is not None and self.tracker is not None:
            self.tracker.done(self.token)
            self.token = None


def _failure(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError("delivery cancelled")
    return fut.exception()


def error_headers(record: Record, stage: str, exc: BaseException, tb: str | None = None) -> Headers:
    """The input's own headers plus what went wrong, where, and where the input came from."""
    if tb is None:
        tb = "".join(traceback.format_exception(exc))
    extra = [
        ("stage", stage),
        ("type", type(exc).__qualname__),
        ("message", str(exc)[:_MAX_MESSAGE]),
        ("traceback", tb[-_MAX_TRACEBACK:]),
        ("timestamp", str(time.time())),
    ]
    if record.topic is not None:
        extra.append(("topic", record.topic))
    if record.partition is not None:
        extra.append(("partition", str(record.partition)))
    if record.offset is not None:
        extra.append(("offset", str(record.offset)))
    kept = [(k, v) for k, v in record.headers if not k.startswith(ERROR_HEADER_PREFIX)]
    return kept + [(ERROR_HEADER_PREFIX + k, v.encode("utf-8", "replace")) for k, v in extra]
