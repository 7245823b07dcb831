"""aiokafka's producer can lose its sender task to an unexpected error (a KeyError in its
client while a broker crashed: aio-libs/aiokafka#907). What it was sending is then never
settled and every later send fails. FogVerse's aiokafka transport replaces the client and
sends every unacknowledged record again; where it cannot, it fails loudly. Either way
nothing waits for ever and nothing is lost."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.producer.sender import Sender
from backends import produce_kafka, read_kafka

from fogverse import Consumer
from fogverse.node.loop import FatalDeliveryError
from fogverse.transport.kafka import KafkaProducerTransport, SenderDied

pytestmark = pytest.mark.fault

N = 300


class Forward(Consumer):
    def process(self, data: Any) -> Any:
        return data


def _node(bootstrap: str, src: str, out: str, group: str) -> Forward:
    node = Forward(src, bootstrap, group, producer_topic=out)
    node.kafka_client = "aiokafka"
    node.drain_timeout = 5.0
    return node


async def _broken(self: Any, node_id: Any, batches: Any) -> None:
    # What aiokafka's sender routine meets in #907: a KeyError out of client.send().
    raise KeyError((node_id, "DEFAULT"))


def _keys(records: list) -> set[bytes]:
    return {r.key for r in records}


def _break_sender(producer: Any) -> None:
    """Make this aiokafka producer's sender routine die at its next produce request."""
    sender = producer._sender
    sender._send_produce_req = _broken.__get__(sender)


async def _first_outputs(bootstrap: str, src: str, out: str, group: str, keys: list[bytes]):
    node = _node(bootstrap, src, out, group)
    task = asyncio.create_task(node.run())
    await read_kafka(bootstrap, out, 20, timeout=60, done=lambda rs: len(rs) >= 20)
    assert not task.done(), "the node stopped before the sender broke"
    return node, task


