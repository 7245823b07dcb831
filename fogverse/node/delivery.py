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
from fogverse.node.offsets import OffsetTracker, Pending
from fogverse.record import Headers, Record

__all__ = ["ERROR_HEADER_PREFIX", "Delivery", "Hold", "current_delivery", "error_headers"]

ERROR_HEADER_PREFIX = "fogverse.error."
_MAX_MESSAGE = 1024
_MAX_TRACEBACK = 8192

current_delivery: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "fogverse_current_delivery", default=None
)
"""The input whose outputs are being sent right now; ``Producer.send`` reads it for the
default key and headers, and to tie each ack to the input it derives from."""

FailureHandler = Callable[["Delivery", str, BaseException], Awaitable[None]]
"""Dead-letters an input: called with the stage that failed ("send", "hold") and why."""
Fallback = Callable[[BaseException], Awaitable[None]]
"""Called with a dead letter's failure: sends (and tracks) a replacement, or raises."""


class Delivery(Pending):
    """One input from receive until it may be committed; it is its own entry in the offset
    tracker (``token`` is itself while the tracker waits for it)."""

    __slots__ = (
        "content_type",
        "followers",
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
            self.token = tracker.begin((record.topic or "", record.partition), record.offset, self)
        self.pending = 0
        self.sealed = False
        self.content_type: str | None = None
        self.on_failure = on_failure
        self.on_fatal = on_fatal
        self.profiler: Profiler | None = None
        self.stamps: Stamps | None = None
        # Held inputs released while this one was processed: they finish with it.
        self.followers: list[Delivery] | None = None

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

    def output_acked(self, exc: BaseException | None) -> None:
        """An output counted in ``pending`` (see ``track``) was settled: acknowledged when
        ``exc`` is ``None``, else it goes to ``on_failure``. A transport's
        ``send_nowait`` calls this directly, with no future between."""
        if exc is None:
            self.pending -= 1
            if self.sealed and self.pending == 0:
                self._finish()
            return
        self._replace(self.on_failure(self, "send", exc))

    def _on_ack(self, fut: asyncio.Future[Any], fallback: Fallback | None = None) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.pending -= 1
            if self.sealed and self.pending == 0:
                self._finish()
            return
        exc = _failure(fut)
        assert exc is not None  # the ack failed: success returned above
        self._replace(self.on_failure(self, "send", exc) if fallback is None else fallback(exc))

    def _replace(self, handled: Awaitable[None]) -> None:
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
        self.abandon()
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

    def hold(self, holds: set[Hold]) -> Hold:
        """Keep this input open until the returned :class:`Hold` is released; ``holds``
        is the node's set of open holds, which it abandons when it stops."""
        self.pending += 1
        hold = Hold(self, holds)
        holds.add(hold)
        return hold

    def abandon(self) -> None:
        """Never commit this input, nor past it, and let drains stop waiting for it: it is
        read again after a restart or by the partition's next owner."""
        if self.token is not None and self.tracker is not None:
            self.tracker.abandon(self.token)
            self.token = None
        followers, self.followers = self.followers, None
        if followers is not None:
            for held in followers:
                held.abandon()

    def _finish(self) -> None:
        if self.stamps is not None and self.profiler is not None:
            self.profiler.finish(self.stamps)
        if self.token is not None and self.tracker is not None:
            self.tracker.done(self.token)
            self.token = None
        followers, self.followers = self.followers, None
        if followers is not None:
            for held in followers:
                held._release()


class Hold:
    """An input kept uncommitted after its ``process`` step returned (see
    :meth:`fogverse.Runnable.hold`).

    For joins and windows, where the result of one input is made when a later one arrives:
    until :meth:`release` (or :meth:`fail`), the input's offset is not committed, so a crash
    in between reads it again instead of losing it. A node that stops, or loses the input's
    partition to a rebalance, abandons its open holds: it does not wait for them, and their
    inputs stay uncommitted for whoever reads the partition next.
    """

    __slots__ = ("_delivery", "_holds")

    def __init__(self, delivery: Delivery, holds: set[Hold]) -> None:
        self._delivery: Delivery | None = delivery
        self._holds = holds

    @property
    def record(self) -> Record:
        """The held input."""
        if self._delivery is None:
            raise RuntimeError("this hold is no longer open (released, failed or abandoned)")
        return self._delivery.record

    @property
    def open(self) -> bool:
        """Neither released nor failed yet."""
        return self._delivery is not None

    def release(self) -> None:
        """Done with the input: it is committed once whatever was sent for it is acknowledged.
        Released while another input is processed (its partner, whose ``process`` sends the
        pair), once that input is committable too. Releasing twice does nothing."""
        delivery = self._take()
        if delivery is None:
            return
        partner = current_delivery.get()
        if (
            partner is not None
            and partner is not delivery
            and not partner.sealed
            and partner.token is not None
        ):
            # The pair is sent on the partner's behalf and acknowledged against it only:
            # committed before that ack, the held input would be lost with the pair in a crash.
            if partner.followers is None:
                partner.followers = []
            partner.followers.append(delivery)
        else:
            delivery._release()

    def fail(self, exc: BaseException) -> None:
        """Give up on the input: it goes to the node's dead-letter topic (stage ``hold``,
        with ``exc`` in the error headers) and is committed once the dead letter is
        acknowledged. Does nothing on a hold already released."""
        delivery = self._take()
        if delivery is not None:
            delivery._replace(delivery.on_failure(delivery, "hold", exc))

    def abandon(self) -> None:
        """Leave the input uncommitted (what a stopping node does with its open holds)."""
        delivery = self._take()
        if delivery is not None:
            delivery.abandon()

    def _take(self) -> Delivery | None:
        delivery, self._delivery = self._delivery, None
        self._holds.discard(self)
        return delivery

    def __repr__(self) -> str:
        if self._delivery is None:
            return "<Hold released>"
        r = self._delivery.record
        return f"<Hold {r.topic}[{r.partition}]@{r.offset}>"


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
