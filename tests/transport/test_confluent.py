"""The confluent-kafka transports on the real broker: records, commits, failures, rebalances."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import uuid
from typing import Any

import pytest
from backends import read_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as RawProducer
from confluent_kafka import TopicPartition as RawTP
from polling import until

from fogverse import Consumer
from fogverse.record import Record
from fogverse.transport.confluent import (
    ConfluentConsumerTransport,
    ConfluentProducerTransport,
    KafkaDeliveryError,
)


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def _produce(bootstrap: str, topic: str, items: list[tuple[Any, bytes, Any]]) -> None:
    """(key, value, headers) items, headers as librdkafka takes them (None = no headers)."""
    p = RawProducer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value, headers in items:
        p.produce(topic, value, key, headers=headers)
    assert p.flush(30) == 0


def _confluent_node(bootstrap: str, src: str, group: str, cls: type = Consumer, **kw: Any) -> Any:
    """A node built as usual: on the real broker, its transports are these."""
    node = cls(src, bootstrap, group, **kw)
    assert isinstance(node.consumer, ConfluentConsumerTransport)
    assert isinstance(node.producer, ConfluentProducerTransport)
    return node


async def _read_all(consumer: Any, n: int, timeout: float = 30.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[Any] = []
    while len(out) < n and loop.time() < deadline:
        out.extend(await consumer.getmany(0.2, 500))
    return out


async def _until(predicate: Any, timeout: float, what: str, tasks: list[Any] = ()) -> None:
    """``until``, but a node task that crashed meanwhile fails the wait at once, with its
    error rather than a timeout."""

    async def holds() -> bool:
        if await predicate():
            return True
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        return False

    await until(holds, timeout, what, interval=0.05)


def _native_threads() -> collections.Counter[str]:
    names: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except FileNotFoundError:  # the thread ended while we looked
            continue
    return names


def test_records_carry_what_a_raw_aiokafka_consumer_reads(kafka_bootstrap, new_topic):
    """Every field of a Record (value, key, headers in order and repeated, topic, partition,
    offset, timestamp) is what another client, aiokafka's own consumer, reads of the same
    record."""
    topic = new_topic(partitions=2)
    items = [
        (str(i).encode() if i % 3 else None, f"v{i}".encode(), [("a", b"1"), ("a", b"2")])
        for i in range(20)
    ]
    items += [(b"k-empty", b"", None), (None, b"no-key", [("n", b"")])]
    _produce(kafka_bootstrap, topic, items)

    async def read(transport: Any) -> list[Any]:
        await transport.start()
        try:
            return await _read_all(transport, len(items))
        finally:
            await transport.stop()

    async def main():
        ours = await read(ConfluentConsumerTransport([topic], kafka_bootstrap, _group()))
        # read_kafka: a raw AIOKafkaConsumer; each ConsumerRecord's fields (headers as a list).
        theirs = await read_kafka(kafka_bootstrap, topic, len(items))
        return ours, theirs

    ours, theirs = asyncio.run(main())

    def fields(r: Any) -> tuple[Any, ...]:
        return (r.partition, r.offset, r.topic, r.timestamp, r.key, r.value, r.headers)

    assert len(ours) == len(theirs) == len(items)
    assert sorted(map(fields, ours)) == sorted(map(fields, theirs))
    assert all(type(r) is Record for r in ours)
    by_value = {r.value: r for r in ours}
    assert by_value[b"v1"].headers == [("a", b"1"), ("a", b"2")]
    assert by_value[b"v3"].key is None
    assert by_value[b""].headers == [] and by_value[b""].key == b"k-empty"
    assert all(isinstance(r.timestamp, int) and r.topic == topic for r in ours)


def test_node_round_trip_keeps_keys_headers_values_and_commits(kafka_bootstrap, new_topic):
    src, out = new_topic(partitions=3), new_topic()
    n = 300
    items = [
        (
            str(i).encode(),
            f"m{i}".encode(),
            [("cam", b"cam-1"), ("frame", str(i).encode()), ("x", b"\x00\xff")],
        )
        for i in range(n)
    ]
    _produce(kafka_bootstrap, src, items)
    group = _group()

    async def main():
        node = _confluent_node(kafka_bootstrap, src, group, producer_topic=out)
        task = asyncio.create_task(node.run())

        async def done():
            return len(await read_kafka(kafka_bootstrap, out, n, timeout=0.5)) >= n

        try:
            await _until(done, 60, f"{n} outputs", [task])
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return await read_kafka(kafka_bootstrap, out, n, timeout=10)

    got = asyncio.run(main())
    assert sorted((r.key, r.value, r.headers) for r in got) == sorted(
        (k, v, h) for k, v, h in items
    )
    # The stop drained and committed everything: the group's offsets are at the end.
    from confluent_kafka import Consumer as RawConsumer

    c = RawConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        committed = c.committed([RawTP(src, p) for p in range(3)], timeout=10)
        ends = [c.get_watermark_offsets(RawTP(src, p), timeout=10)[1] for p in range(3)]
    finally:
        c.close()
    assert [tp.offset for tp in committed] == ends


def test_restart_in_the_same_group_resumes_at_the_committed_offset(kafka_bootstrap, new_topic):
    topic = new_topic()
    n = 50
    _produce(kafka_bootstrap, topic, [(None, f"m{i}".encode(), None) for i in range(n)])
    group = _group()

    async def session(commit_at: int | None, expect: int = n) -> list[Any]:
        c = ConfluentConsumerTransport([topic], kafka_bootstrap, group)
        await c.start()
        try:
            got = await _read_all(c, expect)
            if commit_at is not None:
                await c.commit({(topic, 0): commit_at})
            return got
        finally:
            await c.stop()

    async def main():
        first = await session(commit_at=None)  # read everything, commit nothing
        second = await session(commit_at=17)  # read everything again, commit 17
        third = await session(commit_at=None, expect=n - 17)
        return first, second, third

    first, second, third = asyncio.run(main())
    assert [r.offset for r in first] == list(range(n))
    # Reading is not committing: nothing moved the group's offset.
    assert [r.offset for r in second] == list(range(n))
    assert [r.offset for r in third] == list(range(17, n))


def test_delivery_failures_fail_the_awaitable_and_the_node_dead_letters(kafka_bootstrap, new_topic):
    # The broker refuses records over 2000 bytes on this topic; the client allows 1 MB.
    small_limit = new_topic(config={"max.message.bytes": "2000"})
    src, dlq = new_topic(), new_topic()
    big = b"B" * 10_000

    async def transport_level():
        p = ConfluentProducerTransport(kafka_bootstrap, config={"message.max.bytes": 50_000})
        await p.start()
        try:
            ok = await (await p.send(small_limit, b"fits"))
            assert ok.offset() is not None
            refused = await p.send(small_limit, big)  # refused by the broker
            with pytest.raises(KafkaDeliveryError) as broker_err:
                await refused
            too_big = await p.send(small_limit, b"L" * 60_000)  # refused by librdkafka
            with pytest.raises(KafkaDeliveryError) as local_err:
                await too_big
        finally:
            await p.stop()
        return broker_err.value, local_err.value

    broker_err, local_err = asyncio.run(transport_level())
    assert broker_err.error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert "MSG_SIZE_TOO_LARGE" in str(broker_err) and small_limit in str(broker_err)
    assert local_err.error.code() == KafkaError.MSG_SIZE_TOO_LARGE

    values = [f"s{i}".encode() for i in range(10)] + [big]
    _produce(kafka_bootstrap, src, [(str(i).encode(), v, None) for i, v in enumerate(values)])

    async def node_level():
        node = _confluent_node(
            kafka_bootstrap, src, _group(), producer_topic=small_limit, dead_letter_topic=dlq
        )
        task = asyncio.create_task(node.run())

        async def done():
            outs = await read_kafka(kafka_bootstrap, small_limit, 1, timeout=0.3)
            dead = await read_kafka(kafka_bootstrap, dlq, 1, timeout=0.3)
            seen = {r.value for r in outs if r.value != b"fits"} | {r.value for r in dead}
            return len(seen) >= 11

        try:
            await _until(done, 60, "every input delivered or dead-lettered", [task])
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        outs = await read_kafka(kafka_bootstrap, small_limit, 1, timeout=5)
        dead = await read_kafka(kafka_bootstrap, dlq, 1, timeout=5)
        return outs, dead

    outs, dead = asyncio.run(node_level())
    delivered = {r.value for r in outs}
    assert big not in delivered
    by_value = {r.value: dict(r.headers) for r in dead}
    assert set(values) <= delivered | set(by_value)  # nothing lost
    h = by_value[big]
    assert h["fogverse.error.stage"] == b"send"
    assert h["fogverse.error.type"] == b"KafkaDeliveryError"
    assert b"MSG_SIZE_TOO_LARGE" in h["fogverse.error.message"]


def test_a_batch_the_broker_refuses_as_too_large_fails_only_its_oversized_record(
    kafka_bootstrap, new_topic
):
    """Over the topic's limit but batched with small records: the broker refuses the whole
    batch and librdkafka fails every record of it; the transport sends them again one per
    request, so that only the big one fails and its neighbours are delivered."""
    topic = new_topic(config={"max.message.bytes": 20_000})
    n, big = 60, 31

    async def main() -> tuple[list[Any], list[Any]]:
        # A linger long enough for the big record to share its batch with small ones.
        p = ConfluentProducerTransport(kafka_bootstrap, config={"linger.ms": 50})
        await p.start()
        try:
            acks = []
            for i in range(n):
                value = (b"!" * 30_000) if i == big else (b"%02d" % i + b"." * 1000)
                acks.append(await p.send(topic, value, b"k"))
            results = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), 60)
        finally:
            await p.stop()
        return results, await read_kafka(kafka_bootstrap, topic, n - 1)

    results, records = asyncio.run(main())
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [big], [results[i] for i in failed]
    assert isinstance(results[big], KafkaDeliveryError)
    assert results[big].error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert sorted(r.value[:2] for r in records) == [b"%02d" % i for i in range(n) if i != big]


def test_keyed_records_land_where_kafkas_java_client_puts_them(kafka_bootstrap, new_topic):
    """The murmur2 partitioner: each key's partition is Kafka's Java formula (what aiokafka
    and Kafka Streams use too), not librdkafka's own CRC32 choice."""
    from aiokafka.partitioner import murmur2

    topic = new_topic(partitions=5)
    keys = [b"cam-%d" % i for i in range(40)]

    async def main() -> list[Any]:
        p = ConfluentProducerTransport(kafka_bootstrap)
        await p.start()
        try:
            acks = [await p.send(topic, b"v", key) for key in keys]
            return await asyncio.wait_for(asyncio.gather(*acks), 60)
        finally:
            await p.stop()

    placed = {m.key(): m.partition() for m in asyncio.run(main())}
    java = {key: (murmur2(key) & 0x7FFFFFFF) % 5 for key in keys}
    assert placed == java
    assert len(set(java.values())) > 1  # the keys do spread: the check is not trivial


