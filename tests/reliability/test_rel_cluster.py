"""Fault scenarios on a replicated 3-node cluster (RF 3, min.insync.replicas 2): leaders
crash, a node freezes, two of three go down, all three restart in turn, and the auto-scaling
master grows a topic meanwhile. A Consumer and a ParallelConsumer (real processes, each with
its own output and dead-letter topic) read the same input; every id is counted on both
outputs. Nothing may be lost; duplicates are reported.

One cluster serves the whole module (the ``kafka_cluster`` fixture): every test brings back
whatever node it took down before it ends.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from rel_harness import Feeder, Nodes, Reader, Tally, node_env, report_row, until

from fogverse.broker import LocalKafkaCluster

pytestmark = [pytest.mark.timeout(300), pytest.mark.fault]

PER_PHASE = 300
RATE = 100.0


def _topic(cluster: LocalKafkaCluster, partitions: int = 1) -> str:
    """A fresh topic with the cluster's defaults (replication factor 3, min ISR 2)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"c-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(name, partitions)])[name].result(timeout=60)
    deadline = time.monotonic() + 60
    while True:
        parts = admin.list_topics(topic=name, timeout=10).topics[name].partitions
        if len(parts) == partitions and all(len(p.isrs) == 3 for p in parts.values()):
            return name
        assert time.monotonic() < deadline, f"{name} never had all its replicas in sync"
        time.sleep(0.1)


def _replicas(cluster: LocalKafkaCluster, topic: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 3})
    parts = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    return [len(parts[p].replicas) for p in sorted(parts)]


class Pipeline:
    """A feeder, a reader and two nodes (Consumer ``Echo``, ParallelConsumer
    ``ParallelEcho``) on the cluster, each node with its own output and dead-letter topic."""

    def __init__(self, cluster: LocalKafkaCluster, tmp_path: Path, scenario: str) -> None:
        self.cluster = cluster
        self.bootstrap = cluster.bootstrap
        self.src = _topic(cluster, partitions=2)
        self.out = {kind: _topic(cluster) for kind in ("serial", "parallel")}
        self.dlq = {kind: _topic(cluster) for kind in ("serial", "parallel")}
        self.tally = {
            "serial": Tally(f"cluster: {scenario}: Consumer"),
            "parallel": Tally(f"cluster: {scenario}: ParallelConsumer"),
        }
        self.nodes = Nodes(tmp_path)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarted: list[str] = []
        # The input is counted too: a duplicate there (a retried send) is one on each output.
        self.input: collections.Counter[int] = collections.Counter()

    def start_node(self, kind: str) -> None:
        target = "Echo" if kind == "serial" else "ParallelEcho"
        env = node_env(
            self.bootstrap,
            self.src,
            self.out[kind],
            f"g-{kind}-{self.src}",
            DEAD_LETTER_TOPIC=self.dlq[kind],
        )
        self.procs[kind] = self.nodes.start(target, env, kind)

    def replace_exited_nodes(self) -> None:
        """Start a new instance of a node that stopped itself (it must say why)."""
        for kind, proc in list(self.procs.items()):
            if proc.poll() is not None:
                log = self.nodes.log(proc)
                assert proc.returncode != 0 and "FatalDeliveryError" in log, log[-3000:]
                self.restarted.append(f"{kind} exited ({proc.returncode})")
                self.start_node(kind)

    async def run(self, fault: Callable[[Pipeline], Awaitable[str]]) -> str:
        """Feed PER_PHASE ids, start the nodes, run ``fault`` while more are fed at RATE per
        second, then feed PER_PHASE more and wait for every id on both outputs."""
        serial, parallel = self.tally["serial"], self.tally["parallel"]
        targets = {
            self.out["serial"]: serial.out,
            self.out["parallel"]: parallel.out,
            self.dlq["serial"]: serial.dead,
            self.dlq["parallel"]: parallel.dead,
            self.src: self.input,
        }
        reader = Reader(self.bootstrap, targets)
        async with reader, Feeder(self.bootstrap, self.src, serial, 2) as f:
            self.feeder = f
            await f.send(PER_PHASE)
            self.start_node("serial")
            self.start_node("parallel")
            await until(
                lambda: len(serial.out) >= 50 and len(parallel.out) >= 50, 120, "both nodes to run"
            )
            feeding = asyncio.create_task(f.send(2 * PER_PHASE, rate=RATE))
            # Mid-stream, by progress rather than time: a backlog in the nodes, more arriving.
            await until(
                lambda: len(serial.sent) >= PER_PHASE + PER_PHASE // 6, 60, "the feed under way"
            )
            notes = await fault(self)
            await feeding
            self.replace_exited_nodes()
            await f.send(PER_PHASE)
            parallel.sent = set(serial.sent)
            await until(
                lambda: serial.sent <= serial.out.keys() and parallel.sent <= parallel.out.keys(),
                180,
                lambda: (
                    "every message on both outputs; missing "
                    f"{len(serial.lost)} / {len(parallel.sent - parallel.out.keys())}"
                ),
            )
            await asyncio.sleep(1.0)  # late duplicates, if any, show up in the count
        twice = sum(c - 1 for c in self.input.values() if c > 1)
        notes += f"; {twice} duplicates already in the input (the feeder's retries)"
        if self.feeder.replaced:
            notes += f"; the feeder's aiokafka client was replaced {self.feeder.replaced}x"
        return notes

    def finish(self, notes: str, *, allow_dead_letters: bool = False) -> None:
        for kind in ("serial", "parallel"):
            tally = self.tally[kind]
            extra = [r for r in self.restarted if r.startswith(kind)]
            tally.notes = notes + (f"; {', '.join(extra)} and was started again" if extra else "")
            tally.report()
            tally.assert_nothing_lost()
            if not allow_dead_letters:
                assert not tally.dead, f"{tally.scenario}: dead-lettered {sorted(tally.dead)[:10]}"


