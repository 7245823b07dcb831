"""aiokafka's producer can lose its sender task to an unexpected error (a KeyError in its
client while a broker crashed: aio-libs/aiokafka#907). What it was sending is then never
settled and every later send fails. The nodes run on librdkafka, but the add-ons' own aiokafka
producers (the heartbeat observer's, the auto-scaling master's, which ask ``sender_died``) and
the reliability tests' feeder notice such a client and replace it: nothing waits for ever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from backends import read_kafka

from fogverse.transport.aiokafka_clients import sender_died

pytestmark = pytest.mark.fault


async def _broken(self: Any, node_id: Any, batches: Any) -> None:
    # What aiokafka's sender routine meets in #907: a KeyError out of client.send().
    raise KeyError((node_id, "DEFAULT"))


def _break_sender(producer: Any) -> None:
    """Make this aiokafka producer's sender routine die at its next produce request."""
    sender = producer._sender
    sender._send_produce_req = _broken.__get__(sender)


@pytest.mark.timeout(90)
def test_the_tests_feeder_replaces_a_client_whose_sender_died(kafka_bootstrap, new_topic):
    """The reliability scenarios' own producer must not be what fails a broker-crash test."""
    from rel_harness import Feeder, Tally

    topic = new_topic()
    tally = Tally("feeder")

    async def scenario() -> int:
        async with Feeder(kafka_bootstrap, topic, tally) as feeder:
            await feeder.send(50)
            old = feeder._producer
            assert not sender_died(old)
            _break_sender(old)
            await feeder.send(100)
            assert sender_died(old) and not sender_died(feeder._producer)
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
            await until(lambda: sender_died(old), 30, "the sender to die")
            await master.publish(DeployEvent("b", now()))
            assert master._producer is not old
            await until(lambda: _count(kafka_bootstrap, topic, 1), 30, "a published message")
        finally:
            master.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