def test_the_producer_queue_is_bounded_and_send_waits_for_room(kafka_bootstrap, new_topic):
    """librdkafka would queue 1 GiB of unsent records by default; the transport bounds it, so
    a node whose sink is slow is pushed back by send() instead of buffering its backlog."""
    assert ConfluentProducerTransport("h:1").config["queue.buffering.max.kbytes"] == 32 * 1024
    # One record of the largest size the producer may send always fits.
    big = ConfluentProducerTransport("h:1", config={"message.max.bytes": 50_000_000})
    assert big.config["queue.buffering.max.kbytes"] >= 2 * 50_000_000 // 1024
    topic = new_topic()

    async def main() -> tuple[int, int]:
        # A 64 KiB queue and a linger that keeps records queued: the fourth 20 KB record
        # finds no room, send_nowait says so and send() waits until the first batch is out.
        p = ConfluentProducerTransport(
            kafka_bootstrap, config={"queue.buffering.max.kbytes": 64, "linger.ms": 500}
        )
        await p.start()
        try:
            accepted = 0
            while p.send_nowait(topic, b"x" * 20_000, None, None, lambda exc: None):
                accepted += 1
            ack = await asyncio.wait_for(p.send(topic, b"y" * 20_000), 30)
            await asyncio.wait_for(ack, 30)
            await p.flush()
        finally:
            await p.stop()
        return accepted, len(await read_kafka(kafka_bootstrap, topic, accepted + 1))

    accepted, delivered = asyncio.run(main())
    assert 1 <= accepted <= 3, accepted
    assert delivered == accepted + 1