@pytest.mark.timeout(180)
def test_a_dead_aiokafka_sender_is_replaced_and_nothing_is_lost(kafka_bootstrap, new_topic, caplog):
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:6]}"
    keys = [b"k%d" % i for i in range(N)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[: N // 2]]))

    async def scenario() -> list:
        node, task = await _first_outputs(kafka_bootstrap, src, out, group, keys)
        old = node.producer.producer
        _break_sender(old)
        await produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[N // 2 :]])
        try:
            got = await read_kafka(
                kafka_bootstrap,
                out,
                N,
                timeout=90,
                done=lambda rs: {r.key for r in rs} >= set(keys),
            )
            assert not task.done(), f"the node stopped: {task.exception()!r}"
            assert node.producer.producer is not old, "the dead client was not replaced"
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return got

    got = asyncio.run(scenario())
    assert {r.key for r in got} >= set(keys), "inputs lost"
    assert "sender died" in caplog.text
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 0, timeout=1))
    assert not dead, "inputs were dead-lettered for a producer failure, not a bad input"


@pytest.mark.timeout(180)
def test_a_sender_that_keeps_dying_stops_the_node_and_loses_nothing(
    kafka_bootstrap, new_topic, monkeypatch
):
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:6]}"
    keys = [b"k%d" % i for i in range(N)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[: N // 2]]))

    original = Sender._send_produce_req

    async def nodes_die(self: Any, node_id: Any, batches: Any) -> Any:
        # Every sender of the node dies, its replacement's too; the test's feeder, which
        # writes the input topic, keeps working.
        if any(tp.topic != src for tp in batches):
            return await _broken(self, node_id, batches)
        return await original(self, node_id, batches)

    async def first_instance() -> BaseException | None:
        node, task = await _first_outputs(kafka_bootstrap, src, out, group, keys)
        monkeypatch.setattr(Sender, "_send_produce_req", nodes_die)
        await produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[N // 2 :]])
        done, _ = await asyncio.wait({task}, timeout=90)
        if not done:
            node.stop()
            await asyncio.wait({task}, timeout=60)
            pytest.fail("the node kept running with a producer that cannot deliver")
        return task.exception()

    error = asyncio.run(first_instance())
    monkeypatch.undo()
    assert isinstance(error, FatalDeliveryError), repr(error)
    assert "sender died" in str(error) and "after a restart" in str(error)

    async def second_instance() -> list:
        node = _node(kafka_bootstrap, src, out, group)
        task = asyncio.create_task(node.run())
        try:
            got = await read_kafka(
                kafka_bootstrap,
                out,
                N,
                timeout=90,
                done=lambda rs: {r.key for r in rs} >= set(keys),
            )
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return got

    got = asyncio.run(second_instance())
    assert {r.key for r in got} >= set(keys), "inputs lost"
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 0, timeout=1))
    assert not dead, "inputs were dead-lettered for a producer failure, not a bad input"


@pytest.mark.timeout(60)
def test_records_sent_one_by_one_fail_loudly_when_the_sender_dies(kafka_bootstrap, new_topic):
    topic = new_topic()

    async def scenario() -> None:
        # A value serializer sends through aiokafka's own send(): nothing kept to resend.
        transport = KafkaProducerTransport(kafka_bootstrap, config={"value_serializer": bytes})
        await transport.start()
        try:
            ok = await transport.send(topic, b"before")
            await asyncio.wait_for(ok, 30)
            _break_sender(transport.producer)
            lost = await transport.send(topic, b"during")
            # aiokafka fails what its accumulator holds; we fail what it was sending.
            with pytest.raises(KafkaError, match=r"batch delivery|sender died"):
                await asyncio.wait_for(lost, 30)
            with pytest.raises(SenderDied):
                await transport.send(topic, b"after")
        finally:
            await asyncio.wait_for(transport.stop(), 30)

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_the_tests_feeder_replaces_a_client_whose_sender_died(kafka_bootstrap, new_topic):
    """The reliability scenarios' own producer must not be what fails a broker-crash test."""
    from rel_harness import Feeder, Tally

    topic = new_topic()
    tally = Tally("feeder")

    async def scenario() -> int:
        async with Feeder(kafka_bootstrap, topic, tally) as feeder:
            await feeder.send(50)
            _break_sender(feeder._producer)
            await feeder.send(100)
            return feeder.replaced

    replaced = asyncio.run(scenario())
    assert replaced == 1
    assert tally.sent == set(range(150))
    records = asyncio.run(read_kafka(kafka_bootstrap, topic, 150, timeout=30))
    assert {int(r.value[1:]) for r in records} >= set(range(150))


@pytest.mark.timeout(90)
def test_the_heartbeat_observer_reconnects_when_its_sender_dies(kafka_bootstrap, new_topic):
    """Otherwise every later heartbeat fails and the master takes the instance for dead."""
    from polling import until

    from fogverse.autoscale import Observer

    topic = new_topic()

    async def scenario() -> None:
        obs = Observer(
            {
                "producer_topic": topic,
                "kafka_server": kafka_bootstrap,
                "heartbeat_interval": 0.2,
                "instance_id": "n-1",
            }
        )
        await obs.start()
        try:
            await until(lambda: obs._producer is not None and obs.sent >= 2, 30, "heartbeats")
            old = obs._producer
            _break_sender(old)
            sent = obs.sent
            await until(lambda: obs._producer is not old, 30, "a new producer client")
            await until(lambda: obs.sent >= sent + 3, 30, "heartbeats after the reconnect")
            before = len(await read_kafka(kafka_bootstrap, topic, 0, timeout=1))
            await until(
                lambda: _count(kafka_bootstrap, topic, before + 2), 30, "delivered heartbeats"
            )
        finally:
            await obs.close()

    asyncio.run(scenario())


async def _count(bootstrap: str, topic: str, n: int) -> bool:
    return len(await read_kafka(bootstrap, topic, n, timeout=2)) >= n


@pytest.mark.timeout(90)
def test_the_masters_producer_is_replaced_when_its_sender_dies(kafka_bootstrap, new_topic):
    from polling import until

    from fogverse.autoscale.master import Master
    from fogverse.autoscale.messages import DeployEvent, now

    topic = new_topic()

    async def scenario() -> None:
        master = Master(topic, consumer_servers=kafka_bootstrap, publish=True)
        task = asyncio.create_task(master.run())
        try:
            await asyncio.wait_for(master.ready.wait(), 60)
            old = master._producer
            _break_sender(old)
            await master.publish(DeployEvent("a", now()))  # dies in the sender
            await until(lambda: old._sender.sender_task.done(), 30, "the sender to die")
            await master.publish(DeployEvent("b", now()))
            assert master._producer is not old
            await until(lambda: _count(kafka_bootstrap, topic, 1), 30, "a published message")
        finally:
            master.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
