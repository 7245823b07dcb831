"""A master killed with SIGKILL while its instances run, then restarted: the new master
rebuilds its state from the control topic and scaling resumes where it was, within
max_instance and deploy_delay. Masters run as real processes through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from polling import until
from scaling_harness import NODES, feed, slow_stage_deployer, start_first_instance

from fogverse.autoscale import DeployEvent, Master

PARTITIONS = 6
MAX_INSTANCE = 4
DEPLOY_DELAY = 5.0


def _write_config(path: Path, bootstrap: str, control: str, log: Path) -> None:
    conf = {
        "consumer_topic": control,
        "consumer_server": bootstrap,
        "consumer_group_id": "restart-master",
        "included_worker": ["AUTO_DEPLOYER", "INPUT_OUTPUT_WORKER"],
        "auto_deployer_config": {
            "deploy_delay": DEPLOY_DELAY,
            "after_heartbeat_delay": 2,
            "startup_timeout": 40,
            "tick": 0.25,
        },
        "input_output_worker_config": {
            "refresh_rate_second": 1,
            "input_output_ratio_threshold": 0.9,
            "window_seconds": 3,
        },
        "lookback_seconds": 60,
        "deploy_scripts": {
            "LOCAL": {
                "type": "local",
                "services": {
                    "slow": {
                        "command": [sys.executable, "-m", "fogverse", "run", f"{NODES}:SlowStage"],
                        "env": {
                            "SLOW_STAGE_MAX": str(MAX_INSTANCE),
                            "FOGVERSE_HEARTBEAT_INTERVAL": "0.5",
                            "FOGVERSE_BOOTSTRAP": bootstrap,
                        },
                        "output": str(log),
                        "stop_timeout": 10,
                    }
                },
            }
        },
    }
    path.write_text(yaml.safe_dump(conf))


class Masters:
    """Master processes, each leading its own process group, which its LOCAL instances
    join: killing a group at the end leaves no instance behind, even after a SIGKILL."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.groups: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fogverse.autoscale.cli", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.groups.append(proc.pid)
        return proc

    def members(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(p.pid) in self.groups:
                    out.append(p)
        return out

    def cleanup(self) -> None:
        members = self.members()
        for p in members:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(members, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        assert not self.members(), "processes outlived the test"


class Deploys:
    def __init__(self) -> None:
        self.events: list[DeployEvent] = []

    def on_message(self, message: Any) -> None:
        if isinstance(message, DeployEvent) and message.action == "deploy":
            self.events.append(message)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_master_killed_and_restarted_resumes_scaling_from_heartbeats(
    kafka_bootstrap: str, new_topic: Any, tmp_path: Path
) -> None:
    src, out = new_topic(partitions=PARTITIONS), new_topic()
    control = new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "master.yaml"
    _write_config(config, kafka_bootstrap, control, tmp_path / "instances.log")
    masters = Masters(config, tmp_path / "master.log")
    first = slow_stage_deployer(tmp_path / "first.log", MAX_INSTANCE, kafka_bootstrap)
    stage = (src, out)

    async def scenario() -> dict[str, Any]:
        deploys = Deploys()
        # A passive master with no workers: the test's view of the control topic.
        watcher = Master(control, "watcher", kafka_bootstrap, [deploys], lookback_seconds=60)
        watch = asyncio.create_task(watcher.run())
        await asyncio.to_thread(
            start_first_instance,
            first,
            src=src,
            out=out,
            group=group,
            control=control,
            bootstrap=kafka_bootstrap,
            max_instance=MAX_INSTANCE,
        )
        live = lambda: len(watcher.state.instances_of(stage))  # noqa: E731
        await until(lambda: live() == 1, 40, "the first instance", interval=0.2)
        master1 = masters.start()
        feeding = asyncio.create_task(feed(kafka_bootstrap, src, PARTITIONS, control, 50.0, 60.0))
        try:
            await until(
                lambda: len(deploys.events) >= 1 and live() >= 2,
                60,
                "the first master to scale out once",
                interval=0.2,
            )
            master1.send_signal(signal.SIGKILL)
            master1.wait(10)
            killed_at = time.time()
            deploys_before = list(deploys.events)
            await asyncio.sleep(3)
            assert live() >= 2, "the instances died with their master"
            master2 = masters.start()
            await until(
                lambda: len(deploys.events) > len(deploys_before) and live() >= 3,
                60,
                "the restarted master to scale out further",
                interval=0.2,
            )
            peak = max(live(), 0)
            for _ in range(10):  # watch a little longer: no burst of redeploys follows
                await asyncio.sleep(0.5)
                peak = max(peak, live())
            master2.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(master2.wait, 30)
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeding
            watcher.stop()
            await watch
        return {
            "deploys": deploys.events,
            "before": deploys_before,
            "killed_at": killed_at,
            "peak": peak,
            "code": code,
        }

    try:
        result = asyncio.run(scenario())
    finally:
        first.stop_all(timeout=10)
        masters.cleanup()
    after = [e for e in result["deploys"] if e.ts > result["killed_at"]]
    print(
        f"\ndeploys before the kill: {len(result['before'])}, after the restart: "
        f"{len(after)}; peak instances {result['peak']}"
    )
    assert result["code"] == 0, (tmp_path / "master.log").read_text()[-3000:]
    assert after, "the restarted master never deployed"
    assert result["peak"] <= MAX_INSTANCE
    # The restarted master counted the running instances: it did not start from zero.
    assert len(result["deploys"]) <= MAX_INSTANCE - 1
    times = sorted(e.ts for e in result["deploys"])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= DEPLOY_DELAY - 0.01 for g in gaps), f"deploy_delay not kept: {gaps}"
    for name in ("instances.log", "first.log"):
        text = (tmp_path / name).read_text()
        assert "Traceback" not in text, text[-3000:]
    log = (tmp_path / "master.log").read_text()
    caught_up = [line for line in log.splitlines() if "caught up with the control topic" in line]
    assert len(caught_up) == 2
    # The second master knew both running instances of the stage before deciding anything.
    assert "(2 in auto-scaled stages), 1 stages" in caught_up[1], log[-3000:]