class _Slow(Consumer):
    async def process(self, data):
        await asyncio.sleep(0.002)
        return data


@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param({}, id="eager"),
        pytest.param({"partition.assignment.strategy": "cooperative-sticky"}, id="cooperative"),
        pytest.param({"group.protocol": "consumer"}, id="kip848"),
    ],
)
def test_rebalance_with_a_member_joining_then_leaving_loses_and_repeats_nothing(
    kafka_bootstrap, new_topic, protocol
):
    src, out = new_topic(partitions=4), new_topic()
    n = 1500
    _produce(kafka_bootstrap, src, [(str(i).encode(), f"m{i}".encode(), None) for i in range(n)])
    group = _group()
    events: list[tuple[str, str, frozenset]] = []

    def watch(name: str, node: Any) -> None:
        for kind in ("on_assign", "on_revoke"):
            inner = getattr(node, "_" + kind)

            async def hook(tps, inner=inner, kind=kind):
                events.append((name, kind, frozenset(tps)))
                await inner(tps)

            setattr(node, "_" + kind, hook)

    async def outputs() -> int:
        return len(await read_kafka(kafka_bootstrap, out, n, timeout=0.3))

    def node(name: str) -> Any:
        # Outputs stay in flight a while (linger) and only rebalances and stops commit, so
        # a handover that did not wait for on_revoke's drain and commit repeats inputs.
        member = _confluent_node(
            kafka_bootstrap,
            src,
            group,
            cls=_Slow,
            producer_topic=out,
            consumer_conf=protocol,
            producer_conf={"linger.ms": 100},
        )
        member.commit_interval = 3600.0
        watch(name, member)
        return member

    async def main():
        a, b = node("a"), node("b")
        ta = asyncio.create_task(a.run())
        tb = None
        try:
            await _until(lambda: _ge(outputs, 200), 60, "a's first outputs", [ta])
            tb = asyncio.create_task(b.run())
            await _until(lambda: _b_has_work(events), 60, "b to get partitions", [ta, tb])
            await _until(lambda: _ge(outputs, 800), 60, "progress with two members", [ta, tb])
            b.stop()
            await asyncio.wait_for(tb, 60)
            await _until(lambda: _ge(outputs, n), 90, "every output", [ta])
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, *([tb] if tb else [])), 60)
        return await read_kafka(kafka_bootstrap, out, n, timeout=10, settle=1.0)

    got = asyncio.run(main())
    counts = collections.Counter(r.value for r in got)
    missing = {f"m{i}".encode() for i in range(n)} - set(counts)
    assert not missing, f"lost {len(missing)} messages"
    # Revokes waited for in-flight outputs and committed them before the handover.
    dups = {v: c for v, c in counts.items() if c > 1}
    assert not dups, f"{len(dups)} messages processed twice across the rebalances"
    b_assigned = [e for e in events if e[0] == "b" and e[1] == "on_assign" and e[2]]
    b_revoked = [e for e in events if e[0] == "b" and e[1] == "on_revoke" and e[2]]
    a_revoked = [e for e in events if e[0] == "a" and e[1] == "on_revoke" and e[2]]
    assert b_assigned and b_revoked and a_revoked, events


