"""One pipeline test suite, two backends: the real Kafka broker and the in-memory broker.

Tests that do not depend on Kafka itself take the ``backend`` fixture and run on both; tests
of our Kafka behaviour (crashes, commits, rebalances) use Kafka only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fogverse.record import Headers, Record
from fogverse.transport.memory import MemoryBroker


class ForwardingProducer:
    """A node's producer transport wrapped by a test: the lifecycle goes to ``inner``; a
    subclass changes what happens to sends and their acknowledgements."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def flush(self) -> None:
        await self.inner.flush()


@dataclass
class Backend:
    name: str
    servers: str
    new_topic: Any = None
    _created: list[str] = field(default_factory=list)

    def topic(self, partitions: int = 1) -> str:
        if self.new_topic is not None:
            return self.new_topic(partitions=partitions)
        name = f"t-{uuid.uuid4().hex[:10]}"
        MemoryBroker.for_servers(self.servers).create_topic(name, partitions)
        return name

    async def produce(self, topic: str, items: list[tuple[bytes | None, bytes, Headers]]) -> None:
        if self.name == "memory":
            broker = MemoryBroker.for_servers(self.servers)
            for key, value, headers in items:
                broker.append(topic, value, key, headers)
            return
        await produce_kafka(self.servers, topic, items)

    async def read(self, topic: str, n: int, timeout: float = 30.0) -> list[Record]:
        """Poll ``topic`` from its start until at least ``n`` records exist or time runs out."""
        if self.name == "memory":
            broker = MemoryBroker.for_servers(self.servers)
            deadline = asyncio.get_running_loop().time() + timeout
            while len(broker.records(topic)) < n and asyncio.get_running_loop().time() < deadline:
                await broker.wait_for_change(0.05)
            return list(broker.records(topic))
        return await read_kafka(self.servers, topic, n, timeout)

    def committed(self, group: str, topic: str, partition: int = 0) -> int | None:
        """The offset ``group`` committed for ``topic[partition]``; ``None`` before any."""
        if self.name == "memory":
            found = MemoryBroker.for_servers(self.servers).groups.get(group)
            return None if found is None else found.committed.get((topic, partition))
        return committed_kafka(self.servers, group, topic, partition)


async def produce_kafka(
    servers: str, topic: str, items: list[tuple[bytes | None, bytes, Headers]]
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k, headers=h or None) for k, v, h in items]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def committed_kafka(servers: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The offset ``group`` committed for ``topic[partition]`` on Kafka; ``None`` before any."""
    from confluent_kafka import Consumer as RdConsumer
    from confluent_kafka import TopicPartition

    consumer = RdConsumer({"bootstrap.servers": servers, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=30)
        return tp.offset if tp.offset >= 0 else None
    finally:
        consumer.close()


async def read_kafka(
    servers: str,
    topic: str,
    n: int,
    timeout: float = 30.0,
    settle: float = 0.0,
    done: Callable[[list[Record]], bool] | None = None,
) -> list[Record]:
    """Every record of ``topic`` from the beginning (no group), until ``n`` arrived (or
    ``done(records)`` holds) or ``timeout`` passed.

    Whatever the topic held when the call started is always read in full, however long that
    takes on a loaded machine, so a short ``timeout`` in a polling loop never returns a
    partial view of records that were already there. ``settle`` keeps reading that long after
    ``n`` arrived, to catch unexpected extras.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    finished = done or (lambda records: len(records) >= n)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        loop = asyncio.get_running_loop()
        # Setting up (metadata, offsets) is not part of the wait; it has its own bound.
        setup_deadline = loop.time() + max(timeout, 30.0)
        parts: set[int] | None = None
        while parts is None and loop.time() < setup_deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                parts = None
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
        if parts is None:
            return out
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = loop.time() + timeout
        hard_deadline = loop.time() + max(timeout, 60.0)
        settle_until: float | None = None
        while loop.time() < hard_deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                out.extend(
                    Record(
                        m.value,
                        m.key,
                        list(m.headers or []),
                        tp.topic,
                        tp.partition,
                        m.offset,
                        m.timestamp,
                    )
                    for m in msgs
                )
            if finished(out):
                if settle_until is None:
                    settle_until = loop.time() + settle
                if loop.time() >= settle_until:
                    break
            elif loop.time() >= deadline:
                caught_up = all([await consumer.position(tp) >= ends[tp] for tp in tps])
                if caught_up:
                    break
        return out
    finally:
        await consumer.stop()


import pytest  # noqa: E402


@pytest.fixture(params=["memory", "kafka"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The in-memory broker, and the real broker."""
    if request.param == "memory":
        MemoryBroker.reset()
        return Backend("memory", f"memory://{uuid.uuid4().hex[:8]}")
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    return Backend("kafka", bootstrap, new_topic=request.getfixturevalue("new_topic"))
