"""Kafka transports on aiokafka (topic administration: :mod:`fogverse.admin`)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from fogverse.admin import KafkaAdmin
from fogverse.record import Headers, Record, UnreadableRecord
from fogverse.record import TopicPartition as TP
from fogverse.transport.base import AckCallback, RebalanceCallback
from fogverse.transport.kafka_batch import Batcher
from fogverse.transport.kafka_fetch import SafeFetch, UnparsedRecord

__all__ = [
    "KafkaAdmin",
    "KafkaConsumerTransport",
    "KafkaProducerTransport",
    "SenderDied",
    "sender_died",
]

logger = logging.getLogger(__name__)

# aiokafka's own defaults, for the settings the batcher needs that we do not set ourselves.
_DEFAULTS = {
    name: param.default
    for name, param in inspect.signature(AIOKafkaProducer).parameters.items()
    if param.default is not inspect.Parameter.empty
}
# aiokafka's 16 KiB holds 15 records of 1 KiB: a produce request each, which costs more
# than the records. 64 KiB ran a 1 KiB pass-through as fast as 256 KiB (1 MiB: slower) and
# keeps a partition's buffers (three batches at most) small. A batch refused as too large
# by a topic with a lower max.message.bytes is split and resent.
_BATCH_SIZE = 64 * 1024
# Settings under which records go through aiokafka's own send(), record by record.
_UNBATCHED = ("key_serializer", "value_serializer", "transactional_id")
# A sender that dies again this soon after a restart dies of something a restart won't fix.
_MIN_SENDER_LIFE = 10.0
# How long a restart keeps trying to reach the cluster before the producer gives up.
_RESTART_DEADLINE = 120.0


def sender_died(producer: AIOKafkaProducer | None) -> bool:
    """Whether a started aiokafka producer lost its background sender task to an error: it
    then fails every send and will never settle what it was sending (aio-libs/aiokafka#907).
    Such a client must be replaced."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is None or not task.done() or task.cancelled():
        return False
    return task.exception() is not None


class SenderDied(KafkaError):
    """aiokafka's producer lost its sender task and this transport could not replace it:
    the record was not delivered, and nothing more will be (its ``__cause__`` says why)."""


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: KafkaConsumerTransport) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self._owner.on_revoke is not None and revoked:
            await self._owner.on_revoke({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._owner.fetch is not None:
            self._owner.fetch.forget(assigned)
        if self._owner.on_assign is not None and assigned:
            await self._owner.on_assign({(tp.topic, tp.partition) for tp in assigned})


class KafkaConsumerTransport:
    """An aiokafka consumer that never commits on its own.

    ``auto_offset_reset`` defaults to ``earliest``: a partition this group has never
    committed is read from its start, so nothing is skipped silently at start-up (and a
    partition added later by dynamic partitioning loses nothing).
    """

    def __init__(
        self,
        topics: Iterable[str],
        bootstrap_servers: str,
        group_id: str | None,
        *,
        client_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topics = list(topics)
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        conf: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "auto_offset_reset": "earliest",
            **(config or {}),
        }
        if client_id:
            conf.setdefault("client_id", client_id)
        # At-least-once depends on this: offsets move only when the node commits them.
        conf["enable_auto_commit"] = False
        self.config = conf
        self.consumer: AIOKafkaConsumer | None = None
        self.fetch: SafeFetch | None = None

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the client is made here, not in __init__.
        self.consumer = AIOKafkaConsumer(**self.config)
        self.fetch = SafeFetch(self.consumer)
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def getmany(self, timeout: float, max_records: int) -> list[Record]:
        assert self.fetch is not None
        batches = await self.fetch.getmany(int(timeout * 1000), max_records)
        out: list[Record] = []
        append = out.append
        for tp, msgs in batches.items():
            topic, partition = tp
            for m in msgs:
                if type(m) is UnparsedRecord:
                    append(
                        UnreadableRecord(
                            None, None, [], topic, partition, m.offset, reason=m.reason
                        )
                    )
                    continue
                headers = m.headers
                # Positional: one Record per message, and keyword arguments cost more.
                append(
                    Record(
                        m.value,
                        m.key,
                        list(headers) if headers else [],
                        topic,
                        partition,
                        m.offset,
                        m.timestamp,
                    )
                )
        return out

    async def commit(self, offsets: dict[TP, int]) -> None:
        assert self.consumer is not None, "start() the transport first"
        await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def seek_to_end(self, partitions: Iterable[TP]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            assert self.consumer is not None, "start() the transport first"
            await self.consumer.seek_to_end(*tps)
            if self.fetch is not None:
                self.fetch.forget(tps)

    def assignment(self) -> set[TP]:
        if self.consumer is None:
            return set()  # not started: no partitions yet
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}


class KafkaProducerTransport:
    """An aiokafka producer with ``acks=all``.

    Records are batched per partition by :class:`~fogverse.transport.kafka_batch.Batcher`
    and handed to aiokafka a batch at a time (its per-record ``send()`` costs a pass-through
    node more than the rest of its work together); each record still gets its own ack
    future, in order, with its own error. ``max_batch_size`` defaults to 64 KiB instead of
    aiokafka's 16 KiB: fewer, larger requests. A producer with key/value serializers or a
    ``transactional_id`` sends through aiokafka's ``send()`` instead.

    If aiokafka's sender task dies (an error it does not expect, such as the KeyError of
    aio-libs/aiokafka#907 during a broker crash), a new client takes over and every
    unacknowledged record is sent again, in order per partition (a record the old client
    had written may then appear twice). Where that is impossible (records sent through
    ``send()``, a replacement that dies within 10 s, no client could start for 2 minutes)
    every unsettled record and every later send fails with :class:`SenderDied`: nothing waits
    for an ack that cannot come.

    Idempotence stays off by default: at-least-once needs acks, not exactly-once retries,
    and aiokafka's idempotent producer fails every later batch of a partition
    (OutOfOrderSequenceNumber) once the broker refused one record as too large — a single
    oversized output would poison the stream instead of being dead-lettered.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "linger_ms": 5,
            "max_batch_size": _BATCH_SIZE,
            **(config or {}),
        }
        if client_id:
            conf.setdefault("client_id", client_id)
        self.config = conf
        self.producer: AIOKafkaProducer | None = None
        self.batcher: Batcher | None = None
        self._stopping = False
        self._dead: SenderDied | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._unacked: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        self.producer = await self._new_client(replacement=False)
        conf = self.config
        if not any(conf.get(k) is not None for k in _UNBATCHED):
            # None: aiokafka's default partitioner, which the batcher applies itself.
            partitioner = conf.get("partitioner")
            if type(partitioner) is DefaultPartitioner:
                partitioner = None
            self.batcher = Batcher(
                self.producer,
                batch_size=conf["max_batch_size"],
                linger_ms=conf["linger_ms"],
                max_request_size=conf.get("max_request_size", _DEFAULTS["max_request_size"]),
                request_timeout_ms=conf.get("request_timeout_ms", _DEFAULTS["request_timeout_ms"]),
                partitioner=partitioner,
            )

    async def _new_client(self, *, replacement: bool) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self.config)
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        # aiokafka's sender task can die of an error it does not expect (a KeyError in its
        # client during a broker crash: aio-libs/aiokafka#907). It then fails what its
        # accumulator holds, but the batches it was sending are never settled and every
        # later send fails: a node would wait for acks that cannot come. Watch it.
        born = asyncio.get_running_loop().time() if replacement else None
        task = producer._sender.sender_task
        if task is not None:  # None: a client that never started (a test's stand-in)
            task.add_done_callback(functools.partial(self._sender_done, producer, born))
        return producer

    def _sender_done(
        self, producer: AIOKafkaProducer, born: float | None, task: asyncio.Task[None]
    ) -> None:
        if task.cancelled() or self._stopping or producer is not self.producer:
            return
        cause = task.exception()
        if cause is None:
            return
        if self.batcher is None:
            # Records sent one by one (serializers, transactions) are not kept to be sent
            # again: they fail.
            self._give_up(cause, "")
            return
        lived = None if born is None else asyncio.get_running_loop().time() - born
        if lived is not None and lived < _MIN_SENDER_LIFE:
            # A replacement that dies this soon died of something a new client won't fix.
            self._give_up(cause, f" again {lived:.1f} s after a restart")
            return
        logger.error(
            "aiokafka's producer sender died (%r); sending every unacknowledged record again "
            "through a new client",
            cause,
        )
        self.batcher.pause()
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        old = self.producer
        assert old is not None  # only a started transport restarts its client
        with contextlib.suppress(Exception):
            await old.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RESTART_DEADLINE
        while True:
            try:
                producer = await self._new_client(replacement=True)
                break
            except Exception as exc:
                if loop.time() >= deadline or self._stopping:
                    self._give_up(exc, f" and no new client started in {_RESTART_DEADLINE:.0f} s")
                    return
                logger.warning("a new producer client could not start yet: %s", exc)
                await asyncio.sleep(1.0)
        self.producer = producer
        assert self.batcher is not None
        self.batcher.rebind(producer)
        logger.warning("the producer carries on with a new client")

    def _give_up(self, cause: BaseException, detail: str) -> None:
        dead = SenderDied(
            f"aiokafka's producer sender died ({cause!r}){detail}; this producer can deliver "
            "nothing more: restart it"
        )
        dead.__cause__ = cause
        logger.error("%s", dead)
        self._dead = dead
        if self.batcher is not None:
            self.batcher.fail_all(dead)
        for fut in list(self._unacked):
            if not fut.done():
                fut.set_exception(copy.copy(dead))
        self._unacked.clear()

    async def stop(self) -> None:
        if self.producer is None:
            return
        self._stopping = True
        restarting = self._restarting
        if restarting is not None and not restarting.done():
            restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restarting
            if self.batcher is not None and self._dead is None:
                self._give_up(RuntimeError("stopped"), " while it was being replaced")
        try:
            if self.batcher is not None:
                await self.batcher.close()
        finally:
            await self.producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        if self._dead is not None:
            raise copy.copy(self._dead)
        batcher = self.batcher
        if batcher is None:
            assert self.producer is not None, "start() the transport first"
            fut = await self.producer.send(topic, value=value, key=key, headers=headers or None)
            self._unacked.add(fut)
            fut.add_done_callback(self._unacked.discard)
            return fut
        ack = batcher.send_nowait(topic, value, key, headers)
        if ack is None:
            ack = await batcher.send(topic, value, key, headers)
        return ack

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        on_ack: AckCallback,
    ) -> bool:
        if self._dead is not None:
            raise copy.copy(self._dead)
        if self.batcher is None:
            return False
        ack = self.batcher.send_nowait(topic, value, key, headers)
        if ack is None:
            return False
        ack.add_done_callback(lambda fut: on_ack(_outcome(fut)))
        return True

    async def flush(self) -> None:
        if self.batcher is not None:
            await self.batcher.flush()
        if self.producer is not None:
            await self.producer.flush()


def _outcome(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError("delivery cancelled")
    return fut.exception()
