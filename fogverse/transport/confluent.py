"""Kafka transports on confluent-kafka (librdkafka), the nodes' client.

``config`` takes librdkafka properties (dotted keys such as ``"fetch.min.bytes"``); aiokafka's
keyword arguments (``fetch_min_bytes``, the seed's spelling) are translated to them.

Threads. confluent-kafka serializes the calls made on one ``Consumer``: a ``commit()`` from
one thread waits until another thread's ``consume()`` returns (measured on 2.16). So one
long-lived thread owns the consumer and runs every call on it, taken from a job queue the
event loop feeds. Rebalance callbacks run inside ``consume()``/``close()`` on that thread;
the callback hands the node's ``on_revoke``/``on_assign`` coroutine to the event loop and,
while it waits for it, keeps serving the job queue, so the coroutine's own ``commit()`` runs
(re-entrantly, on the owning thread) before the partitions are given up. The event loop never
waits synchronously for that thread, so this cannot deadlock.

The producer lives on the event-loop thread: ``produce()`` does not block, and delivery
reports are served by ``poll(0)`` on the loop (a small poller task while records are in
flight), so each report resolves its asyncio future directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from fogverse.record import Headers, Record, UnreadableRecord
from fogverse.record import TopicPartition as TP
from fogverse.transport.base import AckCallback, RebalanceCallback

__all__ = [
    "ConfluentConsumerTransport",
    "ConfluentProducerTransport",
    "KafkaDeliveryError",
]

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(__name__ + ".librdkafka")

# The consumer thread waits on librdkafka in slices this long, so a job queued by the loop
# (a commit, close) waits at most this long behind an idle consume().
_CONSUME_SLICE = 0.05
_WAKE = object()  # queued when a rebalance coroutine finishes, to wake the waiting thread
# How long getmany() waits for the consumer thread beyond its own timeout.
_BUSY_GRACE = 1.0


# librdkafka's consumer defaults, set deliberately (the figures are in benchmarks/README.md):
# - fetch.queue.backoff.ms: librdkafka's 1000 pauses fetching for a second whenever its
#   local queue holds queued.min.messages, so a node that drains the queue quickly waits on
#   an empty one: it capped a 1 KiB pass-through at about 80 k msg/s (issue 26).
CONSUMER_DEFAULTS: dict[str, Any] = {"fetch.queue.backoff.ms": 100}

# librdkafka's producer defaults, set deliberately:
# - acks=all and idempotence: at-least-once without duplicates from the client's own retries;
#   it costs CPU: librdkafka's broker thread spins while five records of a partition are in
#   flight (4.6 against 0.7 us per 1 KiB record, 810 against 87 us per 720p frame;
#   benchmarks/README.md, "What the idempotent producer costs the client"), which a
#   node that tolerates duplicates can trade with enable.idempotence=False and one in flight;
#   for records over a fifth of a batch (video frames) one request in flight alone stops it
#   (the examples' LOW_LATENCY preset), but five stay the default: one would cap a producer
#   with several partitions across a slow link at one batch per round trip;
# - linger.ms=5: batches fill at high rates, and a lone frame waits at most 5 ms;
# - queue.buffering.max.kbytes: librdkafka queues up to 1 GiB of unsent records by default, so
#   a node whose sink is slow would hold that much of its input's backlog in memory before
#   send() pushed back. 32 MiB is 130 720p frames or 32 000 1 KiB records: more than a
#   linger's worth at the rates measured here (benchmarks/README.md), and the slow-sink
#   scenario's memory stays flat with it. It is raised to two messages of
#   message.max.bytes when that is larger, so one record always fits.
# - partitioner=murmur2_random: a keyed record goes to the partition Kafka's Java client (and
#   aiokafka, Kafka Streams) would pick, not librdkafka's CRC32 one, so that a camera's frames
#   share a partition with what other clients write under its key.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "queue.buffering.max.kbytes": 32 * 1024,
    "partitioner": "murmur2_random",
}


class KafkaDeliveryError(KafkaException):
    """A record was not acknowledged; ``error`` is librdkafka's :class:`KafkaError`."""

    def __init__(self, error: KafkaError, topic: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.topic = topic

    def __str__(self) -> str:
        where = f" to {self.topic}" if self.topic else ""
        return f"delivery{where} failed: {self.error.name()}: {self.error.str()}"


def _log_error(err: KafkaError) -> None:
    # Client-level errors (brokers down, auth): librdkafka retries on its own.
    log = logger.error if err.fatal() else logger.warning
    log("kafka client error: %s", err)


def _common_config(bootstrap_servers: str, client_id: str | None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "error_cb": _log_error,
        "logger": _librdkafka_logger,
    }
    if client_id:
        conf["client.id"] = client_id
    return conf


# aiokafka keyword arguments whose librdkafka property is not the same words joined by dots.
_RENAMED = {
    # How often a client looks for new partitions (dynamic partitioning caps it): aiokafka
    # refreshes all its metadata at this age, librdkafka its topics' at this interval.
    "metadata_max_age_ms": "topic.metadata.refresh.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "max_batch_size": "batch.size",
    "max_request_size": "message.max.bytes",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}
# aiokafka keywords that configure nothing in librdkafka (a Python SSL context: librdkafka
# verifies against the system's store or ssl.ca.location).
_IGNORED = frozenset({"ssl_context", "api_version"})


def librdkafka_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` with aiokafka keyword arguments (``session_timeout_ms``, the seed's
    spelling) given as the librdkafka properties they set (``session.timeout.ms``), so a
    node's settings work on either client; librdkafka's own names pass through."""
    out: dict[str, Any] = {}
    for key, value in conf.items():
        if "_" in key and "." not in key and not key.endswith(("_cb", "logger")):
            if key in _IGNORED:
                continue
            key = _RENAMED.get(key) or key.replace("_", ".")
        out[key] = value
    return out


# ---- consumer --------------------------------------------------------------------------


class _Job:
    """A call for the consumer thread; ``settle`` resolves ``future`` on the event loop."""

    __slots__ = ("args", "fn", "future", "reentrant", "settle")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        reentrant: bool,
        settle: Callable[[asyncio.Future[Any], Any, BaseException | None], None],
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.reentrant = reentrant
        self.settle = settle


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class ConfluentConsumerTransport:
    """A confluent-kafka consumer that never commits on its own.

    ``auto.offset.reset`` defaults to ``earliest`` (nothing is skipped silently) and
    ``session.timeout.ms`` to aiokafka's 10 s; commits are synchronous, so
    ``await commit(...)`` returns once the group coordinator stored them.
    With ``partition.assignment.strategy=cooperative-sticky`` or ``group.protocol=consumer``
    the callbacks receive only the partitions that change hands.
    """

    rebalance_timeout: float = 120.0
    """Seconds a rebalance callback waits for ``on_revoke``/``on_assign`` on the event loop
    before giving the partitions up anyway (keep it below ``max.poll.interval.ms``)."""
    commit_timeout: float = 30.0
    """Seconds ``commit()`` waits for the group coordinator before failing with TimeoutError.
    librdkafka's synchronous commit has no timeout: a coordinator that accepts connections
    but never answers (frozen, or behind a link that drops packets) holds it for good."""
    close_timeout: float = 30.0
    """Seconds ``stop()`` waits to leave the group; a consumer thread still held by such a
    commit then closes the client in the background once librdkafka lets go of it."""

    def __init__(
        self,
        topics: Iterable[str],
        bootstrap_servers: str,
        group_id: str | None,
        *,
        client_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("the confluent consumer transport needs a group_id")
        self.topics = list(topics)
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        conf = _common_config(bootstrap_servers, client_id)
        conf.update({"group.id": group_id, "auto.offset.reset": "earliest", **CONSUMER_DEFAULTS})
        config = librdkafka_config(config or {})
        if config.get("group.protocol") != "consumer":  # KIP-848: the broker decides
            # aiokafka's default rather than librdkafka's 45 s: a crashed member's partitions
            # move to the others after 10 s, whichever client the node uses.
            conf["session.timeout.ms"] = 10_000
        conf.update(config)
        # At-least-once depends on this: offsets move only when the node commits them.
        conf["enable.auto.commit"] = False
        self.config = conf
        strategy = str(conf.get("partition.assignment.strategy", ""))
        self._incremental = "cooperative" in strategy or conf.get("group.protocol") == "consumer"
        self.consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Owned by the consumer thread:
        self._deferred: deque[_Job] = deque()
        self._assigning: dict[TP, TopicPartition] | None = None
        self._rebalances = 0
        self._closed = False
        # Replaced (never mutated) by the consumer thread, read by the loop.
        self._assigned: frozenset[TP] = frozenset()
        # Records of a getmany() that was cancelled while its consume() ran: served next.
        self._leftover: list[Record] = []

    # -- lifecycle (event loop) --------------------------------------------------------------

    async def start(self) -> None:
        # librdkafka is not fork-safe: the client is made here, in the process that uses it.
        self._loop = asyncio.get_running_loop()
        self.consumer = Consumer(self.config)
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, name=f"fogverse-consumer-{self.config['group.id']}", daemon=True
        )
        self._thread.start()
        await self._call(self._subscribe)

    async def stop(self) -> None:
        """Leave the group (``on_revoke`` runs first) and end the consumer thread."""
        thread = self._thread
        if thread is None:
            return
        closed = not thread.is_alive()
        try:
            if not closed:
                # Not cancelled on timeout: the close still runs once the thread is free.
                close = self._submit(self._close, self.consumer)
                await asyncio.wait({close}, timeout=self.close_timeout)
                closed = close.done()
                if closed:
                    close.result()
        finally:
            self._jobs.put(None)
            if closed:
                # The thread's last act was resolving the close job: this join is immediate.
                thread.join(timeout=5)
            else:
                logger.warning(
                    "the consumer is still closing (its group coordinator does not answer?); "
                    "it closes in the background"
                )
                # The node that owned it is gone: the late close revokes to nobody.
                self.on_assign = self.on_revoke = None
            self._thread = None
            self.consumer = None

    # -- the protocol (event loop) -----------------------------------------------------------

    async def getmany(self, timeout: float, max_records: int) -> list[Record]:
        if self._leftover:
            out, self._leftover = self._leftover[:max_records], self._leftover[max_records:]
            return out
        fetch = self._submit(self._consume, max_records, timeout, settle=self._settle_records)
        try:
            # The thread may be held by a commit the coordinator does not answer: a caller
            # that waited for it could not even stop. A fetch given up before it started is
            # skipped; one under way hands its records to the next call (_settle_records).
            return await asyncio.wait_for(fetch, timeout + _BUSY_GRACE)
        except TimeoutError:
            return []

    async def commit(self, offsets: dict[TP, int]) -> None:
        if not offsets:
            return
        try:
            await asyncio.wait_for(
                self._submit(self._commit, offsets, reentrant=True), self.commit_timeout
            )
        except TimeoutError:
            raise TimeoutError(
                f"the group coordinator did not answer a commit in {self.commit_timeout:g} s"
            ) from None

    async def seek_to_end(self, partitions: Iterable[TP]) -> None:
        tps = list(partitions)
        if tps:
            await self._call(self._seek_to_end, tps, reentrant=True)

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    async def serve_group(self, timeout: float) -> None:
        """Take part in the group for up to ``timeout`` s, or until a rebalance ran, without
        handing out a record: what it reads is put back, so the next ``getmany()`` starts
        there. librdkafka serves a member's joins and rebalances only inside a read, so a
        caller that waits for its partitions before it reads (ConsumerStart) calls this while
        it waits; aiokafka does the same in a task of its own."""
        await self._call(self._serve_group, timeout)

    # -- plumbing between the loop and the consumer thread -----------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        reentrant: bool = False,
        settle: Callable[[asyncio.Future[Any], Any, BaseException | None], None] = _settle,
    ) -> asyncio.Future[Any]:
        if self._thread is None or not self._thread.is_alive() or self._loop is None:
            raise RuntimeError("the consumer is not running (call start() first)")
        fut = self._loop.create_future()
        self._jobs.put(_Job(fn, args, fut, reentrant, settle))
        return fut

    async def _call(self, fn: Callable[..., Any], *args: Any, reentrant: bool = False) -> Any:
        return await self._submit(fn, *args, reentrant=reentrant)

    def _settle_records(
        self, fut: asyncio.Future[Any], records: Any, exc: BaseException | None
    ) -> None:
        if fut.cancelled():
            # These records left librdkafka already: dropping them would let a later commit
            # skip past them, so the next getmany() returns them.
            if records:
                self._leftover.extend(records)
            return
        _settle(fut, records, exc)

    def _resolve(self, job: _Job, result: Any, exc: BaseException | None) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(job.settle, job.future, result, exc)

    def _run(self, job: _Job) -> None:
        if job.future.cancelled():
            return  # its caller gave up before it started (getmany, commit past their timeout)
        try:
            result = job.fn(*job.args)
        except BaseException as exc:
            self._resolve(job, None, exc)
        else:
            self._resolve(job, result, None)

    # -- the consumer thread -----------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closed:
            job = self._deferred.popleft() if self._deferred else self._jobs.get()
            if job is None:
                break
            if job is _WAKE:
                continue
            self._run(job)
        # Anything still queued will never run: fail it rather than leave its caller hanging.
        stopped = RuntimeError("the consumer was closed")
        while True:
            try:
                job = self._deferred.popleft() if self._deferred else self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job):
                self._resolve(job, None, stopped)

    def _subscribe(self) -> None:
        assert self.consumer is not None
        self.consumer.subscribe(
            self.topics,
            on_assign=self._assigned_cb,
            on_revoke=self._revoked_cb,
            on_lost=self._lost_cb,
        )

    def _close(self, consumer: Consumer) -> None:
        # Given, not read from self: a close that outlived stop() runs after it let go.
        try:
            consumer.close()  # leaves the group; the revoke callback runs in here
        finally:
            self._assigned = frozenset()
            self._closed = True

    def _consume(self, max_records: int, timeout: float) -> list[Record]:
        consumer = self.consumer
        assert consumer is not None
        rebalances = self._rebalances
        msgs = consumer.consume(max_records, 0)
        if not msgs:
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._jobs.empty() or self._deferred:
                    break
                # One message ends the wait ("at most timeout for the first"), then top up.
                msgs = consumer.consume(1, min(remaining, _CONSUME_SLICE))
                if msgs:
                    if max_records > 1:
                        msgs += consumer.consume(max_records - 1, 0)
                    break
        out = _records(msgs)
        if self._rebalances != rebalances and out:
            # A rebalance ran inside this call: drop what belongs to partitions given up.
            owned = self._assigned
            out = [r for r in out if (r.topic, r.partition) in owned]
        return out

    def _serve_group(self, timeout: float) -> None:
        consumer = self.consumer
        assert consumer is not None
        rebalances = self._rebalances
        deadline = time.monotonic() + timeout
        while self._rebalances == rebalances:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._jobs.empty() or self._deferred:
                return
            for msg in consumer.consume(1, min(remaining, _CONSUME_SLICE)):
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if msg.error() is not None or topic is None or partition is None or offset is None:
                    continue
                tp = (topic, partition)
                try:
                    consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException:
                    # Not put back while we still own it: the node would read past it and
                    # a later commit would skip it.
                    if tp in self._assigned:
                        raise
                    # Given up inside this consume(): its next owner reads it from Kafka.

    def _commit(self, offsets: dict[TP, int]) -> None:
        assert self.consumer is not None
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        result = self.consumer.commit(offsets=parts, asynchronous=False)
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            tp = failed[0]
            raise KafkaException(tp.error)

    def _seek_to_end(self, tps: list[TP]) -> None:
        assert self.consumer is not None
        for tp in tps:
            pending = self._assigning.get(tp) if self._assigning is not None else None
            if pending is not None:
                # Arriving in the assign callback now: start it at the end instead of seeking
                # a partition that is not fetching yet.
                pending.offset = OFFSET_END
            else:
                self.consumer.seek(TopicPartition(tp[0], tp[1], OFFSET_END))

    # Rebalance callbacks: on the consumer thread, inside consume() or close().

    def _assigned_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        tps = {(p.topic, p.partition): p for p in partitions}
        self._assigned = self._assigned | tps.keys()
        self._assigning = tps
        try:
            if tps and self.on_assign is not None:
                self._await_on_loop(self.on_assign(set(tps)), "on_assign")
        finally:
            self._assigning = None
            try:
                if self._incremental:
                    consumer.incremental_assign(partitions)
                else:
                    consumer.assign(partitions)
            except KafkaException:
                logger.exception("could not take the assigned partitions %s", sorted(tps))

    def _revoked_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(consumer, partitions, "on_revoke")

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost partitions may already belong to another member; the node's commits for them
        # will fail, and the new owner re-reads whatever was not committed.
        logger.warning("partitions lost (session timed out?): %s", _names(partitions))
        self._give_up(consumer, partitions, "on_revoke (lost)")

    def _give_up(self, consumer: Consumer, partitions: list[TopicPartition], what: str) -> None:
        self._rebalances += 1
        tps = {(p.topic, p.partition) for p in partitions}
        try:
            if tps:
                self._await_on_loop(self._revoked(tps), what)
        finally:
            self._assigned = self._assigned - tps
            try:
                if self._incremental:
                    consumer.incremental_unassign(partitions)
                else:
                    consumer.unassign()
            except KafkaException:
                logger.exception("could not release the revoked partitions %s", sorted(tps))

    async def _revoked(self, tps: set[TP]) -> None:
        if self._leftover:
            self._leftover = [r for r in self._leftover if (r.topic, r.partition) not in tps]
        if self.on_revoke is not None:
            await self.on_revoke(tps)

    def _await_on_loop(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` on the event loop and wait for it, serving the loop's consumer calls
        (commits, seeks) meanwhile; other calls wait until the rebalance is over."""
        assert self._loop is not None
        try:
            cf = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            logger.warning("%s skipped: the event loop is gone", what)
            return
        cf.add_done_callback(lambda _: self._jobs.put(_WAKE))
        deadline = time.monotonic() + self.rebalance_timeout
        while not cf.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "%s still running after %.0f s; giving the partitions up",
                    what,
                    self.rebalance_timeout,
                )
                cf.cancel()
                return
            try:
                job = self._jobs.get(timeout=remaining)
            except queue.Empty:
                continue
            if job is _WAKE:
                continue
            if job is None or not job.reentrant:
                self._deferred.append(job)
                continue
            self._run(job)
        exc = cf.exception() if not cf.cancelled() else None
        if exc is not None:
            logger.error("%s failed: %s", what, exc, exc_info=exc)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]


def _records(msgs: list[Message]) -> list[Record]:
    out: list[Record] = []
    append = out.append
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                logger.warning("consumer error: %s", err)
            continue
        ts_type, ts = m.timestamp()
        try:
            record = Record(
                m.value(),
                m.key(),
                # A list of (name, value) pairs for a consumed message, never a dict.
                m.headers() or [],  # type: ignore[arg-type]
                m.topic(),
                m.partition(),
                m.offset(),
                ts if ts_type != TIMESTAMP_NOT_AVAILABLE else None,
            )
        except (UnicodeDecodeError, SystemError) as exc:
            # A header key that is not UTF-8: the value and key are fine, the headers cannot be
            # given as (str, bytes) pairs, so the record is dead-lettered with its payload.
            # headers() may leave its error pending for the next call (Record) to report.
            record = _unreadable(m, exc)
        append(record)
    return out


def _unreadable(m: Message, exc: BaseException) -> UnreadableRecord:
    # confluent-kafka wraps the UnicodeDecodeError of a non-UTF-8 key in a SystemError.
    cause = exc.__cause__ or exc.__context__ or exc
    reason = f"headers cannot be read: {type(cause).__name__}: {cause}"
    logger.warning("%s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), reason)
    return UnreadableRecord(
        m.value(), m.key(), [], m.topic(), m.partition(), m.offset(), reason=reason
    )


# ---- producer --------------------------------------------------------------------------


_TOO_LARGE = KafkaError.MSG_SIZE_TOO_LARGE


def _on_delivery(fut: asyncio.Future[Any], err: KafkaError | None, msg: Message) -> None:
    # Runs inside producer.poll() on the event-loop thread.
    if fut.done():  # cancelled by its awaiter
        return
    if err is None:
        fut.set_result(msg)
    else:
        fut.set_exception(KafkaDeliveryError(err, msg.topic()))


def _reporter(on_ack: AckCallback) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, msg: Message) -> None:
        on_ack(None if err is None else KafkaDeliveryError(err, msg.topic()))

    return report


def _plain_bytes(value: Any, key: Any, refused: TypeError) -> tuple[Any, Any]:
    """``produce()`` refused ``value`` or ``key``: the bytes it takes, if they are buffers
    (bytearray, memoryview) it does not; else the TypeError stands."""
    if isinstance(value, bytearray | memoryview):
        return bytes(value), key
    if isinstance(key, bytearray | memoryview):
        return value, bytes(key)
    raise refused


class ConfluentProducerTransport:
    """A confluent-kafka producer; ``acks=all`` and idempotence unless the user says otherwise.

    ``send`` waits only while librdkafka's local queue is full (backpressure); the future it
    returns resolves to the delivered :class:`confluent_kafka.Message` or fails with
    :class:`KafkaDeliveryError`.
    """

    poll_interval: float = 0.001
    """Seconds between delivery-report polls while records are in flight."""
    close_timeout: float = 10.0
    """Seconds ``stop()`` waits for in-flight records before failing them."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        conf = _common_config(bootstrap_servers, client_id)
        conf.update(PRODUCER_DEFAULTS)
        user = librdkafka_config(config or {})
        if "queue.buffering.max.kbytes" not in user:
            largest = int(user.get("message.max.bytes", 1_000_000))
            conf["queue.buffering.max.kbytes"] = max(
                PRODUCER_DEFAULTS["queue.buffering.max.kbytes"], 2 * largest // 1024
            )
        conf.update(user)
        self.config = conf
        self.producer: Producer | None = None
        # Sends records one per request: those of a batch the broker refused as too large.
        self._solo: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    async def start(self) -> None:
        # librdkafka is not fork-safe: the client is made here, in the process that uses it.
        self._loop = asyncio.get_running_loop()
        self.producer = Producer(self.config)
        self._poller = self._loop.create_task(self._poll_loop(), name="fogverse-producer-poll")

    async def stop(self) -> None:
        producer = self.producer
        if producer is None:
            return
        try:
            if not await self._flush(self.close_timeout):
                logger.warning(
                    "%d records still unacknowledged after %.0f s; failing them",
                    self._queued(),
                    self.close_timeout,
                )
        finally:
            if self._poller is not None:
                self._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._poller
                self._poller = None
                self._wakeup = None
            self._poll()
            # close() flushes, and a record it cannot deliver holds it for message.timeout.ms
            # (five minutes by default): fail whatever is still queued (the flush timed out,
            # or a delivery report sent more) first. Its report, served here, fails its
            # future with _PURGE_QUEUE; a report that sends again gets one more round.
            for _ in range(3):
                if not self._queued():
                    break
                for client in (producer, self._solo):
                    if client is not None:
                        client.purge()
                self._poll()
            for client in (producer, self._solo):
                close = getattr(client, "close", None)  # older confluent-kafka releases lack it
                if close is not None:
                    close()
            # Dropping the last reference destroys a client and ends librdkafka's threads.
            self.producer = self._solo = None

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        on_ack: AckCallback,
    ) -> bool:
        producer = self.producer
        if producer is None:
            raise RuntimeError("the producer is not running (call start() first)")

        def report(err: KafkaError | None, msg: Message) -> None:
            # Inside producer.poll() on the event-loop thread.
            if err is None:
                on_ack(None)
            elif err.code() != _TOO_LARGE or not self._resend_alone(msg, _reporter(on_ack)):
                on_ack(KafkaDeliveryError(err, msg.topic()))

        try:
            refused = self._produce(topic, value, key, report, headers)
        except BufferError:
            return False
        if refused is not None:
            on_ack(KafkaDeliveryError(refused.args[0], topic))
        return True

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
        headers: Headers | None,
    ) -> KafkaException | None:
        """One ``produce()`` (``BufferError``: librdkafka's queue is full), then the poller is
        woken. A local refusal (too large, unknown topic...) is returned, to fail like a
        broker's."""
        producer = self.producer
        assert producer is not None
        while True:
            try:
                # Positional: topic, value, key, partition (-1: partitioner), on_delivery,
                # on_delivery alias, timestamp (0: now), headers.
                # (list is invariant: our (str, bytes) pairs are among the pairs it takes.)
                producer.produce(topic, value, key, -1, on_delivery, None, 0, headers or None)  # type: ignore[arg-type]
                break
            except KafkaException as exc:
                return exc
            except TypeError as exc:
                value, key = _plain_bytes(value, key, exc)
        self._wake()
        return None

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    def _delivered(self, fut: asyncio.Future[Any], err: KafkaError | None, msg: Message) -> None:
        if (
            err is not None
            and err.code() == _TOO_LARGE
            and self._resend_alone(msg, functools.partial(_on_delivery, fut))
        ):
            return
        _on_delivery(fut, err, msg)

    def _resend_alone(
        self, msg: Message, on_delivery: Callable[[KafkaError | None, Message], None]
    ) -> bool:
        """The broker refused the batch that held ``msg`` as too large (a topic's
        ``max.message.bytes`` below the batch): librdkafka fails every record of that batch,
        so ``msg`` is sent again in a request of its own, to the same partition with its
        timestamp, and only a record refused alone fails (Kafka's Java producer splits such
        a batch the same way). False if it cannot be queued."""
        solo = self._solo
        if solo is None:
            if self.producer is None:
                return False
            solo = self._solo = Producer({**self.config, "batch.num.messages": 1, "linger.ms": 0})
        ts_type, ts = msg.timestamp()
        try:
            solo.produce(
                msg.topic(),  # type: ignore[arg-type]
                msg.value(),
                msg.key(),
                msg.partition(),  # type: ignore[arg-type]
                on_delivery,
                None,
                ts if ts_type != TIMESTAMP_NOT_AVAILABLE else 0,
                msg.headers(),
            )
        except (BufferError, KafkaException):
            return False
        self._wake()
        return True

    def _poll(self) -> None:
        assert self.producer is not None
        self.producer.poll(0)
        if self._solo is not None:
            self._solo.poll(0)

    def _queued(self) -> int:
        """Records not yet reported (queued, in flight, or waiting for their report)."""
        assert self.producer is not None
        return len(self.producer) + (len(self._solo) if self._solo is not None else 0)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        producer = self.producer
        if producer is None or self._loop is None:
            raise RuntimeError("the producer is not running (call start() first)")
        fut = self._loop.create_future()
        cb = functools.partial(self._delivered, fut)
        delay = 0.0005
        while True:
            try:
                refused = self._produce(topic, value, key, cb, headers)
                break
            except BufferError:
                # librdkafka's queue is full: serve delivery reports and let it drain.
                producer.poll(0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        if refused is not None:
            fut.set_exception(KafkaDeliveryError(refused.args[0], topic))
        return fut

    async def flush(self) -> None:
        await self._flush(None)

    async def _flush(self, timeout: float | None) -> bool:
        """Wait until every record sent so far is acknowledged (or failed)."""
        producer = self.producer
        assert producer is not None and self._loop is not None
        deadline = None if timeout is None else self._loop.time() + timeout
        producer.flush(0)  # send what lingers now rather than after linger.ms
        while self._queued():
            self._poll()
            if not self._queued():
                break
            if deadline is not None and self._loop.time() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
        return True

    async def _poll_loop(self) -> None:
        producer = self.producer
        assert producer is not None and self._loop is not None
        while True:
            try:
                self._poll()
            except Exception:  # a delivery callback failed; the others must still run
                logger.exception("serving delivery reports failed")
            if self._queued():
                await asyncio.sleep(self.poll_interval)
            else:
                # Nothing queued, in flight or waiting to be reported: sleep until a send.
                self._wakeup = self._loop.create_future()
                await self._wakeup
