"""The in-memory broker behaves like Kafka where a user's pipeline test relies on it."""

from __future__ import annotations

import asyncio

import pytest

from fogverse.record import Record, TopicPartition
from fogverse.transport.memory import MemoryBroker, MemoryConsumerTransport


def _offsets(records: list[Record]) -> list[tuple[int | None, int | None]]:
    return [(r.partition, r.offset) for r in records]


@pytest.mark.timeout(10)
def test_a_partition_moves_to_a_new_member_only_after_its_old_owner_revoked_it() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        broker.create_topic("t", 2)
        for i in range(4):
            broker.append("t", b"%d" % i, None, [])
        a = MemoryConsumerTransport(broker, ["t"], "g")
        done: dict[TopicPartition, int] = {}

        async def commit_what_a_read(tps: set[TopicPartition]) -> None:
            # What a node does on revoke: commit the work it finished.
            await a.commit({tp: done[tp] for tp in tps if tp in done})

        a.on_revoke = commit_what_a_read
        await a.start()
        read = await a.getmany(0, 100)
        assert len(read) == 4
        for r in read:
            assert r.tp is not None and r.offset is not None
            done[r.tp] = r.offset + 1
        b = MemoryConsumerTransport(broker, ["t"], "g")
        await b.start()
        # A has not taken part in the rebalance yet (it did not poll): it still owns both
        # partitions, so B reads none of them, as on Kafka.
        assert await b.getmany(0, 100) == []
        assert a.assignment() & b.assignment() == set()
        assert await a.getmany(0, 100) == []  # A gives one partition up and commits it
        assert a.assignment() & b.assignment() == set()
        broker.append("t", b"new", None, [])
        broker.append("t", b"new", None, [])
        got = (await a.getmany(0, 100)) + (await b.getmany(0, 100))
        assert sorted(_offsets(got)) == [(0, 2), (1, 2)]  # nothing read twice
        assert len(a.assignment()) == len(b.assignment()) == 1

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_stop_wakes_a_getmany_waiting_on_the_same_consumer() -> None:
    async def main() -> None:
        consumer = MemoryConsumerTransport(MemoryBroker(), ["t"], "g")
        await consumer.start()
        waiting = asyncio.create_task(consumer.getmany(600, 10))
        await asyncio.sleep(0)  # one loop turn: the getmany is now waiting for records
        await consumer.stop()
        assert await waiting == []

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_leaving_member_hands_its_partitions_to_a_waiting_member_at_once() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        broker.create_topic("t", 2)
        a = MemoryConsumerTransport(broker, ["t"], "g")
        b = MemoryConsumerTransport(broker, ["t"], "g")
        await a.start()
        await b.start()
        assert await a.getmany(0, 10) == [] and await b.getmany(0, 10) == []
        [tp_a] = a.assignment()
        broker.append("t", b"x", None, [])
        broker.append("t", b"y", None, [])
        assert len(await b.getmany(0, 10)) == 1  # b's own partition
        waiting = asyncio.create_task(b.getmany(600, 10))
        await asyncio.sleep(0)  # one loop turn: b is now waiting for records
        await a.stop()  # a read nothing, committed nothing: b gets a's record
        got = await waiting
        assert [(r.topic, r.partition) for r in got] == [tp_a]

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_committing_a_lower_offset_makes_the_next_read_start_there() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        for i in range(5):
            broker.append("t", b"%d" % i, None, [])
        consumer = MemoryConsumerTransport(broker, ["t"], "g")
        await consumer.start()
        assert len(await consumer.getmany(0, 10)) == 5
        await consumer.commit({("t", 0): 5})
        await consumer.commit({("t", 0): 2})  # rewind the group, as Kafka allows
        await consumer.stop()
        restarted = MemoryConsumerTransport(broker, ["t"], "g")
        await restarted.start()
        assert [r.offset for r in await restarted.getmany(0, 10)] == [2, 3, 4]

    asyncio.run(main())


@pytest.mark.timeout(10)
@pytest.mark.parametrize("reset", ["latest", "largest", "end"])
def test_auto_offset_reset_latest_and_its_librdkafka_aliases_skip_the_backlog(reset: str) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        broker.append("t", b"old", None, [])
        consumer = MemoryConsumerTransport(broker, ["t"], "g", auto_offset_reset=reset)
        await consumer.start()
        assert await consumer.getmany(0, 10) == []
        broker.append("t", b"new", None, [])
        assert [r.value for r in await consumer.getmany(0, 10)] == [b"new"]

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_named_broker_serves_consumers_on_a_later_event_loop() -> None:
    # A restarted pipeline (or the next test) on the same memory://NAME runs on a new loop.
    MemoryBroker.reset()
    try:

        async def read(group: str) -> list[Record]:
            consumer = MemoryConsumerTransport(MemoryBroker.named("loops"), ["t"], group)
            await consumer.start()
            try:
                return await consumer.getmany(0.01, 10)
            finally:
                await consumer.stop()

        assert asyncio.run(read("g1")) == []
        assert asyncio.run(read("g2")) == []
    finally:
        MemoryBroker.reset()


@pytest.mark.timeout(10)
def test_a_partition_with_a_long_backlog_does_not_starve_the_others() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        broker.create_topic("t", 2)
        for i in range(20):
            assert broker.append("t", b"%d" % i, b"d", []).partition == 0
        assert broker.append("t", b"one", b"a", []).partition == 1
        consumer = MemoryConsumerTransport(broker, ["t"], "g")
        await consumer.start()
        # Two fetches of 5 may not both come from partition 0 while partition 1 waits.
        seen = {r.partition for _ in range(2) for r in await consumer.getmany(0, 5)}
        assert seen == {0, 1}

    asyncio.run(main())
