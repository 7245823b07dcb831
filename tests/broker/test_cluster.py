"""The multi-broker launcher: `fogverse broker start --brokers 3` and its replication defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until
from test_launcher import _kill_jvms_under, needs_tools

from fogverse.broker import pid_alive, replication_defaults

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
