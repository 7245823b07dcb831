"""The hand-written confluent-kafka loops the suite measures FogVerse against are at least
once, as their docstrings say: an output the broker refuses stops the loop before its input's
offset is committed. Never the speed."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import cv2
import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from benchmarks import kafka as k
from benchmarks import stage

# The output topic's records may be at most this large; every output of the loops is larger.
TINY = {"max.message.bytes": "200"}


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


@pytest.mark.timeout(90)
def test_the_pass_through_loop_stops_on_a_refused_output(kafka_bootstrap, new_topic, monkeypatch):
    src, out = new_topic(), new_topic(config=TINY)
    k.fill_values(kafka_bootstrap, src, [bytes(1024)])
    group = f"bench-loop-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(k.uuid, "uuid4", lambda: uuid.UUID(group[-8:] + "0" * 24))
    with pytest.raises(RuntimeError, match="not delivered"):
        k.plain_loop(kafka_bootstrap, src, out, 1)
    assert _committed(kafka_bootstrap, group, src) < 0  # nothing committed


@pytest.mark.timeout(90)
def test_the_jpeg_stage_loop_stops_on_a_refused_output(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic(config=TINY)
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    k.fill_values(kafka_bootstrap, src, [cv2.imencode(".jpg", frame)[1].tobytes()])
    group = f"stage-{uuid.uuid4().hex[:8]}"
    stop, first, failed = threading.Event(), queue.Queue[Any](), queue.Queue[BaseException]()

    def run() -> None:
        try:
            stage.stage_loop(kafka_bootstrap, src, out, group, stop, first)
        except BaseException as exc:
            failed.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        exc = failed.get(timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert isinstance(exc, RuntimeError) and "not delivered" in str(exc), exc
    assert _committed(kafka_bootstrap, group, src) < 0