async def _ge(count: Any, n: int) -> bool:
    return await count() >= n


async def _b_has_work(events: list[tuple[str, str, frozenset]]) -> bool:
    return any(e[0] == "b" and e[1] == "on_assign" and e[2] for e in events)


def test_always_read_last_node_skips_the_backlog_via_seek_in_the_assign_callback(
    kafka_bootstrap, new_topic
):
    src, out = new_topic(), new_topic()
    _produce(kafka_bootstrap, src, [(None, f"old{i}".encode(), None) for i in range(30)])

    async def main():
        node = _confluent_node(
            kafka_bootstrap, src, _group(), producer_topic=out, always_read_last=True
        )
        # One record per batch: without the seek, the backlog's first record is output.
        node.max_poll_records = 1
        task = asyncio.create_task(node.run())
        try:

            async def assigned():
                return bool(node.consumer.assignment())

            await _until(assigned, 60, "an assignment", [task])
            # on_assign's seek_to_end ran inside the assign callback; the next records are new.
            await asyncio.to_thread(_produce, kafka_bootstrap, src, [(None, b"new", None)])

            async def done():
                return len(await read_kafka(kafka_bootstrap, out, 1, timeout=0.3)) >= 1

            await _until(done, 60, "the new record's output", [task])
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return await read_kafka(kafka_bootstrap, out, 1, timeout=5, settle=0.5)

    got = asyncio.run(main())
    assert [r.value for r in got] == [b"new"]


