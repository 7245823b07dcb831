"""Profiling: one option gives exact counts, and per-stage timings of a random sample of
messages as CSV rows, a summary and Prometheus."""

from __future__ import annotations

import asyncio
import csv
import logging
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fogverse import Consumer, MemoryBroker
from fogverse.metrics import (
    DEFAULT_SAMPLE,
    STAGES,
    Profiler,
    ProfileSummary,
    Stamps,
    format_summary,
)


class Slow(Consumer):
    profile = True
    profile_sample = 1

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
    assert summary["messages"] == summary["sampled"] == n
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


class Forward(Consumer):
    profile = True

    def process(self, data):
        return data + b"!"


def _run_until(node, broker, n):
    async def main():
        task = asyncio.create_task(node.run())
        deadline = asyncio.get_running_loop().time() + 60
        while len(broker.records("out")) < n:
            assert asyncio.get_running_loop().time() < deadline, "the node fell behind"
            await broker.wait_for_change(0.1)
        node.stop()
        await task

    asyncio.run(main())


def test_sampling_times_about_one_in_n_and_counts_every_message(tmp_path):
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof-sample")
    n, every = 4000, 10
    for i in range(n):
        broker.append("in", f"m{i}".encode(), None, [])
    path = tmp_path / "profile.csv"
    node = Forward("in", "memory://prof-sample", "g", producer_topic="out")
    node.profile_sample = every
    node.profile_csv = str(path)
    _run_until(node, broker, n)

    summary = node.profiler.summary()
    # Counts and bytes are exact whatever the sample.
    assert summary["messages"] == n
    assert summary["bytes_in"] == sum(len(f"m{i}") for i in range(n))
    assert summary["bytes_out"] == summary["bytes_in"] + n
    # The number timed is Binomial(n, 1/every): mean 400, sd 19; 6 sd either side.
    sd = math.sqrt(n * (1 / every) * (1 - 1 / every))
    assert abs(summary["sampled"] - n / every) < 6 * sd
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == summary["sampled"]
    assert all(int(r["size_out"]) == int(r["size_in"]) + 1 for r in rows)

    registry = CollectorRegistry()
    registry.register(node.profiler)
    text = generate_latest(registry).decode()
    assert f'fogverse_messages_total{{node="Forward"}} {float(n)}' in text
    sampled = float(summary["sampled"])
    assert f'fogverse_stage_seconds_count{{node="Forward",stage="process"}} {sampled}' in text
    assert f'fogverse_bytes_total{{dir="out",node="Forward"}} {float(summary["bytes_out"])}' in text


def test_the_sample_does_not_alias_with_periodic_traffic(tmp_path):
    """Four cameras interleaved round-robin, one in four messages timed: a fixed every-4th
    sample would only ever see one camera. Each camera's messages have their own size."""
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof-alias")
    n = 2000
    for i in range(n):
        broker.append("in", b"x" * (1 + i % 4), None, [])
    path = tmp_path / "profile.csv"
    node = Forward("in", "memory://prof-alias", "g", producer_topic="out")
    node.profile_sample = 4
    node.profile_csv = str(path)
    _run_until(node, broker, n)
    per_camera = {}
    for row in csv.DictReader(path.open()):
        per_camera[row["size_in"]] = per_camera.get(row["size_in"], 0) + 1
    # ~125 rows per camera expected (sd ~11).
    assert set(per_camera) == {"1", "2", "3", "4"}
    assert min(per_camera.values()) > 50, per_camera


def test_sample_setting_comes_from_the_environment(monkeypatch):
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof-env")
    for i in range(20):
        broker.append("in", f"m{i}".encode(), None, [])
    monkeypatch.setenv("FOGVERSE_PROFILE", "1")
    monkeypatch.setenv("FOGVERSE_PROFILE_SAMPLE", "1")
    node = Consumer("in", "memory://prof-env", "g", producer_topic="out")
    _run_until(node, broker, 20)
    summary = node.profiler.summary()
    assert summary["sample"] == 1
    assert summary["sampled"] == summary["messages"] == 20


@pytest.mark.timeout(30)
def test_the_csv_path_from_the_environment_wins_over_the_nodes(tmp_path, monkeypatch):
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof-csv-env")
    for i in range(5):
        broker.append("in", f"m{i}".encode(), None, [])
    preset, deployed = tmp_path / "preset.csv", tmp_path / "deployed.csv"
    monkeypatch.setenv("FOGVERSE_PROFILE_CSV", str(deployed))
    node = Slow("in", "memory://prof-csv-env", "g", producer_topic="out")
    node.profile_csv = str(preset)
    _run_until(node, broker, 5)
    assert not preset.exists()
    assert len(list(csv.DictReader(deployed.open()))) == 5


