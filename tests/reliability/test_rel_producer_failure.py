"""aiokafka's producer can lose its sender task to an unexpected error (we saw a KeyError in
aiokafka 0.14's sender while a broker crashed). A node must then stop, not hang with outputs
that will never be acknowledged, and commit nothing past them: the next instance of the node
delivers everything."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from backends import produce_kafka, read_kafka

from fogverse import Consumer
from fogverse.runnable import FatalDeliveryError

N = 300


class Forward(Consumer):
    def process(self, data: Any) -> Any:
        return data


def _node(bootstrap: str, src: str, out: str, group: str) -> Forward:
    node = Forward(src, bootstrap, group, producer_topic=out)
    node.kafka_client = "aiokafka"
    node.drain_timeout = 5.0
    return node


def _break_sender(node: Forward) -> None:
    """Make aiokafka's sender routine die the way it does on an internal error."""
    sender = node.producer.producer._sender

    async def broken(node_id: Any, batches: Any) -> None:
        raise KeyError(node_id)

    sender._send_produce_req = broken


@pytest.mark.timeout(180)
def test_a_dead_aiokafka_sender_stops_the_node_and_loses_nothing(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:6]}"
    keys = [b"k%d" % i for i in range(N)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[: N // 2]]))

    async def first_instance() -> BaseException | None:
        node = _node(kafka_bootstrap, src, out, group)
        task = asyncio.create_task(node.run())
        await read_kafka(kafka_bootstrap, out, 20, timeout=60, done=lambda rs: len(rs) >= 20)
        assert not task.done(), "the node stopped before the sender broke"
        _break_sender(node)
        await produce_kafka(kafka_bootstrap, src, [(k, b"v", []) for k in keys[N // 2 :]])
        # It must stop by itself: outputs it can no longer deliver must not wait for ever.
        done, _ = await asyncio.wait({task}, timeout=90)
        if not done:
            node.stop()
            await asyncio.wait({task}, timeout=60)
            pytest.fail("the node kept running with a dead producer")
        return task.exception()

    error = asyncio.run(first_instance())
    assert isinstance(error, FatalDeliveryError), repr(error)
    assert "Unexpected error during batch delivery" in str(error)

    all_keys = set(keys)

    async def second_instance() -> list:
        node = _node(kafka_bootstrap, src, out, group)
        task = asyncio.create_task(node.run())
        try:
            got = await read_kafka(
                kafka_bootstrap, out, N, timeout=90, done=lambda rs: {r.key for r in rs} >= all_keys
            )
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return got

    got = asyncio.run(second_instance())
    assert {r.key for r in got} >= all_keys, "inputs lost"
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 0, timeout=1))
    assert not dead, "inputs were dead-lettered for a producer failure, not a bad input"