def test_cancelled_getmany_loses_no_records_and_stop_leaves_no_threads(kafka_bootstrap, new_topic):
    topic = new_topic()
    python_before = set(threading.enumerate())
    native_before = _native_threads()

    async def main():
        c = ConfluentConsumerTransport([topic], kafka_bootstrap, _group())
        p = ConfluentProducerTransport(kafka_bootstrap)
        await p.start()
        await c.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not c.assignment():
                assert loop.time() < deadline, "no assignment"
                assert await c.getmany(0.1, 10) == []
            waiting = asyncio.create_task(c.getmany(10.0, 100))
            await asyncio.sleep(0)  # one turn: the task submits its call to the thread
            # Cancel once the consumer thread has taken the call (it is inside consume()).
            await until(c._jobs.empty, 30, "the consumer thread to take the getmany call")
            waiting.cancel()
            acks = [await p.send(topic, f"r{i}".encode()) for i in range(3)]
            await asyncio.gather(*acks)
            # The cancelled call's consume() may have taken them: the next calls return them.
            got = await _read_all(c, 3, timeout=20)
            during = {t.name for t in threading.enumerate()}
        finally:
            await c.stop()
            await p.stop()
        return got, during

    got, during = asyncio.run(main())
    assert [r.value for r in got] == [b"r0", b"r1", b"r2"]
    assert any(name.startswith("fogverse-consumer") for name in during)
    assert set(threading.enumerate()) <= python_before
    # librdkafka's own threads (rdk:main, rdk:broker…) ended with the clients.
    native_after = _native_threads()
    assert {k: v for k, v in native_after.items() if k.startswith("rdk:")} == {
        k: v for k, v in native_before.items() if k.startswith("rdk:")
    }


@pytest.mark.timeout(300)
def test_a_coordinator_that_stops_answering_fails_the_commit_and_lets_the_consumer_stop(
    local_kafka, kafka_bootstrap, new_topic
):
    """A single broker frozen (SIGSTOP: what a link that drops packets looks like) accepts
    connections but answers nothing. librdkafka's synchronous commit then waits for good; it
    held the consumer thread, so the commit, every later getmany() and stop() never returned,
    and a node could not stop. Now the commit fails, getmany() comes back empty and stop()
    returns; the consumer closes in the background once the broker answers again."""
    topic = new_topic()
    _produce(kafka_bootstrap, topic, [(None, b"m%d" % i, None) for i in range(5)])

    async def main() -> None:
        c = ConfluentConsumerTransport([topic], kafka_bootstrap, _group())
        c.commit_timeout = c.close_timeout = 2.0
        await c.start()
        thread = c._thread
        assert thread is not None
        try:
            assert len(await _read_all(c, 5)) == 5
            os.kill(local_kafka.pid, signal.SIGSTOP)
            try:
                with pytest.raises(TimeoutError, match="coordinator"):
                    await asyncio.wait_for(c.commit({(topic, 0): 3}), 60)
                # The thread is still held by that commit.
                assert await asyncio.wait_for(c.getmany(0.1, 10), 60) == []
                await asyncio.wait_for(c.stop(), 60)
            finally:
                os.kill(local_kafka.pid, signal.SIGCONT)
            await until(lambda: not thread.is_alive(), 120, "the consumer to close")
        finally:
            if c._thread is not None:
                await c.stop()

    asyncio.run(main())


