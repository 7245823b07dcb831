"""The node-side observer: aggregated, periodic, never blocking; seed one-liner and attach()."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest
from backends import read_kafka
from polling import until

from fogverse import Consumer
from fogverse.autoscale import Observer, enable_heartbeats
from fogverse.autoscale.messages import Heartbeat, parse_message
from fogverse.transport.memory import MemoryBroker


class FakeProducer:
    """Records what the observer hands over; acks resolve (or fail, or never come)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.mode = "ok"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        if self.mode == "fail":
            self.refused.append(json.loads(value))
            fut.set_exception(RuntimeError("broker down"))
            return fut
        self.sent.append(json.loads(value))
        if self.mode == "ok":
            fut.set_result(None)
        return fut  # "hang": the ack never arrives

    def beats(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "heartbeat"]


def _observer(fake: FakeProducer, **conf: Any) -> Observer:
    return Observer(
        {"producer_topic": "ctl", "heartbeat_interval": 0.05, "instance_id": "n-1", **conf},
        producer_factory=lambda: fake,
    )


def test_n_calls_become_one_heartbeat_with_their_sum() -> None:
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake)
        await obs.start()
        await until(lambda: fake.beats(), 5, "a heartbeat")
        before = len(fake.beats())
        for _ in range(1000):
            obs.send_heartbeat("out", total_messages=1)
        await until(lambda: any(b["total_messages"] for b in fake.beats()), 5, "a counted beat")
        new = fake.beats()[before:]
        counted = [b for b in new if b["total_messages"]]
        assert len(counted) == 1 and counted[0]["total_messages"] == 1000
        assert counted[0]["target_topic"] == "out" and counted[0]["since"] <= counted[0]["ts"]
        await obs.close()

    asyncio.run(scenario())


def test_idle_instances_keep_sending_zero_heartbeats_and_close_sends_a_final_one() -> None:
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake)
        await obs.start()
        await until(lambda: len(fake.beats()) >= 4, 5, "four heartbeats")
        assert fake.sent[0]["type"] == "announce"
        assert all(b["total_messages"] == 0 and b["target_topic"] is None for b in fake.beats())
        obs.send_heartbeat("out", 3)
        await obs.close()
        last = fake.beats()[-1]
        assert last["final"] is True
        assert sum(b["total_messages"] for b in fake.beats()) == 3

    asyncio.run(scenario())


def test_send_heartbeat_never_waits_for_acks_and_counts_from_threads_add_up() -> None:
    async def scenario() -> None:
        fake = FakeProducer()
        fake.mode = "hang"
        obs = _observer(fake)
        await obs.start()

        def hammer() -> None:
            for _ in range(20_000):
                obs.send_heartbeat("out", 1)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(20):  # the loop keeps running (and flushing) meanwhile
            await asyncio.sleep(0.01)
        for t in threads:
            t.join()
        await until(
            lambda: sum(b["total_messages"] for b in fake.beats()) == 80_000, 5, "80000 counted"
        )
        # How many beats the hammering took depends on the machine; that more follow does not.
        await until(
            lambda: len(fake.beats()) > 3, 5, "heartbeats to go on although no ack ever arrived"
        )
        await obs.close(timeout=0.5)

    asyncio.run(scenario())


def test_a_heartbeat_the_broker_rejected_is_counted_again_in_the_next() -> None:
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake)
        await obs.start()
        await until(lambda: fake.beats(), 5, "a heartbeat")
        fake.mode = "fail"
        obs.send_heartbeat("out", 7)
        await until(
            lambda: any(m.get("total_messages") == 7 for m in fake.refused),
            5,
            "the heartbeat counting 7 to be refused",
        )
        fake.mode = "ok"
        obs.send_heartbeat("out", 1)
        await until(lambda: sum(b["total_messages"] for b in fake.beats()) == 8, 5, "8 counted")
        await obs.close()

    asyncio.run(scenario())


def test_auto_scale_requests_go_out_at_once_and_are_resent_periodically() -> None:
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake, request_refresh_interval=0.2)
        with pytest.raises(ValueError, match="max_instance"):
            obs.send_auto_scale_request("in", "out", {"provider": "LOCAL", "service_name": "s"})
        await obs.start()
        obs.send_auto_scale_request(
            "in",
            "out",
            {"provider": "LOCAL", "service_name": "s", "max_instance": 3, "extra_configs": {}},
        )
        await until(
            lambda: any(m["type"] == "auto_scale_request" for m in fake.sent), 1, "a request"
        )
        await until(
            lambda: sum(m["type"] == "auto_scale_request" for m in fake.sent) >= 3,
            5,
            "three requests",
        )
        reqs = [m for m in fake.sent if m["type"] == "auto_scale_request"]
        assert reqs[0]["topic_configs"]["max_instance"] == 3
        assert reqs[-1]["ts"] > reqs[0]["ts"], "re-sent with a fresh timestamp"
        await obs.close()

    asyncio.run(scenario())


