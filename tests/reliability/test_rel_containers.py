"""The DOCKER provider on a real engine: podman's Docker-compatible API, driven by the docker
SDK, running containers of the node image (deploy/image, built and cached by the fixture).

The stage is tests/autoscale/autoscale_nodes.py's SlowStage (≈ 20 messages/s per instance),
mounted read-only into each container and run by the image's ``fogverse run`` entrypoint. The
containers share the host's network, so they reach the session's broker on 127.0.0.1.
Counted like the reliability table: every id sent, every id seen on the output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from podman_engine import engine, node_image, session_label  # noqa: F401  (fixtures)
from rel_harness import Feeder, Reader, Tally, until

from fogverse.autoscale import AutoScaleComponent, DeployScripts, Worker
from fogverse.autoscale.workers.lag import GroupOffsets, measure_lag

pytest.importorskip("docker")

from fogverse.autoscale.deploy.docker import DockerDeployer, DockerService

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

NODES_DIR = Path(__file__).resolve().parents[1] / "autoscale"
PARTITIONS = 6
RATE = 50.0  # 2.5 instances' worth: the master must reach three
TAIL_RATE = 8.0  # well within one instance
MAX_INSTANCE = 4


def slow_stage(image: str, bootstrap: str, labels: dict[str, str], **service: Any) -> Any:
    return DockerService(
        image=image,
        command=["/nodes/autoscale_nodes.py:SlowStage"],
        environment={
            "SLOW_STAGE_PROVIDER": "DOCKER",
            "SLOW_STAGE_MAX": str(MAX_INSTANCE),
            "FOGVERSE_HEARTBEAT_INTERVAL": "0.5",
            "FOGVERSE_BOOTSTRAP": bootstrap,
        },
        network="host",
        labels=labels,
        run_options={"volumes": {str(NODES_DIR): {"bind": "/nodes", "mode": "ro"}}},
        **service,
    )


def stage_config(src: str, out: str, group: str, control: str, bootstrap: str, iid: str) -> Any:
    return {
        "provider": "DOCKER",
        "service_name": "slow",
        "max_instance": MAX_INSTANCE,
        "extra_configs": {},
        "instance_id": iid,
        "source_topic": src,
        "target_topic": out,
        "group_id": group,
        "control_topic": control,
        "control_servers": bootstrap,
    }


def master_conf(bootstrap: str, control: str) -> dict[str, Any]:
    return {
        "consumer_topic": control,
        "consumer_server": bootstrap,
        "consumer_group_id": f"master-{uuid.uuid4().hex[:6]}",
        "included_worker": [Worker.AUTO_DEPLOYER, Worker.LAG_WORKER],
        "auto_deployer_config": {
            "deploy_delay": 3,
            "after_heartbeat_delay": 2,
            "startup_timeout": 90,
            "tick": 0.25,
            "stabilisation_window": 4,
        },
        "lag_worker_config": {"lag_threshold": 50, "refresh_rate_second": 1},
        "lookback_seconds": 30,
    }


class Feed:
    """Feeds ``rate`` ids per second (changeable) until stopped."""

    def __init__(self, feeder: Feeder, rate: float) -> None:
        self.feeder, self.rate = feeder, rate
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.feeder.send(max(1, round(self.rate / 2)), self.rate)

    async def stop(self) -> None:
        self._stop.set()
        await self.task


def backlog(tally: Tally) -> int:
    return len(tally.sent - tally.out.keys())


# The first test to ask for the image builds it: on a fresh machine that is minutes (the
# build's own deadline), once; afterwards a tag lookup.
@pytest.mark.timeout(1700)
def test_node_image_builds_and_runs_fogverse_as_a_non_root_user(
    engine: Any,  # noqa: F811
    node_image: str,  # noqa: F811
    session_label: dict[str, str],  # noqa: F811
) -> None:
    config = engine.images.get(node_image).attrs["Config"]
    assert config["Entrypoint"] == ["fogverse", "run"]
    assert config["User"] == "fogverse"
    out = engine.containers.run(
        node_image,
        ["-c", f"import os, cv2, onnxruntime, skimage\n{_SOURCES}\nprint(os.getuid(), sources())"],
        entrypoint=["python3"],
        labels=session_label,
        remove=True,
    )
    uid, digest = out.decode().split()
    assert uid == "10001"
    # The image's FogVerse is this checkout's (a stale build cache would not be).
    namespace: dict[str, Any] = {}
    exec(_SOURCES, namespace)
    assert digest == namespace["sources"]()


# A digest of the installed fogverse package's Python sources.
_SOURCES = (
    "import hashlib, pathlib, fogverse\n"
    "def sources():\n"
    "    root = pathlib.Path(fogverse.__file__).parent\n"
    "    h = hashlib.sha256()\n"
    "    for f in sorted(root.rglob('*.py')):\n"
    "        h.update(str(f.relative_to(root)).encode() + f.read_bytes())\n"
    "    return h.hexdigest()"
)


@pytest.mark.timeout(420)
def test_master_scales_containers_out_and_in_through_the_engine(
    kafka_bootstrap: str,
    new_topic: Any,
    engine: Any,  # noqa: F811
    node_image: str,  # noqa: F811
    session_label: dict[str, str],  # noqa: F811
) -> None:
    """Out: 50 msg/s into one 20 msg/s container; the master starts containers until the
    backlog is under a second of input. In: at 8 msg/s, the master stops its containers with
    SIGTERM one by one; each exits 0 (it drained and committed), and no id is lost or
    processed twice (a container that had not committed would leave its outputs to be made
    again by the next owner of its partitions)."""
    src, out = new_topic(partitions=PARTITIONS, prefix="ct-src"), new_topic(prefix="ct-out")
    control = new_topic(prefix="ct-ctl")
    group = f"g-{uuid.uuid4().hex[:8]}"
    deployer = DockerDeployer(
        {"slow": slow_stage(node_image, kafka_bootstrap, session_label, remove_on_stop=False)},
        client=engine,
    )
    tally = Tally("DOCKER provider on podman: scaled out at 50 msg/s, in (SIGTERM) at 8 msg/s")
    stage = (src, out)

    async def scenario() -> dict[str, Any]:
        scripts = DeployScripts()
        scripts.set_deploy_functions("DOCKER", deployer)
        master = AutoScaleComponent().master_auto_scaler(
            master_conf(kafka_bootstrap, control), scripts
        )
        run = asyncio.create_task(master.run())
        facts: dict[str, Any] = {"master": master}
        try:
            async with (
                Reader(kafka_bootstrap, {out: tally.out}),
                Feeder(kafka_bootstrap, src, tally, PARTITIONS) as feeder,
            ):
                await until(master.ready.is_set, 60, "the master to catch up")
                # The stage's first instance, started by hand as a user would.
                first = await asyncio.to_thread(
                    deployer,
                    logger,
                    stage_config(src, out, group, control, kafka_bootstrap, "slow-first"),
                )
                assert first is not None
                await until(
                    lambda: stage in master.state.stages and master.deployer.counts(stage)[0] == 1,
                    120,
                    "the first container to register its stage",
                )
                feed = Feed(feeder, RATE)
                await until(
                    lambda: master.deployer.counts(stage)[0] >= 3,
                    240,
                    lambda: f"three live containers (have {master.deployer.counts(stage)})",
                )
                facts["peak_backlog"] = backlog(tally)
                await until(
                    lambda: backlog(tally) <= RATE,
                    120,
                    lambda: f"the backlog to drain (is {backlog(tally)})",
                )
                facts["scaled_to"] = master.deployer.counts(stage)[0]
                # In: the load drops; the master may now stop what it started.
                feed.rate = TAIL_RATE
                master.deployer.settings = dataclasses.replace(
                    master.deployer.settings, scale_in=True
                )

                def ours() -> list[Any]:
                    return [h for h in deployer.handles if h is not first]

                # Down to the first container (the only one the master did not start); a
                # container the master started meanwhile must be stopped too.
                await until(
                    lambda: (
                        all(h.exit_code is not None for h in ours())
                        and master.deployer.counts(stage) == (1, 0)
                    ),
                    180,
                    lambda: (
                        "the master to stop its containers "
                        f"({[(h.instance_id, h.exit_code) for h in ours()]})"
                    ),
                )
                started = ours()
                await feed.stop()
                await until(
                    lambda: tally.sent <= tally.out.keys(),
                    120,
                    lambda: f"every id on the output ({backlog(tally)} missing)",
                )
                await asyncio.sleep(1.0)  # let a late duplicate show up
                facts["started"] = started
                if run.done():
                    run.result()
        finally:
            master.stop()
            await asyncio.wait_for(run, 60)
        return facts

    facts = asyncio.run(scenario())
    started = facts["started"]
    scale_ins = [r for r in facts["master"].deployer.records if r.action == "scale-in"]
    tally.notes = (
        f"{len(started)} containers started by the master, live together: "
        f"{facts['scaled_to']}; backlog {facts['peak_backlog']} when the third joined; "
        f"{len(scale_ins)} stopped by scale-in with exit statuses "
        f"{[h.exit_code for h in started]}"
    )
    tally.report()
    tally.assert_nothing_lost()
    assert len(started) >= 2 and facts["scaled_to"] >= 3
    assert len(scale_ins) == len(started)
    assert [h.exit_code for h in started] == [0] * len(started), "a container did not drain"
    assert tally.duplicates == 0, f"{tally.duplicates} ids processed twice"


@pytest.mark.timeout(300)
def test_container_sigkilled_mid_stream_has_its_work_read_again(
    kafka_bootstrap: str,
    kafka_admin: Any,
    new_topic: Any,
    engine: Any,  # noqa: F811
    node_image: str,  # noqa: F811
    session_label: dict[str, str],  # noqa: F811
) -> None:
    """The stage's only container is SIGKILLed halfway through 300 ids: its uncommitted
    work stays in Kafka, and the container started after it reads it again."""
    src, out = new_topic(partitions=PARTITIONS, prefix="ck-src"), new_topic(prefix="ck-out")
    group = f"g-{uuid.uuid4().hex[:8]}"
    deployer = DockerDeployer(
        {"slow": slow_stage(node_image, kafka_bootstrap, session_label)}, client=engine
    )
    tally = Tally("DOCKER provider on podman: the stage's container SIGKILLed mid-stream")
    total = 300

    control = new_topic(prefix="ck-ctl")

    async def scenario() -> dict[str, Any]:
        async with (
            Reader(kafka_bootstrap, {out: tally.out}),
            Feeder(kafka_bootstrap, src, tally, PARTITIONS) as feeder,
        ):
            await feeder.send(total)
            victim = await asyncio.to_thread(
                deployer,
                logger,
                stage_config(src, out, group, control, kafka_bootstrap, "slow-victim"),
            )
            assert victim is not None
            await until(lambda: len(tally.out) >= total // 2, 120, "half of the ids on the output")
            await asyncio.to_thread(victim.container.kill, "SIGKILL")
            exit_code = (await asyncio.to_thread(victim.container.wait, timeout=60))["StatusCode"]
            seen_at_kill = len(tally.out)
            lag, _ = await asyncio.to_thread(
                measure_lag,
                kafka_admin,
                GroupOffsets({"bootstrap.servers": kafka_bootstrap}),
                group,
                src,
                10.0,
            )
            successor = await asyncio.to_thread(
                deployer,
                logger,
                stage_config(src, out, group, control, kafka_bootstrap, "slow-next"),
            )
            assert successor is not None
            await until(
                lambda: tally.sent <= tally.out.keys(),
                180,
                lambda: f"every id on the output ({backlog(tally)} missing)",
            )
            await asyncio.to_thread(successor.stop)
            return {
                "exit_code": exit_code,
                "seen_at_kill": seen_at_kill,
                "lag": lag,
                "successor_exit": successor.exit_code,
            }

    facts = asyncio.run(scenario())
    tally.notes = (
        f"killed (exit {facts['exit_code']}) after {facts['seen_at_kill']} outputs with "
        f"{facts['lag']} ids uncommitted; the next container read them again "
        f"and exited {facts['successor_exit']} on SIGTERM"
    )
    tally.report()
    assert facts["exit_code"] == 137
    # Work was left uncommitted by the kill (else the test proves nothing) ...
    assert facts["lag"] > 0
    # ... and none of it is lost: the successor read it again.
    tally.assert_nothing_lost()
    assert facts["successor_exit"] == 0
