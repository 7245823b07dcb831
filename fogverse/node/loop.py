"""The node loop: start → loop { receive → decode → process → encode → send } → close.

Every step has ``_before_X`` / ``_after_X`` hooks (sync or async). Inputs are tracked from
receive until every record sent for them is acknowledged (see :mod:`fogverse.node.delivery`);
offsets are committed in the background up to each partition's contiguous watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import signal
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any

from fogverse.metrics import DEFAULT_SAMPLE, Profiler
from fogverse.node.delivery import (
    ERROR_HEADER_PREFIX,
    Delivery,
    Hold,
    current_delivery,
    error_headers,
)
from fogverse.node.offsets import OffsetTracker
from fogverse.plugins import Plugin, discover, overrides
from fogverse.record import Headers, Record, UnreadableRecord
from fogverse.transport.base import ConsumerTransport, ProducerTransport
from fogverse.transport.errors import refused_for_size

__all__ = ["Runnable"]

logger = logging.getLogger(__name__)

_HOOKS = tuple(
    f"_{when}_{step}"
    for step in ("start", "receive", "decode", "process", "encode", "send", "close")
    for when in ("before", "after")
)


# Every node running in this process: one SIGINT/SIGTERM stops them all.
_running: weakref.WeakSet[Runnable] = weakref.WeakSet()

# CPython's cyclic GC runs a young collection every 700 net allocations of container objects
# (2000 from 3.13). A node keeps thousands of them alive in flight (records, deliveries,
# delivery callbacks), which every young collection walks and promotes: on a 1 KiB
# pass-through the collector took about 2.5 us of the event-loop thread's 9 us per message,
# and a threshold of 10 000 ran the node 1.25x faster, as fast as with the GC off
# (benchmarks/README.md, "The cyclic GC"). Raised only from an interpreter default, while
# nodes run: a threshold someone chose is theirs.
_GC_DEFAULTS = frozenset({(700, 10, 10), (2000, 10, 10), (2000, 10, 0)})
_GC_YOUNG_WHILE_RUNNING = 10_000
_gc_restore: tuple[int, ...] | None = None


def _stop_all() -> None:
    for node in list(_running):
        node.stop()


class FatalDeliveryError(RuntimeError):
    """An output and its dead letter both failed: the node stops without committing it."""


class Runnable:
    """A pipeline node. Subclasses provide ``receive`` and ``send`` (or inherit them from
    :class:`~fogverse.Consumer` / :class:`~fogverse.Producer`) and usually ``process``.
    """

    consumer: ConsumerTransport | None = None
    producer: ProducerTransport | None = None
    commit_interval: float = 0.5
    """Seconds between background commits of finished offsets."""
    drain_timeout: float = 30.0
    """Seconds a stopping node waits for in-flight outputs to be acknowledged, and a
    rebalance for those of the partitions it gives up; what is unacknowledged by then stays
    uncommitted, to be read again."""
    dead_letter_topic: str | None = None
    """Where failed inputs go; ``None`` means ``<input topic>.dlq``."""
    profile: bool = False
    """Count messages and bytes and time each stage of a sample of them (see
    :mod:`fogverse.metrics`); FOGVERSE_PROFILE=1 switches it on too."""
    profile_sample: int = DEFAULT_SAMPLE
    """While profiling, time one message in N, at random; 1 times every message
    (FOGVERSE_PROFILE_SAMPLE)."""
    profile_csv: str | None = None
    """Append one CSV row per timed message here while profiling (FOGVERSE_PROFILE_CSV)."""
    profiler: Profiler | None = None
    _yield_every: float = 0.005
    """Seconds of uninterrupted work (buffered inputs, sync steps) after which a loop lets
    the node's other tasks run: the committer, delivery reports, rebalance callbacks."""
    heartbeats: Any = None
    """Read by the auto-scaling add-on's plugin (``fogverse.autoscale``): report throughput
    to its master through an ``Observer``, an ``ObserverConfig`` or ``True`` (configure from
    the environment). ``None`` attaches one only when FOGVERSE_OBSERVER_TOPIC is set (the
    deploy providers set it for the instances they start). Nodes that create
    ``self.observer`` themselves (the seed's way) are left alone."""
    _closing = False  # set after the last commit: failed outputs are no longer dead-lettered
    _plugins: tuple[Plugin, ...] = ()
    _senders: tuple[Plugin, ...] = ()

    message: Any = None

    # ---- the steps users override -------------------------------------------------------

    async def receive(self) -> Any:
        raise NotImplementedError("a node must implement receive() or inherit it from Consumer")

    def decode(self, data: Any) -> Any:
        return data

    def process(self, data: Any) -> Any:
        return data

    def encode(self, data: Any) -> Any:
        return data

    async def send(
        self,
        data: Any,
        topic: str | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        callback: Callable[..., Any] | None = None,
    ) -> Any:
        raise NotImplementedError("a node must implement send() or inherit it from Producer")

    def hold(self) -> Hold:
        """Keep the input being processed uncommitted after ``process`` returns, until the
        returned :class:`~fogverse.node.delivery.Hold` is released.

        For joins and windows: a frame that waits for its detections calls ``hold()`` and
        returns ``None``; when the detections arrive, the node sends (or draws) the pair and
        releases the frame's hold. ``hold.fail(exc)`` dead-letters the held input instead
        (a partner that never came). A crash before either reads the input again; a node that
        stops leaves its open holds uncommitted and does not wait for them.
        """
        delivery = current_delivery.get()
        if delivery is None or delivery.sealed or not hasattr(self, "_holds"):
            raise RuntimeError(
                "hold() keeps the input being processed open: call it from process() "
                "(or a hook) while the node runs that input"
            )
        return delivery.hold(self._holds)

    def _abandon_holds(self, tps: set[tuple[str, int]] | None = None) -> None:
        """Open holds (of ``tps`` only, if given) stay uncommitted and are no longer waited for:
        their partners cannot arrive once the node stops reading them."""
        for hold in list(self._holds):
            if tps is None or hold.record.tp in tps:
                hold.abandon()

    # ---- plugins ------------------------------------------------------------------------

    @property
    def plugins(self) -> list[Plugin]:
        """The :class:`~fogverse.plugins.Plugin` objects attached to this node; add to it
        before ``run()``. Plugins that packages register are found when the node starts."""
        # Per instance, made on first use: subclasses need not call an __init__ of ours.
        plugins: list[Plugin] = vars(self).setdefault("_attached", [])
        return plugins

    def _attached_plugins(self) -> list[Plugin]:
        return list(self.plugins)

    async def _stop_plugins(self) -> None:
        for plugin in self._plugins:
            try:
                await plugin.on_stop(self)
            except Exception:
                logger.exception("plugin %r failed while the node closed", plugin)

    # ---- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the node to stop: it finishes in-flight work, commits and closes."""
        self._stopping = True
        ev = getattr(self, "_stop_event", None)
        if ev is not None:
            ev.set()

    @property
    def stopping(self) -> bool:
        return getattr(self, "_stopping", False)

    async def run(self) -> None:
        await self._run(self._serial_loop)

    async def _run(self, body: Callable[[], Awaitable[None]]) -> None:
        self._stopping = getattr(self, "_stopping", False)
        self._stop_event = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        self._fatal: BaseException | None = None
        self._closing = False
        self._tracker = OffsetTracker()
        self._holds: set[Hold] = set()
        self._plugins = tuple(discover(self, self._attached_plugins()))
        self._senders = tuple(p for p in self._plugins if overrides(p, "on_send"))
        self._hooks = {n: getattr(self, n) for n in _HOOKS if callable(getattr(self, n, None))}
        # decode/encode may be coroutines; process may also be a sync function that returns an
        # awaitable (rare), which the loop still checks for.
        self._async_decode = inspect.iscoroutinefunction(self.decode)
        self._async_encode = inspect.iscoroutinefunction(self.encode)
        self._async_process = inspect.iscoroutinefunction(self.process)
        if self.profile or os.environ.get("FOGVERSE_PROFILE", "") not in ("", "0"):
            self.profiler = Profiler(
                type(self).__name__,
                # The environment wins, as for every setting (docs/concepts.md).
                os.environ.get("FOGVERSE_PROFILE_CSV") or self.profile_csv,
                _profile_sample(self.profile_sample),
            )
        self._enter_process()
        committer: asyncio.Task[None] | None = None
        try:
            await self._hook("_before_start")
            await self._start()
            await self._hook("_after_start")
            if self.consumer is not None:
                committer = asyncio.create_task(self._commit_loop())
            await body()
            await self._drain()
        except BaseException:
            self._abandon_open_inputs()
            raise
        finally:
            if committer is not None:
                committer.cancel()
            try:
                await self._commit()
            except Exception:
                logger.exception("final commit failed; the uncommitted inputs will be re-read")
            self._closing = True
            await self._hook("_before_close")
            await self._close()
            await self._hook("_after_close")
            self._leave_process()
            if self.profiler is not None:
                self.profiler.close()
                logger.info("profile: %s", self.profiler.summary())
        if self._fatal is not None:
            raise self._fatal

    def _abandon_open_inputs(self) -> None:
        """The loop was cut short (cancelled, or it failed): an input whose outputs were not
        all handed to the producer (a parallel node's admitted tasks, say) never will be. No
        commit goes past it, and the drains on the way out do not wait for it."""
        for entry in self._tracker.waiting():
            if isinstance(entry, Delivery) and not entry.sealed:
                entry.abandon()

    async def _start(self) -> None:
        for plugin in self._plugins:
            await plugin.on_start(self)
        await self.start_producer()
        if self.consumer is not None:
            # Wired before start_consumer(): a user override of it (the seed's dynamic
            # partition recipe) still gets rebalances handled.
            self.consumer.on_revoke = self._on_revoke
            self.consumer.on_assign = self._on_assign
        await self.start_consumer()

    async def start_producer(self) -> None:
        """Seed hook: start the producer (override to customise; call super)."""
        if self.producer is not None:
            await self.producer.start()

    async def start_consumer(self) -> None:
        """Seed hook: join the group and start consuming (override to customise, e.g. to
        grow partitions under a lock first; call super or start ``self.consumer`` yourself).
        A plugin may join for the node (see :meth:`~fogverse.plugins.Plugin.start_consumer`)."""
        if self.consumer is None:
            return
        for plugin in self._plugins:
            if await plugin.start_consumer(self):
                return
        await self.consumer.start()

    async def close_consumer(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def close_producer(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def _close(self) -> None:
        try:
            await self.close_consumer()
        finally:
            await self._stop_plugins()
            await self.close_producer()

    def _enter_process(self) -> None:
        """Process-wide settings while any node runs: SIGINT/SIGTERM stop every node (on the
        main thread), and the GC threshold above."""
        global _gc_restore
        _running.add(self)
        threshold = gc.get_threshold()
        if _gc_restore is None and threshold in _GC_DEFAULTS:
            _gc_restore = threshold
            gc.set_threshold(_GC_YOUNG_WHILE_RUNNING, *threshold[1:])
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix loops
                loop.add_signal_handler(sig, _stop_all)

    def _leave_process(self) -> None:
        """The last node to stop puts the process-wide settings back."""
        global _gc_restore
        _running.discard(self)
        if _running:
            return
        if _gc_restore is not None:
            if gc.get_threshold()[0] == _GC_YOUNG_WHILE_RUNNING:  # unless someone changed it since
                gc.set_threshold(*_gc_restore)
            _gc_restore = None
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    async def _hook(self, name: str, *args: Any) -> None:
        fn = self._hooks.get(name)
        if fn is not None:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result

    # ---- the serial loop ----------------------------------------------------------------
    # The hot path: per message it checks cheap flags instead of calling absent hooks or
    # probing results for awaitables, so a pass-through node spends its time in Kafka.

    def _input_batches(self) -> tuple[deque[Record], Callable[[], Awaitable[None]]] | None:
        """Where a node whose input arrives in batches keeps them (a buffer the node may
        prune on a rebalance) and the coroutine function that refills it; ``None``: inputs
        come one at a time from ``receive`` (a Producer's source, a user's own receive)."""
        return None

    def _input_decoder(self) -> Callable[[Record], Any]:
        """The decode step of the batch loops, given the whole record: ``decode`` of its
        value, unless a node knows a shorter way to the same result."""
        decode = self.decode
        return lambda record: decode(record.value)

    def _output_sender(self) -> Callable[[Any, Delivery], bool] | None:
        """A function that queues one output for a delivery without waiting, if it can now
        (room in the producer's buffer), and says whether it did; ``None``: the loop always
        awaits ``send`` (it is the user's own, or the node has no producer)."""
        return None

    async def _serial_loop(self) -> None:
        batches = self._input_batches()
        if batches is None or self._hooks:
            await self._message_loop()
        else:
            await self._batch_loop(*batches)

    async def _batch_loop(
        self, buffer: deque[Record], refill: Callable[[], Awaitable[None]]
    ) -> None:
        """The serial loop over a batch at a time: every input of a fetched batch goes through
        decode, process, encode and send in one plain loop, with no coroutine, future or
        event-loop turn per input unless a step is a coroutine or the producer is full."""
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        yield_every = self._yield_every
        dead_letter, open_input = self._dead_letter, self._opener()
        decode, process, encode = self._input_decoder(), self.process, self.encode
        async_decode, async_process = self._async_decode, self._async_process
        async_encode = self._async_encode
        send_now, profiler = self._output_sender(), self.profiler
        now = Profiler.now
        while not self._stopping:
            if not buffer:
                await refill()
                continue
            start = profiler.pick() if profiler is not None else 0
            record = buffer.popleft()
            self.message = record
            delivery = open_input(record, start)
            stamps = delivery.stamps
            stage = "decode"
            try:
                if type(record) is UnreadableRecord:
                    raise record.error()
                data = decode(record)
                if async_decode:
                    data = await data
                if stamps is not None:
                    stamps.decoded = now()
                stage = "process"
                result = process(data)
                if async_process or type(result) is CoroutineType:
                    result = await result
                if stamps is not None:
                    stamps.processed = now()
                stage = "encode"
                if result is not None:
                    out = encode(result)
                    if async_encode:
                        out = await out
                    if profiler is not None:
                        profiler.count_output(stamps, out)
                    if send_now is None or not send_now(out, delivery):
                        await self.send(out)
                    if stamps is not None:
                        stamps.sent = now()
            except Exception as exc:
                await dead_letter(delivery, stage, exc)
            # Not reached when cut short (cancelled): its output may not have left, and the
            # loop's end (_abandon_open_inputs) leaves it uncommitted.
            delivery.seal()
            # A batch of buffered inputs and sync steps never suspend: let the committer,
            # the delivery reports and the rebalance callbacks run every few milliseconds.
            if loop.time() - last_yield > yield_every:
                await asyncio.sleep(0)
                last_yield = loop.time()

    def _opener(self) -> Callable[[Record, int], Delivery]:
        """What opens an input's delivery: tracked for commits, counted by the profiler (and
        timed from ``start``, when it is a picked one), and the current input for encode and
        send. Made once per loop: the node's parts it needs are looked up here, not per input."""
        tracker, dead_letter, die, profiler = (
            self._tracker,
            self._dead_letter,
            self._die,
            self.profiler,
        )
        set_current = current_delivery.set

        def open_input(record: Record, start: int) -> Delivery:
            delivery = Delivery(record, tracker, dead_letter, die)
            if profiler is not None:
                delivery.profiler = profiler
                size = profiler.count_input(record.value)
                if start:
                    delivery.stamps = stamps = profiler.timed(start)
                    stamps.received = profiler.now()
                    stamps.size_in = size
            set_current(delivery)
            return delivery

        return open_input

    async def _message_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        yield_every = self._yield_every
        while not self._stopping:
            delivery = await self._next()
            if delivery is None:
                continue
            await self._handle(delivery)
            delivery.seal()  # not reached when cut short: as in the batch loop
            # Buffered records and a sync process() never suspend: let the group heartbeat,
            # the committer and the ack callbacks run at least every few milliseconds.
            if loop.time() - last_yield > yield_every:
                await asyncio.sleep(0)
                last_yield = loop.time()

    async def _next(self) -> Delivery | None:
        """Receive one input and open its delivery, or ``None`` (nothing yet / stopping)."""
        profiler = self.profiler
        start = profiler.pick() if profiler is not None else 0
        hooks = self._hooks
        if hooks:
            await self._hook("_before_receive")
        try:
            message = await self.receive()
        except StopAsyncIteration:
            self.stop()
            return None
        if message is None:
            return None
        self.message = message
        record = (
            message
            if type(message) is Record or isinstance(message, Record)
            else Record(value=message)
        )
        delivery = self._opener()(record, start)
        if hooks:
            await self._hook("_after_receive", message)
        return delivery

    async def _handle(self, delivery: Delivery) -> None:
        stage = "decode"
        try:
            data = await self._decode_step(delivery)
            stage = "process"
            hooks = self._hooks
            if hooks:
                await self._hook("_before_process", data)
            result = self.process(data)
            if self._async_process or inspect.iscoroutine(result):
                result = await result
            if delivery.stamps is not None:
                delivery.stamps.processed = Profiler.now()
            if hooks:
                await self._hook("_after_process", result)
            stage = "encode"
            await self._encode_and_send(result, delivery)
        except Exception as exc:
            await self._dead_letter(delivery, stage, exc)

    async def _decode_step(self, delivery: Delivery) -> Any:
        record = delivery.record
        if type(record) is UnreadableRecord:
            raise record.error()
        value = record.value
        hooks = self._hooks
        if hooks:
            await self._hook("_before_decode", value)
        data = self.decode(value)
        if self._async_decode:
            data = await data
        if delivery.stamps is not None:
            delivery.stamps.decoded = Profiler.now()
        if hooks:
            await self._hook("_after_decode", data)
        return data

    async def _encode_and_send(self, result: Any, delivery: Delivery) -> None:
        """Encode and send one result; ``None`` means the input yields no output."""
        if result is None:
            return
        hooks = self._hooks
        if hooks:
            await self._hook("_before_encode", result)
        out = self.encode(result)
        if self._async_encode:
            out = await out
        profiler = delivery.profiler
        stamps = delivery.stamps
        if profiler is not None:
            profiler.count_output(stamps, out)
        if hooks:
            await self._hook("_after_encode", out)
            await self._hook("_before_send", out)
        await self.send(out)
        if stamps is not None:
            stamps.sent = Profiler.now()
        if hooks:
            await self._hook("_after_send", out)

    # ---- failures -----------------------------------------------------------------------

    def _dead_letter_topic_for(self, record: Record) -> str | None:
        if self.dead_letter_topic:
            return self.dead_letter_topic
        base = record.topic or getattr(self, "producer_topic", None)
        return f"{base}.dlq" if base else None

    async def _dead_letter(
        self, delivery: Delivery, stage: str, exc: BaseException, tb: str | None = None
    ) -> None:
        record = delivery.record
        where = _where(record)
        if self._closing:
            # After the last commit, an output fails because the closing producer gave it
            # up (unacknowledged at close_timeout), not because of what it holds: no dead
            # letter, and its input stays uncommitted, to be read again after a restart.
            logger.warning(
                "%s failed for %s while closing: %s; left uncommitted", stage, where, exc
            )
            delivery.abandon()
            return
        topic = self._dead_letter_topic_for(record)
        producer = self._dead_letter_producer()
        if topic is None or producer is None:
            # Nowhere to put it: the node stops, and neither this input nor any after it in
            # its partition is committed (raising from here would leave the input sealed,
            # hence committed, and a parallel node's emitter dead with its window full).
            delivery.abandon()
            fatal = RuntimeError(f"{stage} failed for {where} and there is no dead-letter topic")
            fatal.__cause__ = exc
            self._die(fatal)
            return
        logger.warning(
            "%s failed for %s: %s: %s; sent to %s", stage, where, type(exc).__name__, exc, topic
        )
        value = record.value
        if value is None:
            value = b""  # a record with neither key nor value is legal, but not sendable
        elif not isinstance(value, bytes | bytearray | memoryview):
            value = repr(value)[:4096].encode()
        headers = error_headers(record, stage, exc, tb)
        try:
            ack = await producer.send(topic, value, record.key, headers)
        except Exception as refused:
            # A transport may refuse a record in send() itself; librdkafka and the broker
            # refuse through the ack. One failed future serves both.
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(refused)

        async def if_too_large(refused: BaseException) -> None:
            if not refused_for_size(refused):
                raise refused  # fatal: nothing is committed past this input
            await self._dead_letter_without_payload(delivery, producer, topic, headers, refused)

        delivery.track(ack, dead_letter=True, fallback=if_too_large)

    async def _dead_letter_without_payload(
        self,
        delivery: Delivery,
        producer: ProducerTransport,
        topic: str,
        headers: Headers,
        refused: BaseException,
    ) -> None:
        """Send a refused dead letter again with its error but not its payload (its
        topic/partition/offset headers say where to find it). Stopping instead would stop
        again on the same input at every restart. A failure of this one is fatal."""
        record = delivery.record
        logger.warning(
            "dead letter for %s refused (%s); sending it without the payload",
            _where(record),
            refused,
        )
        dropped = b"dropped: " + str(refused).encode("utf-8", "replace")[:512]
        headers = [*headers, (ERROR_HEADER_PREFIX + "payload", dropped)]
        ack = await producer.send(topic, b"", record.key, headers)
        delivery.track(ack, dead_letter=True)

    def _dead_letter_producer(self) -> ProducerTransport | None:
        return self.producer

    def _die(self, exc: BaseException) -> None:
        if self._fatal is None:
            logger.error("stopping: an input could be neither delivered nor dead-lettered: %s", exc)
            self._fatal = FatalDeliveryError(str(exc))
            self._fatal.__cause__ = exc
        self.stop()

    # ---- commits and rebalances ---------------------------------------------------------

    async def _commit(self) -> None:
        if self.consumer is None or not hasattr(self, "_tracker"):
            return
        offsets = self._tracker.committable()
        if offsets:
            await self.consumer.commit(offsets)
            self._tracker.mark_committed(offsets)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            try:
                await self._commit()
            except Exception as exc:  # a rebalance in progress, a broker restart...
                logger.warning("commit failed (will retry): %s", exc)

    async def _drain(self) -> None:
        self._abandon_holds()
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        if not await self._flush_until(deadline) or not await self._tracker.wait_idle(
            _left(deadline)
        ):
            logger.warning(
                "%d inputs still unacknowledged after %.0f s; they stay uncommitted",
                self._tracker.in_flight,
                self.drain_timeout,
            )

    async def _on_revoke(self, tps: set[tuple[str, int]]) -> None:
        """Finish (or give up on) work for partitions being taken away, then commit it."""
        self._drop_buffered(tps)
        self._abandon_holds(tps)
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        try:
            if not await self._flush_until(deadline) or not await self._tracker.wait_partitions(
                tps, _left(deadline)
            ):
                logger.warning(
                    "revoked partitions still had unacknowledged inputs after %.0f s; "
                    "the new owner will process them again",
                    self.drain_timeout,
                )
            try:
                await self._commit()
            except Exception as exc:
                logger.warning("commit on revoke failed: %s", exc)
        finally:
            # Also when the transport stopped waiting for this (its rebalance_timeout cancels
            # it): the partitions are gone either way, and the committer must not go on
            # committing offsets of partitions this member no longer owns.
            self._tracker.forget(tps)

    async def _on_assign(self, tps: set[tuple[str, int]]) -> None:
        return None

    async def _flush_until(self, deadline: float) -> bool:
        """Send what lingers in the producer and wait for its acknowledgements, until
        ``deadline`` (loop time) at most: a producer that cannot reach its broker keeps its
        records until ``message.timeout.ms`` (5 minutes by default), and neither a stop nor
        a rebalance may wait that long. False if the deadline came first."""
        if self.producer is None:
            return True
        try:
            await asyncio.wait_for(self.producer.flush(), _left(deadline))
        except TimeoutError:
            return False
        return True

    def _drop_buffered(self, tps: set[tuple[str, int]]) -> None:
        return None


def _left(deadline: float) -> float:
    return max(0.0, deadline - asyncio.get_running_loop().time())


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _profile_sample(default: int) -> int:
    raw = os.environ.get("FOGVERSE_PROFILE_SAMPLE", "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"FOGVERSE_PROFILE_SAMPLE must be an integer >= 1 (one in N), not {raw!r}"
        ) from None