def test_a_nodes_list_valued_consumer_topic_names_its_one_topic() -> None:
    """The seed hands ``self.consumer_topic`` (a list here) on as ``source_topic``."""

    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake)
        await obs.start()
        spec = {"provider": "LOCAL", "service_name": "s", "max_instance": 2}
        obs.send_auto_scale_request(source_topic=["frames"], target_topic="out", topic_configs=spec)
        await until(
            lambda: any(m["type"] == "auto_scale_request" for m in fake.sent), 5, "a request"
        )
        req = next(m for m in fake.sent if m["type"] == "auto_scale_request")
        assert req["source_topic"] == "frames" and req["target_topic"] == "out"
        assert obs.source_topic == "frames"
        await obs.close()

    asyncio.run(scenario())


def test_several_consumer_topics_are_refused_naming_them() -> None:
    obs = _observer(FakeProducer())
    spec = {"provider": "LOCAL", "service_name": "s", "max_instance": 2}
    with pytest.raises(ValueError, match=r"2 topics \('cam1', 'cam2'\)"):
        obs.send_auto_scale_request(["cam1", "cam2"], "out", spec)
    with pytest.raises(ValueError, match="empty"):
        obs.send_auto_scale_request([], "out", spec)
    assert obs.source_topic is None, "a refused request names no stage"


def test_seed_one_liner_in_send_starts_the_observer_by_itself() -> None:
    MemoryBroker.reset()
    servers = f"memory://{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.for_servers(servers)
    broker.create_topic("in")
    broker.create_topic("out")
    for i in range(50):
        broker.append("in", f"m{i}".encode(), None, [])
    fake = FakeProducer()

    class SeedNode(Consumer):
        def __init__(self) -> None:
            super().__init__("in", servers, "g", producer_topic="out")
            self.observer = _observer(fake)

        async def send(self, data, topic=None, key=None, headers=None, callback=None):
            result = await super().send(data, topic, key, headers, callback)
            self.observer.send_heartbeat(self.producer_topic, total_messages=1)
            return result

    async def scenario() -> None:
        node = SeedNode()
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 50, 5, "50 outputs")
        await until(lambda: sum(b["total_messages"] for b in fake.beats()) == 50, 5, "50 counted")
        node.stop()
        await task
        await node.observer.close()

    asyncio.run(scenario())


def test_attach_counts_a_nodes_outputs_and_reports_its_stage() -> None:
    MemoryBroker.reset()
    servers = f"memory://{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.for_servers(servers)
    broker.create_topic("in")
    broker.create_topic("out")
    for i in range(30):
        broker.append("in", f"m{i}".encode(), None, [])
    fake = FakeProducer()

    async def scenario() -> None:
        node = Consumer("in", servers, "grp", producer_topic="out")
        obs = enable_heartbeats(node, _observer(fake))
        assert obs is node.observer and node.plugins == [obs]
        assert not {"send", "start_producer", "close_producer"} & set(vars(node)), (
            "attach rides on the node's plugin hooks; it replaces none of its methods"
        )
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 30, 5, "30 outputs")
        node.stop()
        await task
        announce = fake.sent[0]
        assert (
            announce["type"],
            announce["source_topic"],
            announce["target_topic"],
            announce["group_id"],
        ) == ("announce", "in", "out", "grp")
        beats = fake.beats()
        assert sum(b["total_messages"] for b in beats) == 30
        assert beats[-1]["final"] is True, "closing the node sent the final heartbeat"

    asyncio.run(scenario())


def test_a_nodes_heartbeats_setting_attaches_its_observer_when_it_starts() -> None:
    MemoryBroker.reset()
    servers = f"memory://{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.for_servers(servers)
    for i in range(20):
        broker.append("in", f"m{i}".encode(), None, [])
    fake = FakeProducer()
    obs = _observer(fake)

    class Reporting(Consumer):
        heartbeats = obs

    async def scenario() -> None:
        node = Reporting("in", servers, "grp", producer_topic="out")
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 20, 5, "20 outputs")
        node.stop()
        await task
        assert node.observer is obs

    asyncio.run(scenario())
    assert sum(b["total_messages"] for b in fake.beats()) == 20
    assert fake.beats()[-1]["final"] is True


