"""Per-partition batching in front of aiokafka's producer: the cheap path for every record.

aiokafka's ``send()`` runs a chain of coroutines, two metadata look-ups, the partitioner and
the accumulator for every record, and a pass-through node pays for all of it per message.
:class:`Batcher` appends each record to a batch of its own instead (one C-level append and a
future) and hands whole batches to aiokafka through its public batch API (``create_batch``,
``send_batch``); each record's future is resolved from its batch's.

What aiokafka's ``send()`` guarantees still holds:

- **Partition.** The configured partitioner picks it from the same metadata, with the same
  arguments; the default one is applied as aiokafka applies it (murmur2 of the key over
  every partition; unkeyed records at random among the available ones).
- **Order.** Records of a partition are appended in send order, and a partition has one
  batch at aiokafka at a time: the next is handed over once that one is acknowledged or has
  failed (aiokafka keeps a batch's retries in order itself).
- **Acks.** A record's future resolves, to its own :class:`~aiokafka.structs.RecordMetadata`,
  once the broker acknowledged its batch (``acks`` as configured), or fails with the
  batch's error.
- **Errors per record.** A record over ``max_request_size`` is refused by ``send`` itself
  (``MessageSizeTooLargeError``, raised, as aiokafka raises it). A batch the broker refuses
  as too large (a topic whose ``max.message.bytes`` is below the batch size) is split, in
  order, and sent again, and later batches of that topic are kept under the size that
  failed: only a record too large on its own fails.
- **Flush and close.** :meth:`Batcher.flush` waits for every record sent before it;
  :meth:`Batcher.close` flushes and then refuses new records (``ProducerClosed``).
- **Backpressure.** A partition buffers at most the batch at aiokafka, one sealed batch and
  the one filling (plus the pieces of a split batch); a record that needs more waits
  (``KafkaTimeoutError`` after ``request_timeout_ms``, as aiokafka's ``send()``).

Batches linger ``linger_ms`` after their first record (as aiokafka's do), unless they fill
up first; while a partition's previous batch is unacknowledged, the next keeps filling.

**A new client.** Records stay in their batch until acknowledged, so when aiokafka's
producer can send nothing more (its sender task died), :meth:`Batcher.pause` holds every
batch back and :meth:`Batcher.rebind` hands all unacknowledged ones, in order, to a new
producer; :meth:`Batcher.fail_all` fails them instead when there is none.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
)
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata

from fogverse.transport.errors import refused_for_size

__all__ = ["Batcher", "Partitioner"]

logger = logging.getLogger(__name__)

Partitioner = Callable[[bytes | None, list[int], list[int]], int]
"""aiokafka's partitioner signature: ``(key, all_partitions, available_partitions)``."""

Headers = Sequence[tuple[str, bytes]]

# The broker refused a batch for its size: splitting it may get its records through.
_NO_HEADERS: list[tuple[str, bytes]] = []
_estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
# Hashes of recent keys: a few keys (cameras, devices) recur on every record.
_HASH_CACHE = 4096
_HASH_KEY_MAX = 128


class _Batch:
    __slots__ = ("builder", "cap", "done", "entries", "lingered", "timer", "urgent")

    def __init__(self, builder: Any, cap: int | None, done: asyncio.Future[None]) -> None:
        self.builder = builder
        self.cap = cap
        """Byte limit below the builder's own, learnt from a refusal; ``None``: none."""
        # (future, append metadata, key, value, headers) per record: the record is kept until
        # it is acknowledged, in case the batch has to be split and sent again.
        self.entries: list[tuple[asyncio.Future[Any], Any, Any, Any, Headers]] = []
        self.done = done
        """Resolved once every record of the batch is settled (acknowledged or failed)."""
        self.lingered = False
        self.urgent = False
        self.timer: asyncio.TimerHandle | None = None


