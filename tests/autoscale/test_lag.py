"""LAG_WORKER: KEDA's rule, and lag measured on the real broker (committed vs end offsets)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from backends import produce_kafka

from fogverse.autoscale.config import LagSettings
from fogverse.autoscale.messages import AutoScaleRequest, DeploySpec
from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers.lag import LagWorker, desired_instances, measure_lag


@pytest.mark.parametrize(
    ("lag", "threshold", "parts", "beyond", "want"),
    [
        (0, 100, 4, False, 0),
        (1, 100, 4, False, 1),
        (100, 100, 4, False, 1),
        (101, 100, 4, False, 2),
        (1000, 100, 4, False, 4),  # capped at the partition count
        (1000, 100, 4, True, 10),  # unless told otherwise
        (-5, 100, 4, False, 0),
    ],
)
def test_desired_instances_follows_keda(
    lag: int, threshold: float, parts: int, beyond: bool, want: int
) -> None:
    assert desired_instances(lag, threshold, parts, beyond) == want


async def _commit(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(tps)
        await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
    finally:
        await consumer.stop()


def test_lag_is_end_minus_committed_and_uncommitted_partitions_count_from_the_start(
    kafka_bootstrap: str, kafka_admin: Any, new_topic: Any
) -> None:
    topic = new_topic(partitions=3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    items = [(None, f"v{i}".encode(), []) for i in range(30)]

    async def scenario() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i, (_, value, _) in enumerate(items):
                await producer.send_and_wait(topic, value, partition=i % 3)
        finally:
            await producer.stop()
        await _commit(kafka_bootstrap, topic, group, {0: 10, 1: 4})

    asyncio.run(scenario())
    lag, parts = measure_lag(kafka_admin, group, topic)
    # p0: 10 - 10, p1: 10 - 4, p2: never committed -> all 10.
    assert (lag, parts) == (16, 3)


def test_worker_recommends_from_lag_without_blocking_and_skips_stages_without_a_group(
    kafka_bootstrap: str, kafka_admin: Any, new_topic: Any
) -> None:
    topic = new_topic(partitions=2)
    asyncio.run(produce_kafka(kafka_bootstrap, topic, [(None, b"x", [])] * 50))
    state = ControlState()
    state.apply(
        AutoScaleRequest(
            "a", state.clock(), topic, "out", DeploySpec("LOCAL", "s", 9), "g-never-committed"
        )
    )
    state.apply(AutoScaleRequest("b", state.clock(), "other", "out2", DeploySpec("LOCAL", "s", 9)))
    calls: list[tuple[Any, int]] = []

    class Rec:
        def recommend(self, stage: Any, desired: int, source: str, ttl: float = 0) -> None:
            calls.append((stage, desired))

    worker = LagWorker(LagSettings(lag_threshold=10), Rec(), admin=kafka_admin)
    worker.state = state
    samples = asyncio.run(worker.evaluate())
    assert samples[(topic, "out")].lag == 50
    assert calls == [((topic, "out"), 2)], "5 wanted by lag, capped at 2 partitions"
    assert ("other", "out2") not in samples
