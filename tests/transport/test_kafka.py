"""The aiokafka producer transport on the real broker: batching keeps order, partitions, acks
and per-record errors as aiokafka's own send() gives them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, ProducerClosed
from backends import read_kafka

from fogverse.transport.kafka import KafkaProducerTransport


async def _started(bootstrap: str, **config: Any) -> KafkaProducerTransport:
    transport = KafkaProducerTransport(
        bootstrap, client_id="t-" + uuid.uuid4().hex[:6], config=config
    )
    await transport.start()
    return transport


def _by_partition(records: list[Any]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(r.partition, []).append(r.value)
    return out


def test_records_keep_their_order_per_partition_across_many_small_batches(
    kafka_bootstrap, new_topic
):
    topic = new_topic(partitions=3)

    async def main() -> tuple[list[Any], list[Any]]:
        # 2 KiB batches: hundreds of batches, and senders that wait for room.
        transport = await _started(kafka_bootstrap, max_batch_size=2048, linger_ms=1)
        try:
            acks = []
            for i in range(1500):
                value = b"%05d|" % i + b"." * (i % 300)
                acks.append(await transport.send(topic, value, b"key-%d" % (i % 11)))
            metas = await asyncio.wait_for(asyncio.gather(*acks), 60)
        finally:
            await transport.stop()
        return metas, await read_kafka(kafka_bootstrap, topic, 1500)

    metas, records = asyncio.run(main())
    assert len(records) == 1500
    sent: dict[int, list[bytes]] = {}
    for i, meta in enumerate(metas):
        sent.setdefault(meta.partition, []).append(b"%05d|" % i + b"." * (i % 300))
    assert _by_partition(records) == sent
    where = {(r.partition, r.offset): r.value for r in records}
    for i, meta in enumerate(metas):
        assert where[(meta.partition, meta.offset)].startswith(b"%05d|" % i)


def test_keyed_records_land_where_aiokafka_would_put_them(kafka_bootstrap, new_topic):
    ours, theirs = new_topic(partitions=7), new_topic(partitions=7)
    keys = [b"cam%d" % i for i in range(40)] + [b"", b"x" * 37, bytes(range(256))] * 2

    async def main() -> tuple[list[int], list[int]]:
        transport = await _started(kafka_bootstrap)
        plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await plain.start()
        try:
            got = [await transport.send(ours, b"v", k) for k in keys]
            want = [await plain.send(theirs, b"v", key=k) for k in keys]
            got_parts = [m.partition for m in await asyncio.gather(*got)]
            want_parts = [m.partition for m in await asyncio.gather(*want)]
        finally:
            await transport.stop()
            await plain.stop()
        return got_parts, want_parts

    got, want = asyncio.run(main())
    assert got == want
    assert len(set(got)) > 3


def test_a_record_too_large_fails_alone_and_its_neighbours_are_delivered_in_order(
    kafka_bootstrap, new_topic
):
    """Over the producer's limit: send() refuses it. Over the topic's limit but batched with
    small records: the broker refuses the batch; its records are sent again, and only the
    big one fails."""
    topic = new_topic(config={"max.message.bytes": 20_000})

    async def main() -> tuple[list[Any], list[Any]]:
        transport = await _started(kafka_bootstrap, max_request_size=100_000)
        try:
            with pytest.raises(MessageSizeTooLargeError):
                await transport.send(topic, b"x" * 200_000, b"huge")
            acks = []
            for i in range(60):
                value = (b"!" * 30_000) if i == 31 else (b"%02d" % i + b"." * 1000)
                acks.append(await transport.send(topic, value, b"k"))
            results = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), 60)
        finally:
            await transport.stop()
        return results, await read_kafka(kafka_bootstrap, topic, 59)

    results, records = asyncio.run(main())
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [31], results[failed[0]] if failed else None
    assert isinstance(results[31], MessageSizeTooLargeError)
    assert [r.value[:2] for r in records] == [b"%02d" % i for i in range(60) if i != 31]


def test_flush_and_stop_deliver_every_record_sent_before_them(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=2)

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        # A linger far longer than the test: only flush() and stop() can send the last batch,
        # and small batches put it behind others still unacknowledged.
        transport = await _started(kafka_bootstrap, linger_ms=600_000, max_batch_size=1024)
        first = [await transport.send(topic, b"a%d" % i, b"k%d" % i) for i in range(300)]
        await asyncio.wait_for(transport.flush(), 30)
        flushed = [f.done() and f.exception() is None for f in first]
        second = [await transport.send(topic, b"b%d" % i, b"k%d" % i) for i in range(200)]
        await asyncio.wait_for(transport.stop(), 30)
        stopped = [f.done() and f.exception() is None for f in second]
        with pytest.raises(ProducerClosed):
            await transport.send(topic, b"late")
        return flushed, stopped, await read_kafka(kafka_bootstrap, topic, 500)

    flushed, stopped, records = asyncio.run(main())
    assert all(flushed) and all(stopped)
    assert sorted(r.value for r in records) == sorted(
        [b"a%d" % i for i in range(300)] + [b"b%d" % i for i in range(200)]
    )


def test_serializers_send_through_aiokafka_record_by_record(kafka_bootstrap, new_topic):
    topic = new_topic()

    async def main() -> tuple[Any, list[Any]]:
        transport = await _started(kafka_bootstrap, value_serializer=str.encode)
        try:
            batcher = transport.batcher
            ack = await transport.send(topic, "text")  # type: ignore[arg-type]
            await asyncio.wait_for(ack, 30)
        finally:
            await transport.stop()
        return batcher, await read_kafka(kafka_bootstrap, topic, 1)

    batcher, records = asyncio.run(main())
    assert batcher is None
    assert [r.value for r in records] == [b"text"]


def test_a_configured_partitioner_decides_every_record(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=3)

    def last(key: Any, every: list[int], available: list[int]) -> int:
        return max(every)

    async def main() -> list[int]:
        transport = await _started(kafka_bootstrap, partitioner=last)
        try:
            acks = [await transport.send(topic, b"v", b"k%d" % i) for i in range(20)]
            return [m.partition for m in await asyncio.wait_for(asyncio.gather(*acks), 30)]
        finally:
            await transport.stop()

    assert asyncio.run(main()) == [2] * 20
