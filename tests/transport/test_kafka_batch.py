"""The aiokafka batcher against a stand-in producer: what it hands to aiokafka, in which order,
and how each record's future follows its batch. (tests/transport/test_kafka.py runs the
transport on the real broker.)"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    ProducerClosed,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import RecordMetadata, TopicPartition

from fogverse.transport.kafka_batch import Batcher


class FakeCluster:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = dict(partitions)
        self.unavailable: set[tuple[str, int]] = set()
        self.listeners: set[Any] = set()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        every = self.partitions_for_topic(topic)
        if every is None:
            return None
        return {p for p in every if (topic, p) not in self.unavailable}

    def add_listener(self, listener: Any) -> None:
        self.listeners.add(listener)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def update(self) -> None:
        for listener in list(self.listeners):
            listener(self)


class Handed:
    """One batch the batcher gave the producer: its records and the future to settle."""

    def __init__(self, topic: str, partition: int, builder: BatchBuilder) -> None:
        self.topic, self.partition = topic, partition
        buffer = builder._build()
        self.size = len(buffer)
        batch = MemoryRecords(bytes(buffer)).next_batch()
        self.records = [(r.key, r.value, list(r.headers), r.timestamp) for r in batch]
        self.ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @property
    def values(self) -> list[bytes]:
        return [v for _, v, _, _ in self.records]


class FakeProducer:
    """``create_batch``/``send_batch``/``partitions_for`` and ``client.cluster``; batches are
    acknowledged by the test (``auto_ack`` acknowledges each at once, with offsets counted per
    partition, ``refuse_over`` refuses larger ones as the broker would)."""

    def __init__(self, partitions: dict[str, int], batch_size: int = 16384) -> None:
        self.client = type("Client", (), {})()
        self.client.cluster = FakeCluster(partitions)
        self.batch_size = batch_size
        self.handed: list[Handed] = []
        self.auto_ack = False
        self.refuse_over: int | None = None
        self.offsets: dict[tuple[str, int], int] = {}
        self.metadata_waits: list[str] = []
        self.closed = False

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> Any:
        if self.closed:
            raise ProducerClosed()
        handed = Handed(topic, partition, builder)
        # One batch of a partition at a time: the batcher's own promise, checked here.
        assert not any(
            h.topic == topic and h.partition == partition and not h.ack.done() for h in self.handed
        ), "a second batch handed over before the first was settled"
        self.handed.append(handed)
        if self.refuse_over is not None and handed.size > self.refuse_over:
            handed.ack.set_exception(MessageSizeTooLargeError())
        elif self.auto_ack:
            self.ack(handed)
        return handed.ack

    def ack(self, handed: Handed, stamp: int = -1) -> None:
        tp = (handed.topic, handed.partition)
        base = self.offsets.get(tp, 0)
        self.offsets[tp] = base + len(handed.records)
        handed.ack.set_result(
            RecordMetadata(handed.topic, handed.partition, TopicPartition(*tp), base, stamp, 0, 0)
        )

    async def partitions_for(self, topic: str) -> set[int]:
        self.metadata_waits.append(topic)
        await asyncio.sleep(0)
        self.client.cluster.partitions[topic] = 1
        return {0}


def _batcher(producer: FakeProducer, **kw: Any) -> Batcher:
    settings = {
        "batch_size": producer.batch_size,
        "linger_ms": 0,
        "max_request_size": 1048576,
        "request_timeout_ms": 40000,
        **kw,
    }
    return Batcher(producer, **settings)  # type: ignore[arg-type]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_records_reach_the_producer_in_send_order_one_batch_per_partition_at_a_time():
    async def main() -> None:
        producer = FakeProducer({"t": 3}, batch_size=600)
        batcher = _batcher(producer)
        rng = random.Random(7)
        stop = asyncio.Event()

        async def acker() -> None:
            # Acknowledges what the producer holds, partitions in a shuffled order, a few
            # loop turns late: senders keep filling batches and waiting for room meanwhile.
            while not stop.is_set():
                await _turns(rng.randrange(1, 4))
                pending = [h for h in producer.handed if not h.ack.done()]
                rng.shuffle(pending)
                for h in pending:
                    producer.ack(h)

        acking = asyncio.create_task(acker())
        futs = []
        for i in range(600):
            key = b"k%d" % (i % 7)
            value = b"%05d" % i + b"." * rng.randrange(0, 200)
            futs.append((await batcher.send("t", value, key), key, value))
            if i % 25 == 0:
                await _turns(1)
        await asyncio.wait_for(batcher.flush(), 10)
        stop.set()
        await acking
        got: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
        for h in producer.handed:
            got[h.partition].extend(h.values)
        sent: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
        default = DefaultPartitioner()
        for fut, key, value in futs:
            meta = fut.result()
            assert meta.partition == default(key, [0, 1, 2], [0, 1, 2])
            sent[meta.partition].append(value)
            # Its own offset: the record's position in what the partition received.
            assert got[meta.partition][meta.offset] == value
        assert got == sent
        assert len(producer.handed) > 50, "the batch size should have split the stream"

    asyncio.run(main())


def test_a_partition_gets_its_next_batch_only_after_the_previous_is_settled():
    async def main() -> None:
        producer = FakeProducer({"t": 1}, batch_size=300)
        batcher = _batcher(producer)
        first = [batcher.send_nowait("t", b"a%03d" % i) for i in range(5)]
        await _turns()
        assert len(producer.handed) == 1
        # More records while the first batch is unacknowledged: they wait, filling batches.
        more = [await batcher.send("t", b"b%03d" % i + b"." * 50) for i in range(4)]
        await _turns()
        assert len(producer.handed) == 1
        assert not any(f.done() for f in first + more)
        producer.ack(producer.handed[0])
        await _turns()
        assert all(f.done() for f in first) and not any(f.done() for f in more)
        assert len(producer.handed) == 2
        assert producer.handed[1].values[0].startswith(b"b000")
        producer.auto_ack = True
        producer.ack(producer.handed[1])
        await batcher.flush()
        assert [f.result().offset for f in first + more] == list(range(9))

    asyncio.run(main())


def test_a_record_waits_for_room_instead_of_buffering_without_bound():
    async def main() -> None:
        producer = FakeProducer({"t": 1}, batch_size=200)
        batcher = _batcher(producer)
        value = b"x" * 150  # one record fills a batch
        await batcher.send("t", value)
        await _turns()
        # One batch at the producer, one sealed and waiting, one filling: no room for a 4th.
        for _ in range(2):
            assert batcher.send_nowait("t", value) is not None
        assert batcher.send_nowait("t", value) is None
        blocked = asyncio.ensure_future(batcher.send("t", value))
        await _turns()
        assert not blocked.done()
        producer.ack(producer.handed[0])
        await _turns()
        assert blocked.done()
        producer.auto_ack = True
        for h in producer.handed:
            if not h.ack.done():
                producer.ack(h)
        await batcher.flush()
        assert sum(len(h.records) for h in producer.handed) == 4

    asyncio.run(main())


def test_waiting_for_room_gives_up_after_the_request_timeout():
    async def main() -> None:
        producer = FakeProducer({"t": 1}, batch_size=200)
        batcher = _batcher(producer, request_timeout_ms=200)
        for _ in range(3):
            await batcher.send("t", b"x" * 150)
        with pytest.raises(KafkaTimeoutError):
            await batcher.send("t", b"x" * 150)

    asyncio.run(main())


def test_a_record_over_max_request_size_is_refused_alone_by_send():
    async def main() -> None:
        producer = FakeProducer({"t": 1})
        producer.auto_ack = True
        batcher = _batcher(producer, max_request_size=1000)
        first = batcher.send_nowait("t", b"small-1")
        with pytest.raises(MessageSizeTooLargeError, match="max_request_size"):
            batcher.send_nowait("t", b"x" * 2000, b"big")
        with pytest.raises(MessageSizeTooLargeError, match="max_request_size"):
            await batcher.send("t", b"x" * 2000, b"big")
        last = batcher.send_nowait("t", b"small-2")
        await batcher.flush()
        assert [first.result().offset, last.result().offset] == [0, 1]
        assert [v for h in producer.handed for v in h.values] == [b"small-1", b"small-2"]

    asyncio.run(main())


def test_a_batch_the_broker_refuses_as_too_large_is_split_and_only_the_big_record_fails():
    async def main() -> None:
        producer = FakeProducer({"t": 1}, batch_size=64 * 1024)
        producer.auto_ack = True
        producer.refuse_over = 10_000  # the topic's max.message.bytes
        batcher = _batcher(producer)
        values = [b"%03d" % i + b"." * 900 for i in range(30)]
        values[17] = b"017" + b"!" * 20_000
        futs = [batcher.send_nowait("t", v) for v in values]
        # A later batch, sent while the refused one is being split: it must stay behind.
        await _turns(1)
        later = [batcher.send_nowait("t", b"later-%d" % i) for i in range(3)]
        await batcher.flush()
        for i, fut in enumerate(futs):
            if i == 17:
                with pytest.raises(MessageSizeTooLargeError):
                    fut.result()
            else:
                assert fut.result() is not None
        assert all(f.result() is not None for f in later)
        delivered = [v for h in producer.handed if h.ack.exception() is None for v in h.values]
        assert delivered == [v for i, v in enumerate(values) if i != 17] + [
            b"later-%d" % i for i in range(3)
        ]
        # Offsets follow the order the broker took them in.
        offsets = [f.result().offset for i, f in enumerate(futs) if i != 17]
        assert offsets == sorted(offsets)
        # Later batches of the topic stay under the size that was refused.
        refused = sum(1 for h in producer.handed if h.ack.exception() is not None)
        for i in range(40):
            batcher.send_nowait("t", b"%03d" % i + b"." * 900)
        await batcher.flush()
        assert sum(1 for h in producer.handed if h.ack.exception() is not None) <= refused + 1

    asyncio.run(main())


def test_other_batch_errors_fail_every_record_of_the_batch_with_a_copy():
    async def main() -> None:
        producer = FakeProducer({"t": 1})
        batcher = _batcher(producer)
        futs = [batcher.send_nowait("t", b"v%d" % i) for i in range(3)]
        await _turns()
        producer.handed[0].ack.set_exception(NotEnoughReplicasError())
        await batcher.flush()
        errors = [f.exception() for f in futs]
        assert all(isinstance(e, NotEnoughReplicasError) for e in errors)
        assert len({id(e) for e in errors}) == 3
        # The partition goes on with the next batch.
        producer.auto_ack = True
        fut = await batcher.send("t", b"after")
        await batcher.flush()
        assert fut.result().offset == 0

    asyncio.run(main())


def test_acks_0_resolves_records_to_none_and_create_time_keeps_each_records_timestamp():
    async def main() -> None:
        producer = FakeProducer({"t": 1})
        batcher = _batcher(producer)
        a = [batcher.send_nowait("t", b"a"), batcher.send_nowait("t", b"b")]
        await _turns()
        producer.handed[0].ack.set_result(None)
        await batcher.flush()
        assert [f.result() for f in a] == [None, None]
        b = [batcher.send_nowait("t", b"c"), batcher.send_nowait("t", b"d")]
        await _turns()
        producer.ack(producer.handed[1], stamp=-1)
        await batcher.flush()
        stamps = [r[3] for r in producer.handed[1].records]
        assert [f.result().timestamp for f in b] == stamps
        assert [f.result().timestamp_type for f in b] == [0, 0]

    asyncio.run(main())


def test_linger_holds_a_batch_and_flush_sends_it_at_once():
    async def main() -> None:
        producer = FakeProducer({"t": 1})
        producer.auto_ack = True
        batcher = _batcher(producer, linger_ms=60_000)
        futs = [batcher.send_nowait("t", b"v%d" % i) for i in range(10)]
        await _turns()
        assert producer.handed == [], "sent before its linger ran out"
        await asyncio.wait_for(batcher.flush(), 5)
        assert all(f.done() for f in futs)
        assert [len(h.records) for h in producer.handed] == [10]

    asyncio.run(main())


def test_close_delivers_everything_buffered_then_refuses_new_records():
    async def main() -> None:
        producer = FakeProducer({"t": 2, "u": 1}, batch_size=500)
        producer.auto_ack = True
        batcher = _batcher(producer, linger_ms=60_000)
        futs = [
            await batcher.send(t, b"v%03d" % i + b"." * 100, b"k%d" % i)
            for i in range(30)
            for t in ("t", "u")
        ]
        await asyncio.wait_for(batcher.close(), 5)
        assert all(f.done() and f.exception() is None for f in futs)
        assert sum(len(h.records) for h in producer.handed) == 60
        with pytest.raises(ProducerClosed):
            batcher.send_nowait("t", b"late")
        assert producer.client.cluster.listeners == set()
        await batcher.close()  # a second close is harmless

    asyncio.run(main())


def test_partitions_follow_metadata_changes_and_unkeyed_records_use_available_ones():
    async def main() -> None:
        producer = FakeProducer({"t": 2})
        producer.auto_ack = True
        batcher = _batcher(producer)
        keys = [b"key-%d" % i for i in range(50)]
        before = [await batcher.send("t", b"v", k) for k in keys]
        producer.client.cluster.partitions["t"] = 5  # partitions added
        producer.client.cluster.update()
        after = [await batcher.send("t", b"v", k) for k in keys]
        cluster = producer.client.cluster
        cluster.unavailable = {("t", 0), ("t", 1), ("t", 2)}
        cluster.update()
        unkeyed = [await batcher.send("t", b"v") for _ in range(100)]
        await batcher.flush()
        part = DefaultPartitioner()
        assert [f.result().partition for f in before] == [part(k, [0, 1], [0, 1]) for k in keys]
        assert [f.result().partition for f in after] == [part(k, [0, 1, 2, 3, 4], []) for k in keys]
        assert {f.result().partition for f in unkeyed} == {3, 4}

    asyncio.run(main())


def test_a_configured_partitioner_is_asked_for_every_record():
    async def main() -> None:
        producer = FakeProducer({"t": 3})
        producer.auto_ack = True
        calls: list[tuple[Any, list[int], list[int]]] = []

        def last(key: Any, every: list[int], available: list[int]) -> int:
            calls.append((key, every, available))
            every.clear()  # a partitioner that mutates its arguments harms no one
            return 2

        batcher = _batcher(producer, partitioner=last)
        futs = [await batcher.send("t", b"v", b"k%d" % i) for i in range(5)]
        await batcher.flush()
        assert [f.result().partition for f in futs] == [2] * 5
        assert [c[0] for c in calls] == [b"k%d" % i for i in range(5)]

    asyncio.run(main())


def test_an_unknown_topic_waits_for_its_metadata():
    async def main() -> None:
        producer = FakeProducer({})
        producer.auto_ack = True
        batcher = _batcher(producer)
        assert batcher.send_nowait("new", b"v") is None
        fut = await batcher.send("new", b"v")
        await batcher.flush()
        assert producer.metadata_waits == ["new"]
        assert fut.result().topic == "new"

    asyncio.run(main())


def test_a_batch_the_producer_will_not_take_fails_its_records():
    async def main() -> None:
        producer = FakeProducer({"t": 1})
        batcher = _batcher(producer)
        producer.closed = True
        fut = batcher.send_nowait("t", b"v")
        await batcher.flush()
        assert isinstance(fut.exception(), ProducerClosed)

    asyncio.run(main())