def _run(cluster: LocalKafkaCluster, tmp_path: Path, scenario: str, fault: Any, **kw: Any) -> None:
    pipeline = Pipeline(cluster, tmp_path, scenario)
    try:
        notes = asyncio.run(pipeline.run(fault))
        for kind, proc in pipeline.procs.items():
            assert proc.poll() is None, f"{kind} died:\n{pipeline.nodes.log(proc)[-3000:]}"
    finally:
        pipeline.nodes.cleanup()
        _bring_back(cluster)
    pipeline.finish(notes, **kw)


def _bring_back(cluster: LocalKafkaCluster) -> None:
    """Whatever a scenario left down or frozen runs again before the next one."""
    for node_id in range(1, cluster.size + 1):
        node = cluster.node(node_id)
        if node.is_running():
            cluster.thaw(node_id)
        else:
            cluster.start_node(node_id)
    cluster.wait_in_sync()


def test_leader_of_the_input_then_of_the_output_sigkilled(kafka_cluster, tmp_path):
    async def fault(p: Pipeline) -> str:
        took = []
        for topic in (p.src, p.out["serial"]):
            leader = kafka_cluster.leader(topic, 0)
            began = time.monotonic()
            kafka_cluster.kill(leader)
            new = kafka_cluster.leader(topic, 0, not_on=leader, timeout=60)
            took.append(f"{time.monotonic() - began:.1f} s ({leader}->{new})")
            await asyncio.sleep(2.0)  # the stream runs on the new leader
            kafka_cluster.start_node(leader)
            kafka_cluster.wait_in_sync()
        return (
            f"input leader SIGKILLed, new leader in {took[0]}; then the output's, {took[1]}; "
            "each brought back; the nodes were not restarted"
        )

    scenario = "SIGKILL the input's partition leader, then the output's"
    _run(kafka_cluster, tmp_path, scenario, fault)


def test_a_broker_frozen_longer_than_the_session_timeout(kafka_cluster, tmp_path):
    frozen_for = 12.0  # > broker.session.timeout.ms (3 s) and the consumers' 10 s sessions

    async def fault(p: Pipeline) -> str:
        leader = kafka_cluster.leader(p.src, 0)
        kafka_cluster.freeze(leader)
        try:
            new = kafka_cluster.leader(p.src, 0, not_on=leader, timeout=60)
            await asyncio.sleep(frozen_for)
        finally:
            kafka_cluster.thaw(leader)
        kafka_cluster.wait_in_sync()
        return (
            f"input leader {leader} SIGSTOPped {frozen_for:.0f} s (leadership moved to {new}), "
            "then SIGCONTed; the nodes were not restarted"
        )

    _run(kafka_cluster, tmp_path, f"a broker frozen (SIGSTOP) {frozen_for:.0f} s", fault)


