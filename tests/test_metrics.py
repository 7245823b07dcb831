"""Profiling: one option gives per-stage timings as CSV rows, a summary and Prometheus."""

from __future__ import annotations

import asyncio
import csv

from prometheus_client import CollectorRegistry, generate_latest

from fogverse import Consumer, MemoryBroker
from fogverse.metrics import STAGES


class Slow(Consumer):
    profile = True

    async def process(self, data):
        await asyncio.sleep(0.002)
        return data + b"!"


def test_profile_records_every_stage_of_every_message(tmp_path):
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof")
    n = 50
    for i in range(n):
        broker.append("in", f"m{i}".encode(), None, [])
    path = tmp_path / "profile.csv"
    node = Slow("in", "memory://prof", "g", producer_topic="out")
    node.profile_csv = str(path)

    async def main():
        task = asyncio.create_task(node.run())
        deadline = asyncio.get_running_loop().time() + 30
        while len(broker.records("out")) < n:
            assert asyncio.get_running_loop().time() < deadline
            await broker.wait_for_change(0.1)
        node.stop()
        await task

    asyncio.run(main())
    summary = node.profiler.summary()
    assert summary["messages"] == n
    assert summary["bytes_in"] == sum(len(f"m{i}") for i in range(n))
    assert summary["bytes_out"] == summary["bytes_in"] + n
    assert set(summary["stages"]) == set(STAGES)
    # The processor sleeps 2 ms: the process stage must show it, decode must not.
    assert summary["stages"]["process"]["p50"] >= 0.002
    assert summary["stages"]["decode"]["p50"] < 0.002

    rows = list(csv.DictReader(path.open()))
    assert len(rows) == n
    assert all(float(r["process_s"]) >= 0.002 for r in rows)

    registry = CollectorRegistry()
    registry.register(node.profiler)
    text = generate_latest(registry).decode()
    assert f'fogverse_stage_seconds_count{{node="Slow",stage="process"}} {float(n)}' in text
    assert 'fogverse_messages_total{node="Slow"} 50.0' in text


def test_profiling_is_off_by_default():
    node = Consumer("in", "memory://off", "g", producer_topic="out")
    assert node.profiler is None
