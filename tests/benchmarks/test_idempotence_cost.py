"""The idempotence study's producer counts only what the broker acknowledged: every variant
writes all its records, and a refused record fails the run instead of timing it. Never the
speed."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from benchmarks.idempotence_cost import VARIANTS, produce_all


def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_writes_every_record(kafka_bootstrap, new_topic, variant):
    topic = new_topic()
    m = produce_all(kafka_bootstrap, topic, [b"a" * 1024, b"b" * 4096], 500, VARIANTS[variant])
    assert _end_offset(kafka_bootstrap, topic) == 501  # the warm-up record and the 500
    assert m["rate"] > 0 and m["client_us"] >= 0 and m["thread_us"] >= 0


@pytest.mark.timeout(90)
def test_a_refused_record_fails_the_run(kafka_bootstrap, new_topic):
    topic = new_topic(config={"max.message.bytes": "200"})
    with pytest.raises(RuntimeError, match="records failed"):
        produce_all(kafka_bootstrap, topic, [bytes(1024)], 20, {})