def test_two_of_three_brokers_down(kafka_cluster, tmp_path):
    """Below min.insync.replicas (and without a controller quorum) nothing can be
    acknowledged: outputs wait (or the node stops, saying why), offsets do not move past
    them, and everything flows once a broker returns. The Consumer is SIGKILLed during the
    outage: had it committed anything unacknowledged, its next instance would miss it."""

    async def fault(p: Pipeline) -> str:
        survivor = kafka_cluster.leader(p.src, 0)
        down = [n for n in (1, 2, 3) if n != survivor]
        for node_id in down:
            kafka_cluster.kill(node_id)
        began = time.monotonic()
        await asyncio.sleep(2.0)  # what was written before the kill is read by now
        before = {k: sum(t.out.values()) for k, t in p.tally.items()}
        await asyncio.sleep(6.0)
        during = {k: sum(t.out.values()) - before[k] for k, t in p.tally.items()}
        p.nodes.kill(p.procs["serial"])  # offsets must not have passed unacknowledged outputs
        kafka_cluster.start_node(down[0])
        outage = time.monotonic() - began
        p.start_node("serial")
        kafka_cluster.start_node(down[1])
        return (
            f"nodes {down} SIGKILLed for {outage:.1f} s (only {survivor} up); new outputs in "
            f"6 s of it: {during['serial']} / {during['parallel']}; the Consumer "
            "was SIGKILLed during the outage and a new instance started after it"
        )

    _run(kafka_cluster, tmp_path, "two of three brokers down", fault)


