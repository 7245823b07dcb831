"""Dynamic partitioning on the real broker: joining consumers grow the topic under the lock.

The consumers of one test run as asyncio tasks on one event loop. That is deliberate: a join
that blocked its loop while waiting for its assignment (the original's defect) would also stall
the members it waits for, and these tests would time out instead of passing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
from backends import produce_kafka, read_kafka
from polling import until

import fogverse.partitions
from fogverse import Consumer, ParallelConsumer, Processor
from fogverse.autoscale.lock import LockClient, LockServer
from fogverse.autoscale.lock.server import TOKEN_ENV
from fogverse.partitions import (
    DEFAULT_METADATA_MAX_AGE_MS,
    LOCK_ADDRESS_ENV,
    METADATA_MAX_AGE_ENV,
    ConsumerStart,
    JoinResult,
    PartitionAdminError,
    lock_name,
    refresh_metadata_often,
)
from fogverse.transport.confluent import ConfluentConsumerTransport

# The Processor below travels to worker processes by value, as a user's script's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

METADATA_MS = 1000
NODES = str(Path(__file__).with_name("pipeline_nodes.py"))
# Quick heartbeats: an existing member learns of a rebalance within a fraction of a second.
FAST_GROUP = {"heartbeat_interval_ms": 250, "session_timeout_ms": 6000}


# ---- helpers ------------------------------------------------------------------------------


async def partition_count(admin: Any, topic: str) -> int:
    """Partitions of ``topic``, 0 if it does not exist (never auto-creates it, unlike a
    metadata request from a producer-type client such as the AdminClient)."""
    from confluent_kafka import KafkaException, TopicCollection

    future = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic]
    try:
        return len((await asyncio.wrap_future(future)).partitions)
    except KafkaException:
        return 0


def consumer_start(admin: Any, server: LockServer, **overrides: Any) -> ConsumerStart:
    options: dict[str, Any] = {
        "sleep_time": 0.2,
        "master_host": "127.0.0.1",
        "master_port": server.port,
        "initial_total_partition": 1,
        "metadata_max_age_ms": METADATA_MS,
        "lock_lease": 5.0,
        "lock_timeout": 60.0,
        "assignment_timeout": 45.0,
    }
    options.update(overrides)
    return ConsumerStart(admin, **options)


class Recorder(Consumer):
    """Counts what it reads; joins through ConsumerStart exactly as the seed's README does."""

    input_codec = "bytes"

    def __init__(self, name: str, topic: str, group: str, servers: str, start: ConsumerStart):
        self.name = name
        self.consumer_start = start
        self.received: list[bytes] = []
        self.join: JoinResult | None = None
        super().__init__(topic, servers, group, client_id=name, consumer_conf=dict(FAST_GROUP))

    async def start_consumer(self) -> None:
        self.join = await self.consumer_start.start_with_distributed_lock(
            self.consumer,
            self.consumer_topic,
            self.group_id,
            str(uuid.uuid4()),
        )

    def process(self, data: bytes) -> None:
        self.received.append(data)
        return None

    def owned(self) -> set[tuple[str, int]]:
        return self.consumer.assignment() if self.join is not None else set()


class Upper(Processor):
    def process(self, data: bytes) -> bytes:
        return bytes(data).upper()


class ParallelRecorder(ParallelConsumer):
    """A ParallelConsumer joining the seed's way; records the workers' results."""

    input_codec = "bytes"

    def __init__(self, name: str, topic: str, group: str, servers: str, start: ConsumerStart):
        self.name = name
        self.consumer_start = start
        self.results: list[bytes] = []
        self.join: JoinResult | None = None
        super().__init__(topic, servers, group, client_id=name, consumer_conf=dict(FAST_GROUP))

    async def start_consumer(self) -> None:
        self.join = await self.consumer_start.start_with_distributed_lock(
            self.consumer, self.consumer_topic, self.group_id, str(uuid.uuid4())
        )

    async def send(self, data: Any, *args: Any, **kwargs: Any) -> None:
        self.results.append(bytes(data))

    def owned(self) -> set[tuple[str, int]]:
        return self.consumer.assignment() if self.join is not None else set()


