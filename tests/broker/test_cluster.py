"""The multi-broker launcher: `fogverse broker start --brokers 3` and its replication defaults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until
from test_launcher import _kill_jvms_under, needs_tools

from fogverse.broker import BrokerError, LocalKafkaCluster, pid_alive, replication_defaults
from fogverse.broker import cluster as cluster_module

pytestmark = pytest.mark.fault


@pytest.mark.parametrize(("brokers", "rf", "min_isr"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_replication_defaults_follow_the_cluster_size(brokers: int, rf: int, min_isr: int) -> None:
    conf = replication_defaults(brokers)
    assert conf["default.replication.factor"] == rf
    assert conf["offsets.topic.replication.factor"] == rf
    assert conf["transaction.state.log.replication.factor"] == rf
    assert conf["min.insync.replicas"] == min_isr
    assert conf["transaction.state.log.min.isr"] == min_isr


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_cli_starts_a_replicated_cluster_and_stops_every_jvm(tmp_path: Path) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    state_dir = tmp_path / "state"
    env = {**os.environ, "FOGVERSE_STATE_DIR": str(state_dir), "TMPDIR": str(tmp_path)}

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fogverse", "broker", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )

    pids: list[int] = []
    try:
        started = broker("start", "--brokers", "3")
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.count("127.0.0.1:") == 3
        state = json.loads((state_dir / "broker.json").read_text())
        pids = [node["pid"] for node in state["nodes"]]
        assert len(set(pids)) == 3 and all(pid_alive(pid) for pid in pids)

        admin = AdminClient({"bootstrap.servers": bootstrap})
        # Every node answers and lists all three.
        for node in state["nodes"]:
            one = AdminClient({"bootstrap.servers": node["bootstrap"]})
            assert set(one.list_topics(timeout=20).brokers) == {1, 2, 3}
        # A topic made without a replication factor gets the cluster's defaults.
        topic = f"rf-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, 2)])[topic].result(timeout=60)
        parts = admin.list_topics(topic=topic, timeout=20).topics[topic].partitions
        assert all(len(p.replicas) == 3 for p in parts.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs: dict[str, Any] = {}

        def described() -> bool:
            # Each broker learns of a new topic from the controller in its own time: the one
            # asked may not know it yet (seen in CI as UNKNOWN_TOPIC_OR_PART).
            try:
                configs.update(admin.describe_configs([resource])[resource].result(timeout=20))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                return False
            return True

        wait_until(described, 60, f"the configs of {topic}", interval=0.2)
        assert configs["min.insync.replicas"].value == "2"

        status = broker("status")
        assert status.returncode == 0 and status.stdout.startswith(f"running {bootstrap}")

        stopped = broker("stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(
            lambda: not any(pid_alive(pid) for pid in pids), 30, "every node to exit", interval=0.1
        )
        assert not Path(state["cluster_dir"]).exists()
        assert broker("status").returncode == 3
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        _kill_jvms_under(tmp_path)


@pytest.mark.timeout(30)
def test_a_cluster_not_started_has_a_repr_and_no_nodes_to_wait_for() -> None:
    cluster = LocalKafkaCluster(3)
    assert "0/3 running not started" in repr(cluster)
    with pytest.raises(BrokerError, match="no node is running"):
        cluster.wait_agreed(timeout=1)


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_cluster_starts_again_on_the_data_dir_it_left(tmp_path: Path) -> None:
    """`fogverse broker start --brokers 2 --data-dir D`, stop, start again: the nodes come back
    on the ports their directories were formatted with, data and all."""
    from confluent_kafka.admin import AdminClient, NewTopic

    data = tmp_path / "cluster"
    first = LocalKafkaCluster(2, data_dir=data)
    try:
        first.start()
        bootstrap = first.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("kept", 1)])["kept"].result(timeout=60)
        first.stop()
        assert all((data / f"node-{i}" / "logs").is_dir() for i in (1, 2))

        with LocalKafkaCluster(2, data_dir=data) as second:
            assert second.bootstrap == bootstrap
            topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
            assert "kept" in topics
    finally:
        first.stop(0)
        _kill_jvms_under(tmp_path)


@needs_tools
@pytest.mark.kafka
@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", [1, 3], ids=["client-port", "controller-port"])
def test_a_port_taken_before_a_node_binds_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: int
) -> None:
    """A port the cluster chose is bound by someone else before node 2's JVM binds it (a
    client's outgoing connection takes free ports too): the start failed. With node 2's
    controller port taken, node 1 also waited for a quorum until the start timeout, and the
    failure was reported as node 1's ("did not open port")."""
    taken = socket.socket()  # bound, not listening: what an outgoing connection holds
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    real = cluster_module._free_ports
    chosen: list[list[int]] = []

    def free_ports(count: int) -> list[int]:
        ports = real(count)
        if not chosen:
            ports[index] = port  # [client 1, client 2, controller 1, controller 2]
        chosen.append(ports)
        return ports

    monkeypatch.setattr(cluster_module, "_free_ports", free_ports)
    cluster = LocalKafkaCluster(2, data_dir=tmp_path / "cluster", start_timeout=60)
    try:
        cluster.start()
        assert len(chosen) == 2 and port not in chosen[1]
        assert all(node.is_running() for node in cluster.nodes)
    finally:
        cluster.stop(0)
        taken.close()
        _kill_jvms_under(tmp_path)