def test_rolling_restart_of_all_three_brokers(kafka_cluster, tmp_path):
    async def fault(p: Pipeline) -> str:
        took = []
        for node_id in (1, 2, 3):
            began = time.monotonic()
            kafka_cluster.restart(node_id)  # SIGTERM: a controlled shutdown
            kafka_cluster.wait_in_sync()  # as an operator waits before the next one
            took.append(time.monotonic() - began)
        return (
            "nodes 1, 2, 3 restarted (SIGTERM) one after another, each back in sync in "
            + ", ".join(f"{t:.1f}" for t in took)
            + " s; the nodes were not restarted"
        )

    _run(kafka_cluster, tmp_path, "rolling restart of all three brokers", fault)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lock_port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_master_and_dynamic_partitions_on_the_cluster(kafka_cluster, tmp_path):
    """The auto-scaling master's control topic and the partitions a joining node adds are
    replicated like any topic, and a leader crash meanwhile loses nothing."""
    bootstrap = kafka_cluster.bootstrap
    src, out, dlq = _topic(kafka_cluster), _topic(kafka_cluster), _topic(kafka_cluster)
    control = f"c-control-{uuid.uuid4().hex[:8]}"  # the master creates it
    group = f"g-{uuid.uuid4().hex[:8]}"
    lock_port = _free_port()
    config = tmp_path / "master.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "consumer_topic": control,
                "consumer_server": bootstrap,
                "consumer_group_id": "rel-cluster-master",
                "included_worker": ["STATISTIC_WORKER", "DISTRIBUTED_LOCK_WORKER"],
                "statistic_worker_config": {"refresh_rate": 1},
                "distributed_worker_config": {"master_host": "127.0.0.1", "master_port": lock_port},
                "lookback_seconds": 60,
            }
        )
    )
    tally = Tally("cluster: auto-scaling master, a node joining (partitions 1->2), leader SIGKILL")
    nodes = Nodes(tmp_path)
    master_log = tmp_path / "master.log"

    def env(instance: str) -> dict[str, str]:
        return node_env(
            bootstrap,
            src,
            out,
            group,
            ECHO_DELAY=0.01,
            DEAD_LETTER_TOPIC=dlq,
            FOGVERSE_OBSERVER_TOPIC=control,
            FOGVERSE_OBSERVER_SERVERS=bootstrap,
            FOGVERSE_INSTANCE_ID=instance,
            FOGVERSE_HEARTBEAT_INTERVAL=0.5,
            FOGVERSE_DYNAMIC_PARTITIONS=f"127.0.0.1:{lock_port}",
        )

    with master_log.open("ab") as log:
        master = subprocess.Popen(
            [sys.executable, "-m", "fogverse", "master", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def scenario() -> str:
        reader = Reader(bootstrap, {out: tally.out, dlq: tally.dead})
        async with reader, Feeder(bootstrap, src, tally, partitions=0) as feeder:
            await until(lambda: _lock_port_open(lock_port), 60, "the lock service")
            a = nodes.start("HeartbeatEcho", env("rel-a"), "a")
            feeding = asyncio.create_task(feeder.send(2 * PER_PHASE, rate=RATE))
            await until(lambda: len(tally.out) >= 50, 120, "the first node")
            b = nodes.start("HeartbeatEcho", env("rel-b"), "b")
            await until(
                lambda: re.search(r"joins group .* 1->2", nodes.log(b)) is not None,
                120,
                "the second node to add a partition",
            )
            leader = kafka_cluster.leader(src, 1)
            kafka_cluster.kill(leader)
            new = kafka_cluster.leader(src, 1, not_on=leader, timeout=60)
            await feeding
            kafka_cluster.start_node(leader)
            await until(lambda: tally.sent <= tally.out.keys(), 180, "every message")
            await asyncio.sleep(1.0)
            for proc in (a, b):
                assert proc.poll() is None, nodes.log(proc)[-3000:]
            assert master.poll() is None, master_log.read_text()[-3000:]
        return f"{leader}->{new}"

    try:
        moved = asyncio.run(scenario())
        replicas = {t: _replicas(kafka_cluster, t) for t in (src, control)}
    finally:
        master.kill()
        master.wait(10)
        nodes.cleanup()
        _bring_back(kafka_cluster)
    assert replicas[src] == [3, 3], f"the added partition is not replicated: {replicas}"
    assert all(r == 3 for r in replicas[control]), f"control topic not replicated: {replicas}"
    tally.notes = (
        f"input grew to 2 partitions (RF 3 each), control topic RF 3; the new partition's "
        f"leader SIGKILLed ({moved}) while both nodes ran; no node restarted"
    )
    tally.report()
    tally.assert_nothing_lost()
    assert not tally.dead


def _read_all(bootstrap: str, topic: str) -> list[int]:
    """Every sequence number in ``topic``'s partition 0, in log order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"r-{topic}", "enable.auto.commit": False}
    )
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
        consumer.assign([TopicPartition(topic, 0, 0)])
        seqs: list[int] = []
        offset = -1
        deadline = time.monotonic() + 60
        while offset < end - 1:
            assert time.monotonic() < deadline, f"read {len(seqs)} of {end} records"
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                seqs.append(int(msg.value()))
                offset = msg.offset()
        return seqs
    finally:
        consumer.close()


def test_producer_defaults_across_a_leader_change(kafka_cluster):
    """The nodes' producer transport with its defaults (acks=all, idempotent) while the
    partition leader is SIGKILLed: every acknowledged record is in the log, in send order,
    and none twice."""
    from fogverse.transport.confluent import ConfluentProducerTransport

    topic = _topic(kafka_cluster)
    total = 3000

    async def produce() -> tuple[int, str]:
        producer = ConfluentProducerTransport(kafka_cluster.bootstrap)
        assert producer.config["acks"] == "all" and producer.config["enable.idempotence"]
        await producer.start()
        acked = 0
        try:
            pending = []
            for seq in range(total):
                pending.append(await producer.send(topic, str(seq).encode()))
                if seq == total // 3:
                    leader = kafka_cluster.leader(topic, 0)
                    kafka_cluster.kill(leader)
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    acked += len(pending)
                    pending.clear()
            await asyncio.gather(*pending)
            acked += len(pending)
        finally:
            await producer.stop()
        return acked, f"{leader}->{kafka_cluster.leader(topic, 0, not_on=leader)}"

    try:
        acked, moved = asyncio.run(produce())
        log = _read_all(kafka_cluster.bootstrap, topic)
    finally:
        _bring_back(kafka_cluster)
    assert acked == total
    firsts = list(dict.fromkeys(log))
    assert sorted(set(log)) == list(range(total)), "acknowledged records are missing"
    assert firsts == list(range(total)), "records out of order across the leader change"
    duplicated = len(log) - total
    assert duplicated == 0, f"the idempotent producer wrote {duplicated} records twice"
    report_row(
        {
            "scenario": "cluster: producer defaults across a leader SIGKILL",
            "sent": total,
            "received": len(log),
            "lost": 0,
            "duplicated": duplicated,
            "dead_lettered": 0,
            "notes": f"acks=all, idempotence on; leader {moved}; log order = send order",
        }
    )
