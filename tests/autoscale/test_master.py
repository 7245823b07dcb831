"""The Master on the real broker: garbage is skipped, early messages are read, the state is
rebuilt from a recent window; and a lock-only master that needs no Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from polling import until

from fogverse.autoscale import (
    AutoScaleComponent,
    AutoScaleRequest,
    ControlMessage,
    DeployScripts,
    Heartbeat,
    Master,
    Worker,
)
from fogverse.autoscale.lock import LockClient
from fogverse.autoscale.messages import DeploySpec, encode_message


class Recorder:
    def __init__(self) -> None:
        self.seen: list[ControlMessage] = []

    def on_message(self, message: ControlMessage) -> None:
        self.seen.append(message)


def _beat(iid: str, count: int, ts: float | None = None) -> bytes:
    ts = time.time() if ts is None else ts
    return encode_message(Heartbeat(iid, ts, "out", count, ts - 1, 1.0, "in", "g"))


async def _produce(
    bootstrap: str, topic: str, values: list[bytes], timestamp_ms: int | None = None
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


GARBAGE = [
    b"",
    b"not json",
    b"\x00\xff\x13garbage",
    b"[]",
    b'"a string"',
    json.dumps({"v": 99, "type": "heartbeat", "instance_id": "x", "ts": time.time()}).encode(),
    json.dumps({"v": 1, "type": "heartbeat", "instance_id": "x", "ts": "now"}).encode(),
    json.dumps(
        {"v": 1, "type": "heartbeat", "instance_id": 5, "ts": time.time(), "total_messages": 1}
    ).encode(),
    json.dumps(
        {
            "v": 1,
            "type": "heartbeat",
            "instance_id": "x",
            "ts": time.time(),
            "total_messages": "lots",
        }
    ).encode(),
    json.dumps(
        {
            "v": 1,
            "type": "auto_scale_request",
            "instance_id": "x",
            "ts": time.time(),
            "source_topic": "a",
            "target_topic": "b",
            "topic_configs": None,
        }
    ).encode(),
    b"{" * 100_000,
]


def test_garbage_on_the_control_topic_is_logged_skipped_and_never_stops_the_master(
    kafka_bootstrap: str, new_topic: Any, caplog: pytest.LogCaptureFixture
) -> None:
    control = new_topic()
    rec = Recorder()

    async def scenario() -> Master:
        master = Master(control, "m", kafka_bootstrap, [rec], lookback_seconds=30)
        run = asyncio.create_task(master.run())
        await until(master.ready.is_set, 20, "the master to be ready")
        values = [_beat("a", 1), *GARBAGE, _beat("a", 2), *GARBAGE, _beat("a", 3)]
        await _produce(kafka_bootstrap, control, values)
        await until(lambda: len(rec.seen) == 3, 20, "the three valid beats")
        assert not run.done(), "the master stopped"
        master.stop()
        await run
        return master

    with caplog.at_level("WARNING", logger="fogverse.autoscale.master"):
        master = asyncio.run(scenario())
    assert master.invalid_messages == 2 * len(GARBAGE)
    assert [m.total_messages for m in rec.seen] == [1, 2, 3]  # type: ignore[attr-defined]
    warnings = [r for r in caplog.records if "skipping invalid control message" in r.message]
    # Each is logged with its reason, up to a limit that keeps a flood out of the log.
    assert len(warnings) == 20 and "unsupported schema version 99" in warnings[5].message


def test_a_starting_master_reads_what_was_sent_before_it_but_not_stale_history(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    control = new_topic(partitions=2)
    now = time.time()
    spec = DeploySpec("LOCAL", "svc", 3)

    async def scenario() -> Master:
        # Two minutes old: beyond the lookback, irrelevant to the current state.
        await _produce(
            kafka_bootstrap,
            control,
            [_beat("ancient", 99, now - 120)],
            timestamp_ms=int((now - 120) * 1000),
        )
        # Sent before the master starts, within the lookback: must not be skipped.
        await _produce(
            kafka_bootstrap,
            control,
            [
                encode_message(AutoScaleRequest("early", now - 5, "in", "out", spec, "g")),
                _beat("early", 10, now - 1),
            ],
        )
        master = Master(control, "m", kafka_bootstrap, [], lookback_seconds=30)
        run = asyncio.create_task(master.run())
        await until(master.ready.is_set, 20, "the master to be ready")
        # Ready means caught up with everything that was on the topic at start.
        assert "early" in master.state.instances and ("in", "out") in master.state.stages
        assert "ancient" not in master.state.instances
        await _produce(kafka_bootstrap, control, [_beat("late", 5)])
        await until(lambda: "late" in master.state.instances, 20, "the late beat")
        master.stop()
        await run
        return master

    master = asyncio.run(scenario())
    assert master.messages == 3


def test_possible_data_types_filters_and_a_failing_observer_harms_nobody() -> None:
    class Broken:
        def on_message(self, message: ControlMessage) -> None:
            raise RuntimeError("bug in a custom observer")

    rec = Recorder()

    async def scenario() -> Master:
        master = Master(None, "m", None, [Broken(), rec], possible_data_types=[Heartbeat])
        await master.handle_raw(_beat("a", 1))
        await master.handle_raw(
            encode_message(
                AutoScaleRequest("a", time.time(), "in", "out", DeploySpec("LOCAL", "s", 2))
            )
        )
        await master.handle_raw(b"garbage")
        return master

    master = asyncio.run(scenario())
    assert [type(m) for m in rec.seen] == [Heartbeat]
    assert master.invalid_messages == 1
    assert "a" in master.state.instances


def test_a_lock_only_master_needs_no_kafka_and_serves_locks() -> None:
    conf = {
        "included_worker": [Worker.DISTRIBUTED_LOCK_WORKER],
        "distributed_worker_config": {"master_host": "127.0.0.1", "master_port": 0},
    }
    master = AutoScaleComponent().master_auto_scaler(conf, DeployScripts())

    async def scenario() -> None:
        run = asyncio.create_task(master.run())
        await until(
            lambda: master.ready.is_set() and master.lock_server._server is not None,
            20,
            "the master and its lock service",
        )
        client = LockClient("127.0.0.1", master.lock_server.port)
        async with client, client.lock("partition:t:g", lease=5) as grant:
            assert grant is not None
        master.stop()
        await asyncio.wait_for(run, 10)

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_huge_integer_in_a_message_is_skipped_and_the_master_keeps_handling() -> None:
    rec = Recorder()
    huge = b'{"v":1,"type":"heartbeat","instance_id":"x","ts":1' + b"0" * 400 + b"}"

    async def scenario() -> Master:
        master = Master(None, "m", None, [rec])
        assert await master.handle_raw(huge) is None
        await master.handle_raw(_beat("a", 1))
        return master

    master = asyncio.run(scenario())
    assert master.invalid_messages == 1
    assert [m.instance_id for m in rec.seen] == ["a"]


@pytest.mark.timeout(60)
def test_a_master_built_without_servers_uses_fogverse_bootstrap(
    kafka_bootstrap: str, new_topic: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/deployment.md: FOGVERSE_BOOTSTRAP is the default of every node, the master and the
    # view; the master alone went to localhost:9092.
    monkeypatch.setenv("FOGVERSE_BOOTSTRAP", kafka_bootstrap)
    control = new_topic()
    rec = Recorder()

    async def scenario() -> None:
        master = Master(control, "m", observers=[rec], lookback_seconds=30)
        run = asyncio.create_task(master.run())
        ready = asyncio.create_task(master.ready.wait())
        await asyncio.wait({run, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert ready.done(), f"the master did not get ready: {run}"
        await _produce(kafka_bootstrap, control, [_beat("a", 1)])
        await until(lambda: len(rec.seen) == 1, 20, "the beat")
        master.stop()
        await run

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_instances_are_not_judged_gone_on_heartbeats_a_stalled_master_has_not_read(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    # A master whose loop stalls (a loaded machine, a long GC) resumes with its instances'
    # heartbeats of the stall still unread: judged by the clock, they looked gone, and the
    # deployer replaced live instances past max_instance (test_scale_out, under load).
    import threading

    from confluent_kafka import Producer

    control = new_topic()
    beating = threading.Event()
    beating.set()

    def beat() -> None:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        count = 0
        while beating.is_set():
            count += 1
            ts = time.time()
            hb = Heartbeat("a", ts, "out", count, ts - 0.2, 0.2, "in", "g")
            producer.produce(control, encode_message(hb))
            producer.poll(0)
            time.sleep(0.2)
        producer.flush(10)

    async def scenario() -> None:
        master = Master(control, "m", kafka_bootstrap, [], lookback_seconds=30)
        run = asyncio.create_task(master.run())
        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            await until(master.ready.is_set, 20, "the master to be ready")

            def alive() -> bool:
                return "a" in {i.instance_id for i in master.state.live_instances()}

            await until(alive, 20, "the first heartbeat")
            time.sleep(1.5)  # noqa: ASYNC251  (the stall itself: 7 intervals, expiry after 3)
            assert alive(), "judged gone on heartbeats the master had not read yet"
            await asyncio.sleep(0.5)
            assert alive()
            beating.clear()
            await until(lambda: not alive(), 20, "the silent instance to expire")
        finally:
            beating.clear()
            master.stop()
            await run
            await asyncio.to_thread(beater.join, 15)

    asyncio.run(scenario())