def test_serve_group_joins_and_hands_out_nothing(kafka_bootstrap, new_topic):
    """A member that waits for its partitions before it reads (ConsumerStart) gets them
    through serve_group(), and what serve_group() read on the way is read again, once, in
    order, by the first getmany()s: nothing skipped, nothing twice."""
    topic = new_topic(partitions=2)
    n = 200
    _produce(kafka_bootstrap, topic, [(str(i).encode(), b"m%d" % i, None) for i in range(n)])

    async def main() -> tuple[set[Any], list[Any], int]:
        t = ConfluentConsumerTransport([topic], kafka_bootstrap, _group())
        await t.start()
        try:
            # Without serve_group() nothing reads, so no partition ever arrives.
            await asyncio.sleep(0.5)
            assert not t.assignment()
            calls = 0

            async def joined() -> bool:
                nonlocal calls
                calls += 1
                await t.serve_group(0.2)
                return len(t.assignment()) == 2

            await until(joined, 60, "the assignment", interval=0)
            # Keep serving after the join: it reads records and must put each back.
            for _ in range(5):
                await t.serve_group(0.1)
            return t.assignment(), await _read_all(t, n), calls
        finally:
            await t.stop()

    assignment, records, calls = asyncio.run(main())
    assert assignment == {(topic, 0), (topic, 1)}
    assert calls >= 1
    by_partition: dict[int, list[int]] = collections.defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r.offset)
    assert len(records) == n
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets))), "a record was skipped or read twice"


def test_config_defaults_and_aiokafka_style_keys_are_translated():
    c = ConfluentConsumerTransport(
        ["t"], "127.0.0.1:1", "g", client_id="me", config={"enable.auto.commit": True}
    )
    assert c.config["enable.auto.commit"] is False  # commits are always the node's
    assert c.config["auto.offset.reset"] == "earliest" and c.config["client.id"] == "me"
    p = ConfluentProducerTransport("127.0.0.1:1", config={"linger.ms": 20})
    assert p.config["acks"] == "all" and p.config["enable.idempotence"] is True
    assert p.config["linger.ms"] == 20
    with pytest.raises(ValueError, match="group_id"):
        ConfluentConsumerTransport(["t"], "127.0.0.1:1", None)

    # The seed's aiokafka keyword arguments set the librdkafka properties they mean.
    c = ConfluentConsumerTransport(
        ["t"],
        "127.0.0.1:1",
        "g",
        config={"auto_offset_reset": "latest", "session_timeout_ms": 6000, "ssl_context": 1},
    )
    assert c.config["auto.offset.reset"] == "latest" and c.config["session.timeout.ms"] == 6000
    assert not any("_" in k and "." not in k for k in c.config if not k.endswith("_cb"))
    p = ConfluentProducerTransport(
        "127.0.0.1:1", config={"linger_ms": 5, "max_batch_size": 1 << 16, "metadata_max_age_ms": 1}
    )
    assert p.config["linger.ms"] == 5 and p.config["batch.size"] == 1 << 16
    assert p.config["topic.metadata.refresh.interval.ms"] == 1

    async def start(transport: Any) -> None:
        await transport.start()

    # What librdkafka does not know still fails at start, naming the property.
    # (librdkafka 2.16 learnt max.poll.records, which this test once used.)
    bad = ConfluentConsumerTransport(["t"], "127.0.0.1:1", "g", config={"no_such_thing_ms": 5})
    with pytest.raises(KafkaException, match=r"no\.such\.thing\.ms"):
        asyncio.run(start(bad))
    assert bad._thread is None  # nothing was started
