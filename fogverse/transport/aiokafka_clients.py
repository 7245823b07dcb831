"""What the add-ons' own aiokafka clients (the master's, the observer's, the view's) need:
a ``getmany()`` that survives a record it cannot parse, and a test for a dead sender.

The nodes run on librdkafka (``transport/confluent.py``), which has neither problem.

Kafka lets a producer write header keys that are not UTF-8; aiokafka decodes every header key
of a fetched batch and raises ``UnicodeDecodeError`` from ``getmany()``. Its position does not
move past the record, so every later call raises again: the partition is stuck for good.
Worse, records of other partitions drained by the failed call are consumed (their positions
moved) but never returned; an at-least-once node would then commit past them.

:class:`SafeFetch` wraps one consumer. On that error it rewinds every partition to the first
record it has not handed out, walks the partitions one record at a time to find the offset that
cannot be parsed, hands out a stand-in :class:`UnparsedRecord` for it (nodes dead-letter it
with its coordinates) and moves past it. The common path costs one dict update per partition
per batch, plus one position look-up per partition and assignment.

aiokafka parses a batch as a whole, so the records that follow an unreadable one *in the same
producer batch* cannot be read either: each becomes a stand-in too. Their coordinates are in
the dead-letter headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalOperation, IllegalStateError
from aiokafka.structs import ConsumerRecord

__all__ = ["SafeFetch", "UnparsedRecord", "sender_died"]

logger = logging.getLogger(__name__)

# The errors aiokafka raises while parsing a record the broker accepted. CRC failures are not
# here: aiokafka handles those by refetching.
PARSE_ERRORS: tuple[type[Exception], ...] = (UnicodeDecodeError,)

# How long the isolation walk waits for a partition's refetch.
_STEP_WAIT_MS = 500
# How long getmany() waits for a newly assigned partition's position.
_POSITION_WAIT = 0.1


@dataclass
class UnparsedRecord(ConsumerRecord):
    """Stands in for a record that could not be parsed: its coordinates, ``value`` None, and
    why. A type, not a header, so nothing a producer writes can pass for one."""

    reason: str = ""


def stand_in(tp: TopicPartition, offset: int, reason: str) -> UnparsedRecord:
    return UnparsedRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=-1,
        timestamp_type=0,
        key=None,
        value=None,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=(),
        reason=reason,
    )


class SafeFetch:
    """``getmany()`` over one consumer, with unparseable records replaced by
    :class:`UnparsedRecord` stand-ins."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        # Per partition, the offset after the last record handed out.
        self._next: dict[TopicPartition, int] = {}
        self.unreadable = 0

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions whose position moved without us (assigned anew, seeked)."""
        for tp in tps:
            self._next.pop(tp, None)

    async def getmany(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        consumer = self.consumer
        nxt = self._next
        if not nxt.keys() >= (assigned := consumer.assignment()):
            timeout_ms = await self._learn_positions(assigned, timeout_ms)
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except PARSE_ERRORS:
            return await self._isolate(max_records or 500)
        for tp, msgs in batches.items():
            if msgs:
                nxt[tp] = msgs[-1].offset + 1
        return batches

    async def _learn_positions(self, assigned: set[TopicPartition], timeout_ms: int) -> int:
        """Note where partitions we have handed out nothing from stand, so that a failed call
        can be undone; returns what is left of ``timeout_ms``. Once per partition and
        assignment: such a position only moves when records are handed out."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tp in assigned:
            if tp in self._next:
                continue
            # Bounded: a partition whose offset reset is stuck must not stall the others.
            # (A known position returns at once, but wait_for needs a moment to run it.)
            wait = max(0.01, min(timeout_ms / 1000, _POSITION_WAIT) - (loop.time() - start))
            with contextlib.suppress(TimeoutError, IllegalStateError):
                self._next[tp] = await asyncio.wait_for(self.consumer.position(tp), wait)
        return max(0, timeout_ms - int((loop.time() - start) * 1000))

    async def _isolate(
        self, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        consumer = self.consumer
        tps = sorted(consumer.assignment())
        # The failed call may have consumed other partitions' records without returning them.
        for tp in tps:
            await self._rewind(tp)
        out: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        budget = max_records
        for tp in tps:
            if budget <= 0:
                break
            got = await self._walk(tp, budget)
            if got:
                out[tp] = got
                budget -= len(got)
                self._next[tp] = got[-1].offset + 1
        return out

    async def _rewind(self, tp: TopicPartition) -> None:
        consumer = self.consumer
        target = self._next.get(tp)
        if target is None:
            # Its position was never known (an offset reset in progress): the group's
            # commit is where it started from, if there is one.
            try:
                target = await consumer.committed(tp)
            except IllegalOperation:
                target = None
        if target is not None:
            consumer.seek(tp, target)
        else:
            logger.warning(
                "cannot tell where %s[%d] stood before a failed fetch; records of it drained "
                "by that fetch may be skipped",
                tp.topic,
                tp.partition,
            )

    async def _walk(self, tp: TopicPartition, budget: int) -> list[ConsumerRecord[Any, Any]]:
        """Up to ``budget`` records of ``tp``, one at a time, ending with a stand-in if one
        cannot be parsed."""
        consumer = self.consumer
        got: list[ConsumerRecord[Any, Any]] = []
        while len(got) < budget:
            position = await consumer.position(tp)
            high = consumer.highwater(tp)
            if high is not None and position >= high:
                break
            try:
                batch = await consumer.getmany(tp, timeout_ms=_STEP_WAIT_MS, max_records=1)
            except PARSE_ERRORS as error:
                bad = await consumer.position(tp)
                reason = f"{type(error).__name__}: {error}"
                logger.warning(
                    "%s[%d]@%d cannot be parsed by aiokafka (%s); handing out a stand-in",
                    tp.topic,
                    tp.partition,
                    bad,
                    reason,
                )
                self.unreadable += 1
                got.append(stand_in(tp, bad, reason))
                consumer.seek(tp, bad + 1)
                break
            records = batch.get(tp)
            if not records:
                break
            got.extend(records)
        return got


def sender_died(producer: AIOKafkaProducer | None) -> bool:
    """Whether a started aiokafka producer lost its background sender task to an error: it
    then fails every send and will never settle what it was sending (aio-libs/aiokafka#907).
    Such a client must be replaced."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is None or not task.done() or task.cancelled():
        return False
    return task.exception() is not None
