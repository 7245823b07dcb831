"""The auto-scaling master (with the lock service it hosts) is killed and restarted while its
nodes run: the nodes never notice, a node that must join while the lock service is down fails
fast with a clear error, and the restarted master rebuilds its view from the heartbeats.

That scaling itself resumes after a master restart is tests/autoscale/test_restart.py.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from rel_harness import Feeder, Nodes, Reader, Tally, node_env, until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_master(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fogverse", "master", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _lock_port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_master_killed_and_restarted_while_its_nodes_run(kafka_bootstrap, new_topic, tmp_path):
    src, out, control, dlq = new_topic(), new_topic(), new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    lock_port = _free_port()
    config = tmp_path / "master.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "consumer_topic": control,
                "consumer_server": kafka_bootstrap,
                "consumer_group_id": "rel-master",
                "included_worker": ["STATISTIC_WORKER", "DISTRIBUTED_LOCK_WORKER"],
                "statistic_worker_config": {"refresh_rate": 1},
                "distributed_worker_config": {"master_host": "127.0.0.1", "master_port": lock_port},
                "lookback_seconds": 60,
            }
        )
    )
    master_log = tmp_path / "master.log"
    tally = Tally("auto-scaling master (and its lock service) SIGKILLed and restarted")
    nodes = Nodes(tmp_path)
    masters: list[subprocess.Popen[bytes]] = []

    def env(instance: str) -> dict[str, str]:
        return node_env(
            kafka_bootstrap,
            src,
            out,
            group,
            ECHO_DELAY=0.01,
            DEAD_LETTER_TOPIC=dlq,
            FOGVERSE_OBSERVER_TOPIC=control,
            FOGVERSE_OBSERVER_SERVERS=kafka_bootstrap,
            FOGVERSE_INSTANCE_ID=instance,
            FOGVERSE_HEARTBEAT_INTERVAL=0.5,
            FOGVERSE_DYNAMIC_PARTITIONS=f"127.0.0.1:{lock_port}",
        )

    async def scenario() -> dict[str, int]:
        seen: dict[str, int] = {}
        async with Reader(kafka_bootstrap, {out: tally.out, dlq: tally.dead}):
            async with Feeder(kafka_bootstrap, src, tally, partitions=0) as feeder:
                masters.append(_start_master(config, master_log))
                await until(lambda: _lock_port_open(lock_port), 60, "the lock service")
                a = nodes.start("HeartbeatEcho", env("rel-a"), "a")
                feeding = asyncio.create_task(feeder.send(1500, rate=100))
                await until(lambda: len(tally.out) >= 100, 90, "the first node")
                masters[0].send_signal(signal.SIGKILL)
                masters[0].wait(10)
                seen["at_kill"] = len(tally.out)
                # Joining needs the lock service: without it a node stops at once, saying why.
                early = nodes.start("HeartbeatEcho", env("rel-early"), "early")
                code = await asyncio.to_thread(early.wait, 60)
                assert code != 0 and "cannot connect to lock server" in nodes.log(early)
                # Meanwhile the running node has carried on without its master.
                await until(lambda: len(tally.out) >= seen["at_kill"] + 200, 60, "progress")
                seen["without_master"] = len(tally.out) - seen["at_kill"]
                masters.append(_start_master(config, master_log))
                await until(lambda: _lock_port_open(lock_port), 60, "the restarted lock service")
                b = nodes.start("HeartbeatEcho", env("rel-b"), "b")
                await feeding
            await until(lambda: tally.sent <= tally.out.keys(), 90, "every message")
            await asyncio.sleep(1.0)
            for proc in (a, b):
                assert proc.poll() is None, nodes.log(proc)
            log = master_log.read_text()
            # Joined through the restarted lock service, growing the topic for itself.
            assert re.search(r"joins group .* 1->2", nodes.log(b)), nodes.log(b)
            assert "owns [(" in nodes.log(b), nodes.log(b)
            for proc in (a, b):
                assert nodes.kill(proc, signal.SIGTERM) == 0, nodes.log(proc)
            masters[1].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(masters[1].wait, 30) == 0, log[-3000:]
            caught_up = [line for line in log.splitlines() if "caught up with" in line]
            assert len(caught_up) == 2, log[-3000:]
            # The restarted master knew the node that had run all along from its heartbeats.
            live = re.search(r"(\d+) live instances", caught_up[1])
            assert live is not None and int(live.group(1)) >= 1, caught_up[1]
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        for m in masters:
            if m.poll() is None:
                m.kill()
            m.wait(10)
        nodes.cleanup()
    tally.notes = (
        f"{seen['without_master']} messages went through while the master was down; "
        "a node joining meanwhile exited with a clear error; one joining after the restart "
        "got work"
    )
    tally.report()
    tally.assert_nothing_lost()
    assert not tally.dead
