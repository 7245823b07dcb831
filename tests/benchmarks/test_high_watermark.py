"""The suite's stopwatch (``benchmarks.kafka.HighWatermark``) never stops before the output
topic holds every record, and it does not keep the broker busy while it waits: polled every
5 ms, its end-offset queries took 28-50 % of a core from the variants being measured."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from benchmarks import kafka as k

RECORDS = 400


def _produce_steadily(bootstrap: str, topic: str, last: list[float]) -> None:
    """``RECORDS`` records over about a second, 20 at a time, noting when the last one was
    handed to the client."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(RECORDS):
        if i == RECORDS - 1:
            last.append(time.perf_counter())
        producer.produce(topic, b"x" * 100, partition=i % 2)
        if i % 20 == 19:
            producer.flush(30)
            time.sleep(0.05)
    assert producer.flush(30) == 0


@pytest.mark.timeout(90)
def test_it_stops_after_the_last_record_and_polls_at_most_every_50_ms_until_the_end(
    kafka_bootstrap, new_topic, monkeypatch
):
    topic = new_topic(partitions=2)
    polls: list[float] = []
    total = k.HighWatermark._total

    def counted(self: k.HighWatermark) -> int:
        polls.append(time.perf_counter())
        return total(self)

    monkeypatch.setattr(k.HighWatermark, "_total", counted)
    last: list[float] = []
    with k.HighWatermark(kafka_bootstrap, topic, RECORDS, 2) as mark:
        start = time.perf_counter()
        producer = threading.Thread(target=_produce_steadily, args=(kafka_bootstrap, topic, last))
        producer.start()
        producer.join(60)
        assert mark.done.wait(30)
    assert mark.reached is not None and last
    assert mark.reached > last[0]  # never before the last record existed
    watched = [t for t in polls if t >= start]
    seconds = mark.reached - start
    # At one poll per 5 ms this would be 200 per second; at most 20 per second plus the
    # end game (a quarter of the remaining time each, the last few at 5 ms).
    assert len(watched) <= seconds / k._WATCH_SLOWEST + 30, (len(watched), seconds)


@pytest.mark.timeout(60)
def test_a_run_that_wrote_duplicates_reports_no_rate(kafka_bootstrap, new_topic):
    # A variant that wrote one input twice: the topic reaches the target a record early.
    topic = new_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"a", b"b", b"c", b"c"):
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    with (
        pytest.raises(RuntimeError, match="1 duplicated"),
        k.HighWatermark(kafka_bootstrap, topic, 3) as mark,
    ):
        assert mark.done.wait(30)