def test_the_default_samples_one_in_thirty_two():
    node = Consumer("in", "memory://prof-default", "g", producer_topic="out")
    assert node.profile_sample == DEFAULT_SAMPLE == 32


@pytest.mark.parametrize("bad", [0, -3, 1.5, "8", True])
def test_a_bad_sample_is_refused_with_a_clear_error(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        Profiler("node", sample=bad)


def test_a_bad_sample_in_the_environment_is_refused(monkeypatch):
    MemoryBroker.reset()
    MemoryBroker.named("prof-bad-env").append("in", b"m", None, [])
    monkeypatch.setenv("FOGVERSE_PROFILE", "1")
    monkeypatch.setenv("FOGVERSE_PROFILE_SAMPLE", "often")
    node = Consumer("in", "memory://prof-bad-env", "g", producer_topic="out")
    with pytest.raises(ValueError, match="FOGVERSE_PROFILE_SAMPLE"):
        asyncio.run(node.run())


def test_profiling_is_off_by_default():
    node = Consumer("in", "memory://off", "g", producer_topic="out")
    assert node.profiler is None


def test_the_summary_prints_as_an_aligned_table_in_milliseconds():
    summary = ProfileSummary(
        {
            "node": "Detect",
            "messages": 1800,
            "bytes_in": 123456,
            "bytes_out": 4567,
            "sampled": 1800,
            "sample": 1,
            "stages": {
                "receive_wait": {"mean": 0.030, "p50": 0.0299, "p95": 0.0341, "p99": 0.05},
                "process": {"mean": 0.010, "p50": 0.0095, "p95": 0.0123456789, "p99": 0.02},
                "ack_wait": {"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 120.4321},
            },
        }
    )
    lines = str(summary).splitlines()
    assert lines[0] == "Detect: 1,800 messages, 123,456 B in, 4,567 B out; 1,800 timed (1 in 1)"
    assert lines[1].split() == ["stage", "p50", "ms", "p95", "ms", "p99", "ms", "share"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["process"] == ["9.500", "12.346", "20.000", "25.0%"]
    assert rows["receive_wait"] == ["29.900", "34.100", "50.000", "75.0%"]
    assert rows["ack_wait"] == ["0.000", "0.000", "120432.100", "0.0%"]
    # Aligned: every row is as long as the header, each column ends at the same place.
    assert len({len(line) for line in lines[1:]}) == 1
    assert str(summary) == format_summary(dict(summary))
    assert summary["stages"]["process"]["p95"] == 0.0123456789, "still the exact figures"


def test_a_profiled_node_logs_that_table_when_it_ends(caplog):
    MemoryBroker.reset()
    broker = MemoryBroker.named("prof-log")
    for i in range(20):
        broker.append("in", f"m{i}".encode(), None, [])
    node = Forward("in", "memory://prof-log", "g", producer_topic="out")
    with caplog.at_level(logging.INFO, logger="fogverse"):
        _run_until(node, broker, 20)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("profile: ")]
    assert len(logged) == 1
    text = logged[0].removeprefix("profile: ")
    assert text.startswith("Forward: 20 messages")
    assert [line.split()[0] for line in text.splitlines()[2:]] == list(STAGES)
    assert "{" not in text, "not a raw dict"


def test_the_stages_partition_a_message_time_so_send_is_counted_once():
    ms = 1_000_000
    stamps = Stamps(0)
    stamps.received, stamps.decoded, stamps.processed = 1 * ms, 2 * ms, 5 * ms
    stamps.encoded, stamps.sent, stamps.acked = 6 * ms, 16 * ms, 17 * ms  # a 10 ms send
    durations = dict(zip(STAGES, stamps.durations(), strict=True))
    assert durations["send"] == pytest.approx(0.010)
    assert durations["ack_wait"] == pytest.approx(0.001)
    assert sum(durations.values()) == pytest.approx(0.017)


def test_a_memoryview_counts_its_bytes_not_its_rows():
    profiler = Profiler("node", sample=1)
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert profiler.count_input(memoryview(frame)) == frame.nbytes
    profiler.count_output(None, memoryview(frame)[::2])
    profiler.count_output(None, memoryview(b"abc"))
    assert (profiler.bytes_in, profiler.bytes_out) == (frame.nbytes, frame.nbytes // 2 + 3)


def test_an_ndarray_input_counts_its_bytes():
    # A camera producer's inputs are frames, not buffers: they were counted as 0 bytes.
    profiler = Profiler("node", sample=1)
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert profiler.count_input(frame) == frame.nbytes
    assert profiler.count_input({"nbytes": 5}) == 0  # nothing else has a size