def test_enable_heartbeats_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOGVERSE_OBSERVER_TOPIC", raising=False)
    node = Consumer("in", "memory://x", "g")
    assert enable_heartbeats(node) is None
    monkeypatch.setenv("FOGVERSE_OBSERVER_TOPIC", "ctl")
    obs = enable_heartbeats(node)
    assert obs is not None and obs.topic == "ctl"


def _has_final_beat(records: list[Any]) -> bool:
    return any(
        isinstance(m, Heartbeat) and m.final for m in (parse_message(r.value) for r in records)
    )


def test_heartbeats_reach_the_real_broker_aggregated(kafka_bootstrap: str, new_topic: Any) -> None:
    control = new_topic()

    async def scenario() -> list[Any]:
        obs = Observer(
            {
                "kafka_server": kafka_bootstrap,
                "producer_topic": control,
                "heartbeat_interval": 0.2,
                "instance_id": "real-1",
            }
        )
        await obs.start()
        for _ in range(500):
            obs.send_heartbeat("out", 1)
        # Connected (its announce handed over): an observer closed before it ever reached the
        # broker has nothing to send its final heartbeat with.
        await until(lambda: obs.sent >= 1, 30, "the observer's announce")
        # A loaded machine may take longer than close()'s default 5 s to get the beats
        # acknowledged (an instance that exits then only loses its last beat, with a warning);
        # here every beat is to be counted, so close waits as long as it takes.
        await obs.close(timeout=120)
        # Everything is on the topic once close() returned: read up to the final beat (the
        # last thing an observer sends), then a moment more for anything unexpected after it.
        records = await read_kafka(
            kafka_bootstrap, control, 0, timeout=60, settle=0.5, done=_has_final_beat
        )
        return [parse_message(r.value) for r in records]

    messages = asyncio.run(scenario())
    beats = [m for m in messages if isinstance(m, Heartbeat)]
    assert sum(b.total_messages for b in beats) == 500
    assert [b.total_messages for b in beats if b.total_messages] == [500]
    assert beats[-1].final


@pytest.mark.timeout(30)
def test_a_topics_first_counted_beat_covers_only_the_time_since_the_previous_heartbeat() -> None:
    # The master spreads a count over since..ts: a first count for a topic spread back to the
    # observer's creation lands mostly in windows it has already judged.
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake)
        await obs.start()
        await until(lambda: len(fake.beats()) >= 5, 5, "five liveness heartbeats")
        obs.send_heartbeat("other", 10)
        await until(lambda: any(b["total_messages"] for b in fake.beats()), 5, "a counted beat")
        beats = fake.beats()
        i = next(i for i, b in enumerate(beats) if b["total_messages"])
        assert beats[i]["target_topic"] == "other" and beats[i]["total_messages"] == 10
        assert beats[i]["since"] >= beats[i - 1]["ts"], (
            f"the count is spread from {beats[i]['since']}, before the previous heartbeat "
            f"at {beats[i - 1]['ts']}"
        )
        await obs.close()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_close_while_the_producer_is_still_starting_stops_it() -> None:
    # aiokafka's start() can wait indefinitely (an idempotent producer waits for its producer
    # id); a node that stops meanwhile must not leave that client's connections and tasks behind.
    started, stopped = asyncio.Event(), []

    class SlowStart(FakeProducer):
        async def start(self) -> None:
            started.set()
            await asyncio.Event().wait()

        async def stop(self) -> None:
            stopped.append(self)

    async def scenario() -> None:
        fake = SlowStart()
        obs = _observer(fake)
        await obs.start()
        await asyncio.wait_for(started.wait(), 5)
        await obs.close()
        assert stopped == [fake], "the producer being started was never stopped"

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_the_first_heartbeat_does_not_reach_back_before_the_observer_started() -> None:
    # The seed makes its observer at import; the node may load a model for a minute before it
    # starts. Nothing was counted before start(): the first beat's span begins there.
    async def scenario() -> None:
        fake = FakeProducer()
        obs = _observer(fake, heartbeat_interval=0.5)
        await asyncio.sleep(0.3)  # a gap between creating the observer and starting it
        before_start = time.time()
        await obs.start()
        obs.send_heartbeat("out", 5)
        await until(lambda: fake.beats(), 5, "the first heartbeat")
        first = fake.beats()[0]
        assert first["total_messages"] == 5
        assert first["since"] >= before_start, (
            f"the first beat's span starts {before_start - first['since']:.3f} s before start()"
        )
        await obs.close()

    asyncio.run(scenario())
