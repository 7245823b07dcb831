"""A node whose output broker cannot be reached: its records wait in the producer until
``message.timeout.ms`` (set to ten minutes here), but a stop and a rebalance each wait
``drain_timeout`` at most for them, and nothing unacknowledged is committed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from backends import committed_kafka, produce_kafka
from confluent_kafka import Consumer as KafkaConsumer
from polling import until

from fogverse import Consumer

N = 20
# Long enough that a flush that waited for it would outlast each test's timeout.
NEVER = {"message.timeout.ms": 600_000}


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """A local address that refuses every connection: bound for the whole test but never
    listening, so no other process's server can take the port meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


class Counting(Consumer):
    drain_timeout = 1.0
    commit_interval = 0.1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen = 0

    def process(self, data: Any) -> Any:
        self.seen += 1
        return data


class Recording:
    """The node's producer, noting the topic of every ``send`` (dead letters go there)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent_to: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        self.sent_to.append(topic)
        return await self.inner.send(topic, *args, **kwargs)


def _node(bootstrap: str, src: str, group: str, output: str) -> Counting:
    node = Counting(
        src,
        bootstrap,
        group,
        producer_topic=f"out-{uuid.uuid4().hex[:8]}",
        producer_servers=output,
        producer_conf=NEVER,
        input_codec="bytes",
    )
    node.producer = Recording(node.producer)  # type: ignore[assignment]
    return node


def _second_member(
    bootstrap: str,
    group: str,
    src: str,
    theirs: set[tuple[str, int]],
    assigned: threading.Event,
    leave: threading.Event,
) -> None:
    """A raw member of ``group`` that polls until ``leave`` is set (run in a thread); the
    partitions it is given go into ``theirs``, and ``assigned`` is set then."""

    def on_assign(_c: Any, parts: Any) -> None:
        if parts:
            theirs.update((p.topic, p.partition) for p in parts)
            assigned.set()

    c = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "session.timeout.ms": 10_000,
        }
    )
    c.subscribe([src], on_assign=on_assign)
    try:
        while not leave.is_set():
            c.poll(0.1)
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_a_stop_waits_drain_timeout_at_most_for_an_unreachable_output(
    kafka_bootstrap, new_topic, refusing_address
):
    src = new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(None, b"m%d" % i, []) for i in range(N)]))
    node = _node(kafka_bootstrap, src, group, refusing_address)

    async def scenario() -> float:
        running = asyncio.create_task(node.run())
        await until(lambda: node.seen >= N, 60, "the node to read every input")
        began = time.monotonic()
        node.stop()
        await running
        return time.monotonic() - began

    stopped_in = asyncio.run(scenario())
    # drain_timeout (1 s) for the outputs, then the producer's close_timeout (10 s) before it
    # fails them; waiting for message.timeout.ms would take ten minutes.
    assert stopped_in < 60, f"the stop took {stopped_in:.0f} s"
    assert committed_kafka(kafka_bootstrap, group, src) is None, "committed unsent outputs"
    # The closing producer gave the outputs up, which says nothing about the inputs: they
    # stay uncommitted instead of being dead-lettered.
    dead_letters = [t for t in node.producer.sent_to if t == f"{src}.dlq"]  # type: ignore[attr-defined]
    assert dead_letters == [], f"{len(dead_letters)} dead letters"


@pytest.mark.timeout(120)
def test_a_rebalance_waits_drain_timeout_at_most_for_an_unreachable_output(
    kafka_bootstrap, new_topic, refusing_address
):
    """A second member joins while the node's outputs cannot be delivered: the node gives
    its partitions up after ``drain_timeout``, not after the transport's 120 s
    ``rebalance_timeout``, and commits none of its inputs."""
    src = new_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(None, b"m%d" % i, []) for i in range(N)]))
    node = _node(kafka_bootstrap, src, group, refusing_address)
    theirs: set[tuple[str, int]] = set()
    assigned = threading.Event()
    leave = threading.Event()

    async def scenario() -> float:
        running = asyncio.create_task(node.run())
        await until(lambda: node.seen >= N, 60, "the node to read every input")
        member = threading.Thread(
            target=_second_member,
            args=(kafka_bootstrap, group, src, theirs, assigned, leave),
        )
        began = time.monotonic()
        member.start()
        try:
            await until(assigned.is_set, 90, "the second member's partitions")
            return time.monotonic() - began
        finally:
            leave.set()
            await asyncio.to_thread(member.join, 30)
            node.stop()
            await running

    handed_over_in = asyncio.run(scenario())
    assert handed_over_in < 60, f"the rebalance took {handed_over_in:.0f} s"
    for partition in (0, 1):
        assert committed_kafka(kafka_bootstrap, group, src, partition) is None, partition


@pytest.mark.timeout(120)
def test_partitions_given_up_at_the_rebalance_timeout_are_forgotten_by_the_node(
    kafka_bootstrap, new_topic, refusing_address
):
    """The node would wait ten minutes for its outputs (``drain_timeout``), the transport
    waits 3 s for ``on_revoke`` (``rebalance_timeout``) and then gives the partitions up:
    the node must let go of their inputs too, or its committer goes on committing offsets of
    partitions another member owns."""
    src = new_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(None, b"m%d" % i, []) for i in range(N)]))
    node = _node(kafka_bootstrap, src, group, refusing_address)
    node.drain_timeout = 600.0
    node.consumer.rebalance_timeout = 3.0  # type: ignore[union-attr]
    theirs: set[tuple[str, int]] = set()
    assigned = threading.Event()
    leave = threading.Event()

    async def scenario() -> int:
        running = asyncio.create_task(node.run())
        await until(lambda: node.seen >= N, 60, "the node to read every input")
        member = threading.Thread(
            target=_second_member,
            args=(kafka_bootstrap, group, src, theirs, assigned, leave),
        )
        member.start()
        try:
            await until(assigned.is_set, 90, "the second member's partitions")
            return node._tracker.pending_in(theirs)
        finally:
            leave.set()
            await asyncio.to_thread(member.join, 30)
            node.drain_timeout = 1.0  # the stop need not wait ten minutes either
            node.stop()
            await running

    still_tracked = asyncio.run(scenario())
    assert theirs
    assert still_tracked == 0, f"{still_tracked} inputs of the other member's partitions"
    for partition in (0, 1):
        assert committed_kafka(kafka_bootstrap, group, src, partition) is None, partition