class Stream:
    """Sends ``m0, m1, ...`` without keys until stopped; keeps every acknowledged value."""

    def __init__(self, servers: str, topic: str, interval: float = 0.004) -> None:
        self.servers, self.topic, self.interval = servers, topic, interval
        self.acked: list[bytes] = []
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[bytes]:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 60)
        return self.acked

    def _settled(self, future: asyncio.Future[Any], value: bytes) -> None:
        if future.exception() is None:
            self.acked.append(value)
        else:
            self.failed += 1

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            **refresh_metadata_often(
                {"bootstrap_servers": self.servers, "acks": "all", "linger_ms": 2}, METADATA_MS
            )
        )
        await producer.start()
        pending: list[asyncio.Future[Any]] = []
        try:
            i = 0
            while not self._stop.is_set():
                value = f"m{i}".encode()
                fut = await producer.send(self.topic, value)
                fut.add_done_callback(lambda f, v=value: self._settled(f, v))
                pending.append(fut)
                i += 1
                await asyncio.sleep(self.interval)
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await producer.stop()


async def measure_stalls(stalls: list[float], tick: float = 0.01) -> None:
    """Record how much later than asked each tick of the event loop came."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(tick)
        stalls.append(loop.time() - before - tick)


def launch(node: Any, tasks: list[asyncio.Task[None]], *args: Any) -> None:
    tasks.append(asyncio.create_task(node.run(*args), name=getattr(node, "name", "node")))


def check_alive(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            task.result()
            raise AssertionError(f"{task.get_name()} stopped early")


def keep_reading(transport: ConfluentConsumerTransport, readers: list[asyncio.Task[None]]) -> None:
    """A member that joined goes on reading, as its node would: librdkafka takes part in the
    group's rebalances (the next member's join) only inside a read."""

    async def read() -> None:
        while True:
            await transport.getmany(0.1, 100)

    readers.append(asyncio.create_task(read()))


async def stop_reading(readers: list[asyncio.Task[None]]) -> None:
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


def tally(sent: list[bytes], received: list[bytes]) -> tuple[int, int]:
    """(lost, duplicates) of ``received`` against ``sent``."""
    counts = collections.Counter(received)
    lost = len(set(sent) - set(counts))
    duplicates = sum(c - 1 for c in counts.values())
    return lost, duplicates


@pytest.fixture
def topic_name(kafka_admin: Any) -> Iterator[Callable[[], str]]:
    """Names of topics that do not exist yet (ConsumerStart creates them); deleted afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append(f"dyn-{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield make
    existing = [n for n in names if n in kafka_admin.list_topics(timeout=10).topics]
    if existing:
        for future in kafka_admin.delete_topics(existing, operation_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)


@pytest.fixture
def lock_server() -> Iterator[Callable[[], Awaitable[LockServer]]]:
    """``await lock_server()``: an in-process lock service on a free port, stopped after."""
    started: list[LockServer] = []

    async def make() -> LockServer:
        server = LockServer("127.0.0.1", 0)
        await server.start()
        started.append(server)
        return server

    yield make
    assert all(s._server is None for s in started), "a test left its lock server running"


async def lock_is_free(
    server: LockServer, topic: str, group: str, released_within: float = 0.0
) -> bool:
    """Whether the topic's lock is free, waiting up to ``released_within`` seconds for a
    holder that is between seeing its assignment and releasing. Keep that well under the
    lease (5 s here), so that an expired lease never passes for a release."""
    deadline = asyncio.get_running_loop().time() + released_within
    while server.stats()["held"]:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    async with LockClient("127.0.0.1", server.port) as client:
        grant = await client.acquire(lock_name(topic, group), lease=1, timeout=0)
        await client.release(grant)
    return True


# ---- what must be shown ---------------------------------------------------------------------


# On confluent-kafka the joiner must read to be served by the group (serve_group()): without
# it no member ever got a partition.
def test_consumers_join_one_by_one_while_a_producer_runs(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        server = await lock_server()
        stream = Stream(kafka_bootstrap, topic)
        nodes: list[Recorder] = []
        tasks: list[asyncio.Task[None]] = []
        stalls: list[float] = []
        ticker = asyncio.create_task(measure_stalls(stalls))
        try:
            for i in range(3):
                node = Recorder(
                    f"c{i + 1}", topic, group, kafka_bootstrap, consumer_start(kafka_admin, server)
                )
                nodes.append(node)
                launch(node, tasks)
                if i == 0:
                    # The first consumer creates the topic; the producer starts once it exists.
                    await until(lambda n=node: n.join is not None, 60, "c1 to join")
                    stream.start()
                await until(lambda n=node: n.join is not None, 60, f"{node.name} to join")
                check_alive(tasks)
                assert node.join.members_before == i
                assert node.join.partitions[topic] >= i + 1
                seen = len(node.received)
                await until(lambda n=node, s=seen: len(n.received) > s, 60, f"{node.name} reads")
            await until(lambda: all(n.owned() for n in nodes), 60, "every consumer to own one")
            partitions = await partition_count(kafka_admin, topic)
            assert partitions >= 3
            # Every consumer reads from its own partitions while the stream goes on.
            marks = [len(n.received) for n in nodes]
            await until(
                lambda: all(len(n.received) > m for n, m in zip(nodes, marks, strict=True)),
                60,
                "every consumer to keep reading",
            )
            sent = await stream.stop()
            assert stream.failed == 0, "the producer could not send everything"
            everything = set(sent)
            await until(
                lambda: everything <= {v for n in nodes for v in n.received},
                90,
                "every produced message to be consumed",
            )
            check_alive(tasks)
            assert await lock_is_free(server, topic, group, released_within=2.0)
            owned = {n.name: sorted(p for _, p in n.owned()) for n in nodes}
        finally:
            ticker.cancel()
            for node in nodes:
                node.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await server.stop()
        for task in tasks:
            assert task.exception() is None, task.exception()
        received = [v for n in nodes for v in n.received]
        lost, duplicates = tally(sent, received)
        print(
            f"\none-by-one: {partitions} partitions, owned {owned}; sent {len(sent)}, "
            f"received {len(received)} ({', '.join(f'{n.name} {len(n.received)}' for n in nodes)})"
            f", lost {lost}, duplicates {duplicates}; longest event-loop stall "
            f"{max(stalls) * 1000:.0f} ms"
        )
        assert lost == 0

    asyncio.run(scenario())


def test_three_consumers_joining_at_once_grow_exactly_enough(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"
    n_messages = 300

    async def scenario() -> None:
        server = await lock_server()
        nodes = [
            Recorder(
                f"c{i + 1}", topic, group, kafka_bootstrap, consumer_start(kafka_admin, server)
            )
            for i in range(3)
        ]
        tasks: list[asyncio.Task[None]] = []
        try:
            for node in nodes:
                launch(node, tasks)
            await until(lambda: all(n.join is not None for n in nodes), 90, "all three joins")
            check_alive(tasks)
            # The lock made them count one after another: 0, 1 and 2 members before them.
            assert sorted(n.join.members_before for n in nodes) == [0, 1, 2]
            assert await partition_count(kafka_admin, topic) == 3
            assert await lock_is_free(server, topic, group)
            # Joiners close their lock connections once joined (the server sees it shortly).
            await until(lambda: server.stats()["connections"] == 0, 10, "lock connections closed")
            await until(lambda: all(n.owned() for n in nodes), 60, "each to own a partition")
            await produce_kafka(
                kafka_bootstrap,
                topic,
                [(None, f"m{i}".encode(), []) for i in range(n_messages)],
            )
            sent = {f"m{i}".encode() for i in range(n_messages)}
            await until(lambda: sent <= {v for n in nodes for v in n.received}, 60, "all messages")
        finally:
            for node in nodes:
                node.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await server.stop()
        for task in tasks:
            assert task.exception() is None, task.exception()
        lost, duplicates = tally(sorted(sent), [v for n in nodes for v in n.received])
        print(
            f"\nat once: 3 partitions; lock waits "
            f"{sorted(round(n.join.lock_wait, 1) for n in nodes)} s; "
            f"lost {lost}, duplicates {duplicates}"
        )
        assert lost == 0

    asyncio.run(scenario())


_FREEZING_JOINER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from fogverse.partitions import ConsumerStart

    bootstrap, port, topic, group, lease, mode = sys.argv[1:7]

    class Freezes:
        '''A consumer whose start never finishes: its joiner keeps the lock as long as it can.'''
        on_assign = on_revoke = None

        async def start(self):
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            await asyncio.Event().wait()

        async def stop(self):
            pass

        def assignment(self):
            return set()

    async def main():
        start = ConsumerStart(
            bootstrap, master_host="127.0.0.1", master_port=int(port), lock_lease=float(lease)
        )
        await start.start_with_distributed_lock(Freezes(), topic, group, "frozen")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("crash", ["stop", "kill"])
def test_a_joiner_that_freezes_or_dies_holding_the_lock_blocks_only_until_its_lease_ends(
    kafka_bootstrap, kafka_admin, topic_name, lock_server, crash
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"
    lease = 2.0

    async def scenario() -> None:
        server = await lock_server()
        frozen = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _FREEZING_JOINER,
            kafka_bootstrap,
            str(server.port),
            topic,
            group,
            str(lease),
            crash,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        transport = ConfluentConsumerTransport([topic], kafka_bootstrap, group, config=FAST_GROUP)
        try:
            await until(lambda: server.stats()["held"] == 1, 60, "the joiner to take the lock")
            if crash == "stop":
                await until(
                    lambda: psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED,
                    30,
                    "the joiner to freeze",
                )
            else:
                frozen.kill()
            start = consumer_start(kafka_admin, server, lock_timeout=30.0)
            result = await start.start_with_distributed_lock(transport, topic, group, "next")
            assert result.assignment, "the next joiner got no partition"
            if crash == "stop":
                # Still frozen, still connected: only the lease's expiry let the next one in.
                assert psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED
                await until(lambda: server.stats()["connections"] == 1, 10, "our client gone")
                assert psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED
            assert await lock_is_free(server, topic, group)
            print(f"\n{crash}: next joiner waited {result.lock_wait:.1f} s (lease {lease:g} s)")
        finally:
            if frozen.returncode is None:
                frozen.kill()
            stderr = (await asyncio.wait_for(frozen.communicate(), 10))[1]
            if transport.consumer is not None:
                await transport.stop()
            await server.stop()
        assert frozen.returncode == -signal.SIGKILL, stderr.decode()[-2000:]

    asyncio.run(scenario())


def _failed_future(exc: BaseException) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_exception(exc)
    return future


class RefusesGrowth:
    """The real AdminClient, except that growing partitions fails ``failures`` times."""

    def __init__(self, real: Any, error: Any, failures: int) -> None:
        self._real, self._error, self.failures = real, error, failures
        self.grow_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_partitions(self, new_partitions: list[Any], **kwargs: Any) -> dict[str, Any]:
        from confluent_kafka import KafkaException

        self.grow_calls += 1
        if self.failures > 0:
            self.failures -= 1
            return {p.topic: _failed_future(KafkaException(self._error)) for p in new_partitions}
        return self._real.create_partitions(new_partitions, **kwargs)


def test_an_admin_error_releases_the_lock_and_raises_a_clear_error(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    from confluent_kafka import KafkaError

    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        server = await lock_server()
        transports: list[ConfluentConsumerTransport] = []
        readers: list[asyncio.Task[None]] = []

        def transport() -> ConfluentConsumerTransport:
            transports.append(ConfluentConsumerTransport([topic], kafka_bootstrap, group))
            return transports[-1]

        try:
            first = consumer_start(kafka_admin, server)
            await first.start_with_distributed_lock(transport(), topic, group, "first")
            keep_reading(transports[0], readers)

            refused = KafkaError(KafkaError.POLICY_VIOLATION, "injected: growth refused")
            admin = RefusesGrowth(kafka_admin, refused, failures=99)
            second = transport()
            with pytest.raises(PartitionAdminError) as caught:
                await consumer_start(admin, server).start_with_distributed_lock(
                    second, topic, group, "second"
                )
            message = str(caught.value)
            assert topic in message and group in message and "growth refused" in message
            assert caught.value.code == "POLICY_VIOLATION"
            assert admin.grow_calls == 1, "a non-transient error was retried"
            assert second.consumer is None, "the consumer joined although growth failed"
            assert await lock_is_free(server, topic, group)
            assert await partition_count(kafka_admin, topic) == 1

            # A transient error is retried (after sleep_time) and the join goes through.
            flaky = KafkaError(KafkaError.REQUEST_TIMED_OUT, "injected: slow", retriable=True)
            admin = RefusesGrowth(kafka_admin, flaky, failures=1)
            result = await consumer_start(admin, server).start_with_distributed_lock(
                transport(), topic, group, "third"
            )
            assert admin.grow_calls == 2
            assert result.partitions_before == {topic: 1}
            assert result.partitions == {topic: 2}
            assert await lock_is_free(server, topic, group)
        finally:
            await stop_reading(readers)
            for t in transports:
                if t.consumer is not None:
                    await t.stop()
            await server.stop()

    asyncio.run(scenario())


def test_parallel_consumers_join_and_lose_nothing(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"
    n_before, n_after = 200, 200

    async def scenario() -> None:
        server = await lock_server()
        nodes = [
            ParallelRecorder(
                f"p{i + 1}", topic, group, kafka_bootstrap, consumer_start(kafka_admin, server)
            )
            for i in range(2)
        ]
        tasks: list[asyncio.Task[None]] = []
        try:
            launch(nodes[0], tasks, 1, 4, Upper())
            await until(lambda: nodes[0].join is not None, 60, "p1 to join")
            await produce_kafka(
                kafka_bootstrap, topic, [(None, f"m{i}".encode(), []) for i in range(n_before)]
            )
            launch(nodes[1], tasks, 1, 4, Upper())
            await until(lambda: nodes[1].join is not None, 60, "p2 to join")
            check_alive(tasks)
            assert nodes[1].join.partitions == {topic: 2}
            await until(lambda: all(n.owned() for n in nodes), 60, "each to own a partition")
            await produce_kafka(
                kafka_bootstrap,
                topic,
                [(None, f"m{i}".encode(), []) for i in range(n_before, n_before + n_after)],
            )
            expected = {f"M{i}".encode() for i in range(n_before + n_after)}
            await until(
                lambda: expected <= {v for n in nodes for v in n.results}, 90, "all results"
            )
            assert all(n.results for n in nodes), "a parallel consumer processed nothing"
        finally:
            for node in nodes:
                node.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await server.stop()
        for task in tasks:
            assert task.exception() is None, task.exception()
        results = [v for n in nodes for v in n.results]
        lost, duplicates = tally(sorted(expected), results)
        print(
            f"\nparallel: {', '.join(f'{n.name} {len(n.results)}' for n in nodes)}; "
            f"lost {lost}, duplicates {duplicates}"
        )
        assert lost == 0

    asyncio.run(scenario())


def test_the_consumer_option_joins_without_overriding_start_consumer(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"

    class Plain(Consumer):
        input_codec = "bytes"

        def process(self, data):
            return None

    async def scenario() -> None:
        server = await lock_server()
        nodes = []
        for _ in range(2):
            node = Plain(topic, kafka_bootstrap, group, consumer_conf=dict(FAST_GROUP))
            node.dynamic_partitions = consumer_start(kafka_admin, server)
            nodes.append(node)
        tasks: list[asyncio.Task[None]] = []
        try:
            for node in nodes:
                launch(node, tasks)
            await until(
                lambda: all(
                    n.consumer.consumer is not None and n.consumer.assignment() for n in nodes
                ),
                90,
                "both to own a partition",
            )
            assert await partition_count(kafka_admin, topic) == 2
            for node in nodes:
                assert node.consumer.config["topic.metadata.refresh.interval.ms"] == METADATA_MS
            assert await lock_is_free(server, topic, group, released_within=2.0)
        finally:
            for node in nodes:
                node.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await server.stop()
        for task in tasks:
            assert task.exception() is None, task.exception()

    asyncio.run(scenario())


def test_partitions_only_grow_and_a_raw_aiokafka_consumer_joins_too(
    kafka_bootstrap, kafka_admin, new_topic, lock_server
):
    from aiokafka import AIOKafkaConsumer

    topic, group = new_topic(partitions=4), f"g-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        server = await lock_server()
        admin = RefusesGrowth(kafka_admin, None, failures=99)
        consumers: list[Any] = [
            ConfluentConsumerTransport([topic], kafka_bootstrap, group),
            # The seed passed aiokafka's consumer itself; it is subscribed by the join.
            AIOKafkaConsumer(
                bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
            ),
        ]
        started: list[Any] = []
        readers: list[asyncio.Task[None]] = []
        try:
            for i, consumer in enumerate(consumers):
                started.append(consumer)
                result = await consumer_start(admin, server).start_with_distributed_lock(
                    consumer, topic, group, f"c{i}"
                )
                assert result.members_before == i
                assert result.partitions_before == result.partitions == {topic: 4}
                assert result.assignment and {t for t, _ in result.assignment} == {topic}
                if i == 0:
                    keep_reading(consumer, readers)
        finally:
            await stop_reading(readers)
            for consumer in started:
                await consumer.stop()
            await server.stop()
        assert admin.grow_calls == 0
        assert await partition_count(kafka_admin, topic) == 4

    asyncio.run(scenario())


class NeverAssigned:
    """A consumer that starts but never gets a partition (the group's leader never looks)."""

    on_assign = on_revoke = None

    def __init__(self) -> None:
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[tuple[str, int]]:
        return set()


def test_a_join_without_an_assignment_never_keeps_the_lock(
    kafka_bootstrap, kafka_admin, topic_name, lock_server
):
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        server = await lock_server()
        try:
            # assignment_timeout runs out: the lock is released, the consumer stays started.
            consumer = NeverAssigned()
            start = consumer_start(kafka_admin, server, assignment_timeout=0.5)
            result = await start.start_with_distributed_lock(consumer, topic, group, "idle")
            assert result.assignment == frozenset()
            assert consumer.started and not consumer.stopped
            assert await lock_is_free(server, topic, group)

            # Cancelled while waiting (the node is stopped): lock released, consumer stopped.
            consumer = NeverAssigned()
            start = consumer_start(kafka_admin, server, assignment_timeout=None)
            join = asyncio.create_task(
                start.start_with_distributed_lock(consumer, topic, group, "cancelled")
            )
            await until(lambda: consumer.started, 30, "the consumer to start")
            assert server.stats()["held"] == 1
            join.cancel()
            with pytest.raises(asyncio.CancelledError):
                await join
            assert consumer.stopped
            assert await lock_is_free(server, topic, group)
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_node_whose_join_fails_stops_with_the_join_error(kafka_bootstrap, lock_server):
    class Joiner(Consumer):
        async def start_consumer(self) -> None:
            await self.consumer_start.start_with_distributed_lock(
                self.consumer, self.consumer_topic, self.group_id, "bad"
            )

    async def scenario() -> None:
        server = await lock_server()
        try:
            node = Joiner("not a valid topic!", kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
            node.consumer_start = ConsumerStart(
                kafka_bootstrap, master_host="127.0.0.1", master_port=server.port
            )
            with pytest.raises(PartitionAdminError, match="not a valid topic"):
                await asyncio.wait_for(node.run(), 60)
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_nodes_started_with_the_environment_join_dynamically(
    kafka_bootstrap, kafka_admin, topic_name, new_topic, lock_server
):
    """What a deploy script (the auto-scaler's LOCAL provider) does: start the node as a
    process with FOGVERSE_DYNAMIC_PARTITIONS in its environment."""
    src, out, group = topic_name(), new_topic(), f"g-{uuid.uuid4().hex[:8]}"
    n = 300

    async def scenario() -> None:
        server = await lock_server()
        env = {
            **os.environ,
            "CONSUMER_TOPIC": src,
            "PRODUCER_TOPIC": out,
            "GROUP_ID": group,
            "CONSUMER_SERVERS": kafka_bootstrap,
            "PRODUCER_SERVERS": kafka_bootstrap,
            "ECHO_DELAY": "0",
            LOCK_ADDRESS_ENV: f"127.0.0.1:{server.port}",
            METADATA_MAX_AGE_ENV: str(METADATA_MS),
        }
        procs = []

        async def has_partitions(k: int) -> bool:
            return await partition_count(kafka_admin, src) >= k

        try:
            for k in (1, 2):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "fogverse",
                        "run",
                        f"{NODES}:SlowEcho",
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                await until(lambda k=k: has_partitions(k), 90, f"{k} partition(s)", interval=0.05)
            await produce_kafka(
                kafka_bootstrap, src, [(None, f"m{i}".encode(), []) for i in range(n)]
            )

            async def everything() -> bool:
                got = await read_kafka(kafka_bootstrap, out, n, timeout=1.0)
                return {r.value for r in got} >= {f"m{i}".encode() for i in range(n)}

            await until(everything, 90, "every message echoed", interval=0.05)
            assert await partition_count(kafka_admin, src) == 2
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                await asyncio.wait_for(proc.wait(), 60)
            await server.stop()

    asyncio.run(scenario())


_ENV_ECHO = textwrap.dedent(
    """
    import uuid
    from fogverse import Consumer, run
    from fogverse.partitions import ConsumerStart

    class Echo(Consumer):
        input_codec = "bytes"

        async def start_consumer(self):
            start = ConsumerStart.from_env(self.consumer_servers)
            await start.start_with_distributed_lock(
                self.consumer, self.consumer_topic, self.group_id, str(uuid.uuid4())
            )

        def process(self, data):
            return data

    run(Echo(consumer_conf={"heartbeat_interval_ms": 250, "session_timeout_ms": 6000}))
    """
)


def test_an_instance_the_local_provider_starts_joins_and_gets_work(
    kafka_bootstrap, kafka_admin, topic_name, new_topic, lock_server
):
    from fogverse.autoscale.deploy import DeployConfig
    from fogverse.autoscale.deploy.local import LocalDeployer, LocalService

    topic, out, group = topic_name(), new_topic(), f"g-{uuid.uuid4().hex[:8]}"
    before, after = 100, 300

    async def scenario() -> None:
        server = await lock_server()
        first = Recorder("c1", topic, group, kafka_bootstrap, consumer_start(kafka_admin, server))
        deployer = LocalDeployer(
            {
                "echo": LocalService(
                    [sys.executable, "-c", _ENV_ECHO],
                    env={
                        "CONSUMER_SERVERS": kafka_bootstrap,
                        "PRODUCER_SERVERS": kafka_bootstrap,
                        LOCK_ADDRESS_ENV: f"127.0.0.1:{server.port}",
                        METADATA_MAX_AGE_ENV: str(METADATA_MS),
                    },
                    output="devnull",
                    stop_timeout=30,
                )
            }
        )
        tasks: list[asyncio.Task[None]] = []
        handle = None
        try:
            launch(first, tasks)
            await until(lambda: first.join is not None, 60, "c1 to join")
            await produce_kafka(
                kafka_bootstrap, topic, [(None, f"m{i}".encode(), []) for i in range(before)]
            )
            config = DeployConfig(
                provider="LOCAL",
                service_name="echo",
                instance_id="echo-1",
                source_topic=topic,
                target_topic=out,
                group_id=group,
            )
            handle = await asyncio.to_thread(deployer, logging.getLogger("deploy"), config)
            assert handle is not None

            async def grown() -> bool:
                return await partition_count(kafka_admin, topic) == 2

            await until(grown, 90, "the instance to grow the topic", interval=0.05)
            await until(lambda: len(first.owned()) == 1, 60, "c1 to hand a partition over")
            check_alive(tasks)
            await produce_kafka(
                kafka_bootstrap,
                topic,
                [(None, f"m{i}".encode(), []) for i in range(before, before + after)],
            )
            sent = {f"m{i}".encode() for i in range(before + after)}
            echoed: list[bytes] = []
            more = [before + after]

            async def everything() -> bool:
                echoed[:] = [r.value for r in await read_kafka(kafka_bootstrap, out, 1, 0.5)]
                if not echoed and sent <= set(first.received):
                    # c1 got it all while the instance was still slow to fetch (a loaded
                    # machine): send more, until the instance has had some work too.
                    batch = [(None, f"m{i}".encode(), []) for i in range(more[0], more[0] + 20)]
                    await produce_kafka(kafka_bootstrap, topic, batch)
                    sent.update(value for _, value, _ in batch)
                    more[0] += len(batch)
                    return False
                return bool(echoed) and sent <= set(first.received) | set(echoed)

            await until(
                everything,
                90,
                "every message consumed by c1 or the instance, and some by the instance",
                interval=0.2,
            )
        finally:
            status = await asyncio.to_thread(handle.stop) if handle is not None else None
            first.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await server.stop()
        for task in tasks:
            assert task.exception() is None, task.exception()
        assert status == 0, "the instance did not drain and exit cleanly on SIGTERM"
        assert echoed, "the instance started by the LOCAL provider got no work"
        lost, duplicates = tally(sorted(sent), first.received + echoed)
        print(
            f"\nLOCAL: c1 {len(first.received)}, instance {len(echoed)}; "
            f"lost {lost}, duplicates {duplicates}"
        )
        assert lost == 0

    asyncio.run(scenario())


# ---- without a broker -----------------------------------------------------------------------


def test_lock_names_are_per_topic_and_group_and_fit_the_protocol():
    assert lock_name("frames", "detectors") == "partition:frames:detectors"
    assert lock_name("frames", "a") != lock_name("frames", "b")
    long = lock_name("t" * 249, "g" * 300)
    assert len(long) <= 256 and long.startswith("partition:sha256:")
    assert long != lock_name("t" * 249, "g" * 301)


def test_metadata_age_is_capped_never_raised():
    assert refresh_metadata_often({}) == {"metadata_max_age_ms": DEFAULT_METADATA_MAX_AGE_MS}
    assert DEFAULT_METADATA_MAX_AGE_MS <= 10_000
    assert refresh_metadata_often({"metadata_max_age_ms": 300_000}, 2000) == {
        "metadata_max_age_ms": 2000
    }
    assert refresh_metadata_often({"metadata_max_age_ms": 500}, 2000) == {
        "metadata_max_age_ms": 500
    }
    transport = ConfluentConsumerTransport(["t"], "localhost:1", "g")
    ConsumerStart("localhost:1", metadata_max_age_ms=1500).refresh_metadata(transport)
    assert transport.config["topic.metadata.refresh.interval.ms"] == 1500
    # A partition nobody has committed is read from its start: nothing written before the
    # new owner saw it is skipped.
    assert transport.config["auto.offset.reset"] == "earliest"


def test_from_env():
    assert ConsumerStart.from_env("b:9092", {}) is None
    start = ConsumerStart.from_env(
        "b:9092",
        {
            LOCK_ADDRESS_ENV: "master:4300",
            "FOGVERSE_INITIAL_PARTITIONS": "3",
            "FOGVERSE_METADATA_MAX_AGE_MS": "2000",
            "FOGVERSE_LOCK_TOKEN": "s3cret",
        },
    )
    assert start is not None
    assert (start.master_host, start.master_port) == ("master", 4300)
    assert start.initial_total_partition == 3 and start.metadata_max_age_ms == 2000
    assert start._token == "s3cret"
    assert fogverse.partitions._TOKEN_ENV == TOKEN_ENV
    with pytest.raises(ValueError, match="host:port"):
        ConsumerStart.from_env("b:9092", {LOCK_ADDRESS_ENV: "nohost"})
    # Not accepted here to fail each join later with a bare OverflowError from the socket.
    with pytest.raises(ValueError, match="host:port"):
        ConsumerStart.from_env("b:9092", {LOCK_ADDRESS_ENV: "master:99999"})
    with pytest.raises(ValueError, match="FOGVERSE_INITIAL_PARTITIONS must be an integer"):
        ConsumerStart.from_env(
            "b:9092", {LOCK_ADDRESS_ENV: "master:4300", "FOGVERSE_INITIAL_PARTITIONS": "four"}
        )


def test_the_admin_may_be_an_admin_client_or_a_kafka_admin():
    from confluent_kafka.admin import AdminClient

    from fogverse.admin import KafkaAdmin

    # (Bootstrap servers as a string are what the subprocess tests above use.)
    quiet = {"log_level": 0}
    ours = KafkaAdmin("127.0.0.1:1", quiet)
    assert ConsumerStart(ours)._client() is ours.client
    theirs = AdminClient({"bootstrap.servers": "127.0.0.1:1", **quiet})
    assert ConsumerStart(theirs)._client() is theirs


def test_bad_arguments_are_refused_before_anything_happens():
    with pytest.raises(ValueError):
        ConsumerStart("b:9092", initial_total_partition=0)
    with pytest.raises(ValueError, match="master_port must be a TCP port"):
        ConsumerStart("b:9092", master_port=70000)
    start = ConsumerStart("b:9092")

    async def call(topic: Any, group: str) -> None:
        await start.start_with_distributed_lock(object(), topic, group, "x")

    with pytest.raises(ValueError, match="topic"):
        asyncio.run(call([], "g"))
    with pytest.raises(ValueError, match="group"):
        asyncio.run(call("t", ""))


@pytest.mark.timeout(120)
def test_kafka_admin_grow_partitions_raced_by_another_grower_is_a_success(
    kafka_bootstrap, kafka_admin, new_topic
):
    from confluent_kafka.admin import NewPartitions

    from fogverse.admin import KafkaAdmin

    topic = new_topic(partitions=1)

    async def scenario() -> None:
        admin = KafkaAdmin(kafka_bootstrap)
        counted = admin.partitions
        # (the other grower's target, ours): the other lands between our count and our request.
        for theirs, ours in ((3, 3), (5, 4)):

            async def then_raced(name: str, theirs: int = theirs) -> int:
                count = await counted(name)
                del admin.partitions  # once: later counts are the real ones
                grown = kafka_admin.create_partitions(
                    [NewPartitions(name, theirs)], operation_timeout=30
                )[name]
                await asyncio.wrap_future(grown)
                return count

            admin.partitions = then_raced  # type: ignore[method-assign]
            await admin.grow_partitions(topic, ours)
            assert await partition_count(kafka_admin, topic) == theirs

    asyncio.run(scenario())