class _Partition:
    __slots__ = ("filling", "in_flight", "partition", "queue", "space", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.filling: _Batch | None = None
        self.queue: deque[_Batch] = deque()
        """Sealed batches waiting their turn, in order."""
        self.in_flight: _Batch | None = None
        """The batch aiokafka has (or is being handed), until it is settled."""
        self.space: asyncio.Future[None] | None = None
        """Set when a sealed batch leaves the queue; senders waiting for room await it."""


class Batcher:
    """Batches records per partition for one started :class:`~aiokafka.AIOKafkaProducer`.

    Only for producers without key/value serializers or transactions (the transport sends
    through aiokafka's ``send()`` for those).
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        batch_size: int,
        linger_ms: float,
        max_request_size: int,
        request_timeout_ms: float,
        partitioner: Partitioner | None = None,
    ) -> None:
        self._producer = producer
        self._loop = asyncio.get_running_loop()
        self._batch_size = batch_size
        self._linger = max(0.0, linger_ms / 1000)
        self._max_request_size = max_request_size
        self._timeout = request_timeout_ms / 1000
        self._partitioner = partitioner
        self._cluster = producer.client.cluster
        self._cluster.add_listener(self._metadata_changed)
        self._listening = True
        # topic -> (all partitions, available ones), as aiokafka lists them for its partitioner
        self._topics: dict[str, tuple[list[int], list[int]]] = {}
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._caps: dict[str, int] = {}
        self._hashes: dict[bytes, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked: _Partition | None = None
        self._paused = False
        self._failed: BaseException | None = None
        self.closed = False

    # ---- sending ----------------------------------------------------------------------------

    def send_nowait(
        self, topic: str, value: Any, key: Any = None, headers: Headers | None = None
    ) -> asyncio.Future[Any] | None:
        """Append a record; its ack future, or ``None`` if it must wait (topic metadata not
        known yet, or no room): then :meth:`send` it instead. Raises what aiokafka's
        ``send()`` raises before queueing a record (``MessageSizeTooLargeError`` over
        ``max_request_size``, ``ProducerClosed``)."""
        if self._failed is not None:
            raise copy.copy(self._failed)
        if self.closed:
            raise ProducerClosed()
        if value is None and key is None:
            raise AssertionError("Need at least one: key or value")
        if not headers:
            headers = _NO_HEADERS
        size = _estimate(key, value, headers)
        if size > self._max_request_size:
            # Raised, as aiokafka's send() raises it: the node then dead-letters the input, and
            # a dead letter refused this way is sent again without its payload.
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the "
                "maximum request size you have configured with the max_request_size "
                "configuration"
            )
        partitions = self._topics.get(topic)
        if partitions is None:
            partitions = self._learn(topic)
            if partitions is None:
                return None
        number = self._choose(key, partitions)
        part = self._partitions.get((topic, number))
        if part is None:
            part = self._partitions[(topic, number)] = _Partition(topic, number)
        batch = part.filling
        if batch is not None:
            cap = batch.cap
            if cap is not None and batch.builder.size() + size > cap:
                # Kept under what the broker refused before; the first record always goes in.
                batch.builder.close()
            meta = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            if meta is not None:
                fut = self._loop.create_future()
                batch.entries.append((fut, meta, key, value, headers))
                return fut
            # The batch is full: seal it, if there is room for another.
            if part.queue:
                self._blocked = part
                return None
            self._seal(part)
        batch = self._start_batch(part)
        meta = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        fut = self._loop.create_future()
        batch.entries.append((fut, meta, key, value, headers))
        return fut

    async def send(
        self, topic: str, value: Any, key: Any = None, headers: Headers | None = None
    ) -> asyncio.Future[Any]:
        """Append a record, waiting for topic metadata or for room as needed; its ack future."""
        deadline = self._loop.time() + self._timeout
        while True:
            self._blocked = None
            fut = self.send_nowait(topic, value, key, headers)
            if fut is not None:
                return fut
            blocked = self._blocked
            left = deadline - self._loop.time()
            if left <= 0:
                raise KafkaTimeoutError()
            if blocked is None:
                # Unknown topic: aiokafka fetches its metadata (or raises, as send() would).
                await self._producer.partitions_for(topic)
                continue
            if blocked.space is None:
                blocked.space = self._loop.create_future()
            await asyncio.wait([blocked.space], timeout=left)

    # ---- partitions -------------------------------------------------------------------------

    def _metadata_changed(self, cluster: Any) -> None:
        self._topics.clear()

    def _learn(self, topic: str) -> tuple[list[int], list[int]] | None:
        every = self._cluster.partitions_for_topic(topic)
        if every is None:
            return None
        available = self._cluster.available_partitions_for_topic(topic) or ()
        # Listed from the sets as aiokafka's send() lists them for its partitioner.
        partitions = (list(every), list(available))
        self._topics[topic] = partitions
        return partitions

    def _choose(self, key: Any, partitions: tuple[list[int], list[int]]) -> int:
        every, available = partitions
        if self._partitioner is not None:
            return self._partitioner(key, list(every), list(available))
        # aiokafka's DefaultPartitioner, without its cost where the answer cannot vary.
        if key is None:
            return random.choice(available or every)
        if len(every) == 1:
            return every[0]
        cacheable = type(key) is bytes and len(key) <= _HASH_KEY_MAX
        h = self._hashes.get(key) if cacheable else None
        if h is None:
            h = murmur2(key) & 0x7FFFFFFF
            if cacheable:
                if len(self._hashes) >= _HASH_CACHE:
                    self._hashes.clear()
                self._hashes[key] = h
        return every[h % len(every)]

    # ---- batches ----------------------------------------------------------------------------

    def _start_batch(self, part: _Partition, cap: int | None = None) -> _Batch:
        if cap is None:
            cap = self._caps.get(part.topic)
        batch = _Batch(self._producer.create_batch(), cap, self._loop.create_future())
        part.filling = batch
        if self._linger:
            batch.timer = self._loop.call_later(self._linger, self._lingered, part, batch)
        else:
            # linger_ms=0: what is sent before the loop turns still shares a batch.
            self._loop.call_soon(self._lingered, part, batch)
        return batch

    def _lingered(self, part: _Partition, batch: _Batch) -> None:
        batch.timer = None
        batch.lingered = True
        if part.filling is batch and part.in_flight is None and not part.queue:
            self._seal(part)

    def _seal(self, part: _Partition) -> None:
        """Close the filling batch and hand it over, or queue it behind the others."""
        batch = part.filling
        assert batch is not None
        part.filling = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        batch.builder.close()
        if part.in_flight is None and not part.queue and not self._paused:
            self._hand_over(part, batch)
        else:
            part.queue.append(batch)

    def _next(self, part: _Partition) -> None:
        """The partition's batch at aiokafka is settled: hand over the next one, if due."""
        if self._paused:
            return
        if part.queue:
            self._hand_over(part, part.queue.popleft())
            space = part.space
            if space is not None:
                part.space = None
                if not space.done():
                    space.set_result(None)
            return
        batch = part.filling
        if batch is not None and (batch.lingered or batch.urgent or batch.builder.closed()):
            self._seal(part)

    def _hand_over(self, part: _Partition, batch: _Batch) -> None:
        part.in_flight = batch
        task = self._loop.create_task(self._submit(part, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, part: _Partition, batch: _Batch) -> None:
        try:
            ack = await self._producer.send_batch(
                batch.builder, part.topic, partition=part.partition
            )
        except Exception as exc:  # closed, fenced, metadata timeout: the batch's records fail
            self._settled(part, batch, None, exc)
            return
        ack.add_done_callback(lambda fut: self._acked(part, batch, fut))

    def _acked(self, part: _Partition, batch: _Batch, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._settled(part, batch, None, asyncio.CancelledError("batch cancelled"))
        elif (exc := fut.exception()) is not None:
            self._settled(part, batch, None, exc)
        else:
            self._settled(part, batch, fut.result(), None)

    def _settled(
        self, part: _Partition, batch: _Batch, result: Any, exc: BaseException | None
    ) -> None:
        if part.in_flight is not batch:
            # Taken back from a client that can no longer send it (rebind or fail_all).
            return
        part.in_flight = None
        try:
            if exc is not None and refused_for_size(exc) and len(batch.entries) > 1:
                self._split(part, batch, exc)
            elif exc is not None:
                _fail(batch, exc)
            else:
                _resolve(batch, result)
        finally:
            self._next(part)

    def _split(self, part: _Partition, batch: _Batch, exc: BaseException) -> None:
        """Send a refused batch's records again in smaller batches, ahead of later ones."""
        size = batch.builder.size()
        cap = max(1, min(self._caps.get(part.topic, size), size // 2))
        self._caps[part.topic] = cap
        logger.warning(
            "the broker refused a batch of %d records (%d bytes) to %s[%d] (%s); sending "
            "them again in batches of at most %d bytes",
            len(batch.entries),
            size,
            part.topic,
            part.partition,
            type(exc).__name__,
            cap,
        )
        pieces: list[_Batch] = []
        piece: _Batch | None = None
        for fut, meta, key, value, headers in batch.entries:
            again = None
            if piece is not None and piece.builder.size() + _estimate(key, value, headers) <= cap:
                again = piece.builder.append(
                    timestamp=meta.timestamp, key=key, value=value, headers=headers
                )
            if again is None:
                # An empty batch takes any record, however large: one too large on its own
                # then fails alone.
                piece = _Batch(self._producer.create_batch(), cap, self._loop.create_future())
                pieces.append(piece)
                again = piece.builder.append(
                    timestamp=meta.timestamp, key=key, value=value, headers=headers
                )
            assert piece is not None  # made above when no piece took the record
            piece.entries.append((fut, again, key, value, headers))
        for piece in pieces:
            piece.builder.close()
        part.queue.extendleft(reversed(pieces))
        _when_all(batch.done, [p.done for p in pieces])

    # ---- a new client -----------------------------------------------------------------------

    def pause(self) -> None:
        """Take every batch back from the current producer (its sender is gone: what it
        holds may never be settled) and hand nothing more to it. Records still queue up,
        with the usual backpressure, until :meth:`rebind` or :meth:`fail_all`."""
        self._paused = True
        for part in list(self._partitions.values()):
            batch = part.in_flight
            if batch is not None:
                # Settled late by the old client (or never), it is ignored: it is no longer
                # the partition's batch in flight.
                part.in_flight = None
                part.queue.appendleft(self._rebuilt(batch))

    def rebind(self, producer: AIOKafkaProducer) -> None:
        """Carry on with ``producer``: every batch taken back by :meth:`pause` goes again, in
        order. A batch the old client may have written is written again: at least once."""
        self._cluster.remove_listener(self._metadata_changed)
        self._producer = producer
        self._cluster = producer.client.cluster
        self._cluster.add_listener(self._metadata_changed)
        self._topics.clear()
        self._paused = False
        for part in list(self._partitions.values()):
            self._next(part)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every unsettled record with ``exc``, and every record sent from now on."""
        self._failed = exc
        self._paused = True
        for part in list(self._partitions.values()):
            batches = [b for b in (part.in_flight, *part.queue, part.filling) if b is not None]
            part.in_flight = part.filling = None
            part.queue.clear()
            for batch in batches:
                if batch.timer is not None:
                    batch.timer.cancel()
                _fail(batch, exc)
            if part.space is not None and not part.space.done():
                part.space.set_result(None)

    def _rebuilt(self, batch: _Batch) -> _Batch:
        """A copy of ``batch`` built afresh from its records; the old one is done with it."""
        fresh = _Batch(self._producer.create_batch(), batch.cap, self._loop.create_future())
        for fut, meta, key, value, headers in batch.entries:
            again = fresh.builder.append(
                timestamp=meta.timestamp, key=key, value=value, headers=headers
            )
            # The same records in the same order fit a builder of the same size.
            assert again is not None, "a rebuilt batch must hold the records it held"
            fresh.entries.append((fut, again, key, value, headers))
        fresh.builder.close()
        batch.entries.clear()
        _when_all(batch.done, [fresh.done])
        return fresh

    # ---- flush and close --------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged or has failed."""
        waits: list[asyncio.Future[None]] = []
        for part in list(self._partitions.values()):
            if part.in_flight is not None:
                waits.append(part.in_flight.done)
            waits.extend(batch.done for batch in part.queue)
            batch = part.filling
            if batch is not None:
                waits.append(batch.done)
                batch.urgent = True
                if part.in_flight is None and not part.queue:
                    self._seal(part)
        if waits:
            await asyncio.wait(waits)

    async def close(self) -> None:
        """Refuse new records, then wait for the ones sent."""
        self.closed = True
        try:
            await self.flush()
        finally:
            if self._listening:
                self._listening = False
                self._cluster.remove_listener(self._metadata_changed)


def _resolve(batch: _Batch, result: Any) -> None:
    if result is None:  # acks=0: nothing to report, as aiokafka's own futures
        for fut, *_ in batch.entries:
            if not fut.done():
                fut.set_result(None)
    else:
        topic, partition, tp = result.topic, result.partition, result.topic_partition
        base, stamp, log_start = result.offset, result.timestamp, result.log_start_offset
        # -1: the topic keeps the producer's timestamps (CreateTime): each record's own.
        kind = 0 if stamp == -1 else 1
        for fut, meta, *_ in batch.entries:
            if not fut.done():
                fut.set_result(
                    RecordMetadata(
                        topic,
                        partition,
                        tp,
                        base + meta.offset,
                        meta.timestamp if stamp == -1 else stamp,
                        kind,
                        log_start,
                    )
                )
    batch.entries.clear()
    if not batch.done.done():
        batch.done.set_result(None)


def _fail(batch: _Batch, exc: BaseException) -> None:
    for fut, *_ in batch.entries:
        if not fut.done():
            # A copy each: one exception object would collect every awaiter's traceback.
            fut.set_exception(copy.copy(exc))
    batch.entries.clear()
    if not batch.done.done():
        batch.done.set_result(None)


def _when_all(target: asyncio.Future[None], parts: list[asyncio.Future[None]]) -> None:
    left = len(parts)

    def one_done(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not target.done():
            target.set_result(None)

    for fut in parts:
        fut.add_done_callback(one_done)
