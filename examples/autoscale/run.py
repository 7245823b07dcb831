"""Auto-scaling demo: a camera at 50 frames/s, a detector that manages 20 frames/s per
instance, and a master that starts detector instances (local processes) until it keeps up.

    fogverse broker start          # or any Kafka; then:
    FOGVERSE_BOOTSTRAP=host:port .venv/bin/python examples/autoscale/run.py

Prints a timeline every 2 s and stops by itself after ~60 s (EXAMPLE_SECONDS), stopping every
instance it started and deleting its topics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from fogverse.autoscale import (
    AutoScaleComponent,
    DeployScripts,
    LocalDeployer,
    LocalService,
    Observer,
    Worker,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipeline import Camera, Sink  # noqa: E402

FPS = 50.0
SECONDS = float(os.environ.get("EXAMPLE_SECONDS", "60"))
FEED_SECONDS = max(10.0, SECONDS - 15)  # leave time to drain the backlog
PARTITIONS = 6
MAX_INSTANCE = 4
LOG = Path(tempfile.gettempdir()) / "fogverse-autoscale-example-detector.log"


def create_topics(admin: AdminClient, names: dict[str, int]) -> None:
    futures = admin.create_topics([NewTopic(n, num_partitions=p) for n, p in names.items()])
    for f in futures.values():
        f.result(30)


def master_config(bootstrap: str, control: str) -> dict:
    return {
        "consumer_topic": control,
        "consumer_server": bootstrap,
        "consumer_group_id": "example-master",
        "auto_deployer_config": {
            "deploy_delay": 5,
            "after_heartbeat_delay": 2,
            "stop_instances_on_exit": True,
        },
        "statistic_worker_config": {"z_value": 2.0, "refresh_rate": 1, "maximum_seconds": 30},
        "included_worker": [
            Worker.AUTO_DEPLOYER,
            Worker.DISTRIBUTED_LOCK_WORKER,
            Worker.STATISTIC_WORKER,
            Worker.INPUT_OUTPUT_WORKER,
        ],
        "distributed_worker_config": {"master_host": "127.0.0.1", "master_port": 0},
        "input_output_worker_config": {
            "refresh_rate_second": 1,
            "input_output_ratio_threshold": 0.9,
            "window_seconds": 3,
        },
    }


async def main() -> None:
    bootstrap = os.environ.get("FOGVERSE_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("set FOGVERSE_BOOTSTRAP=host:port (e.g. from `fogverse broker start`)")
    run_id = uuid.uuid4().hex[:6]
    frames, boxes, control = f"frames-{run_id}", f"boxes-{run_id}", f"autoscale-{run_id}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    await asyncio.to_thread(create_topics, admin, {frames: PARTITIONS, boxes: 1, control: 1})

    detector = LocalDeployer(
        {
            "detector": LocalService(
                [sys.executable, "-m", "fogverse", "run", f"{HERE / 'pipeline.py'}:Detector"],
                env={"DETECTOR_MAX": str(MAX_INSTANCE), "FOGVERSE_HEARTBEAT_INTERVAL": "0.5"},
                output=str(LOG),
                stop_timeout=15,
            )
        }
    )
    scripts = DeployScripts()
    scripts.set_deploy_functions("LOCAL", detector)
    master = AutoScaleComponent().master_auto_scaler(master_config(bootstrap, control), scripts)
    camera = Camera(frames, bootstrap, FPS, FEED_SECONDS)
    Observer(
        {"kafka_server": bootstrap, "producer_topic": control, "heartbeat_interval": 0.5}
    ).attach(camera)
    sink = Sink(boxes, bootstrap, f"sink-{run_id}")
    stage = (frames, boxes)
    group = f"detector-{run_id}"

    tasks = [asyncio.create_task(master.run()), asyncio.create_task(sink.run())]
    try:
        await asyncio.to_thread(
            detector,
            logging.getLogger("example"),
            {
                "provider": "LOCAL",
                "service_name": "detector",
                "instance_id": "detector-first",
                "source_topic": frames,
                "target_topic": boxes,
                "group_id": group,
                "control_topic": control,
                "control_servers": bootstrap,
            },
        )
        tasks.append(asyncio.create_task(camera.run()))
        print(f"detector logs: {LOG}")
        print(f"{'t(s)':>5} {'instances':>9} {'in/s':>6} {'out/s':>6} {'received':>8}")
        start = time.monotonic()
        # Ctrl-C/SIGTERM stop every node (FogVerse's handlers): then wind down at once, not
        # after SECONDS, or a supervisor's SIGKILL leaves the detector instances running.
        while time.monotonic() - start < SECONDS and not sink.stopping:
            await asyncio.sleep(2)
            now = master.state.clock()
            end = now - master.state.max_interval()
            rin = master.state.rates.rate(frames, end - 2, end)
            rout = master.state.rates.rate(boxes, end - 2, end)
            live, starting = master.deployer.counts(stage)
            grow = f"+{starting}" if starting else ""
            print(
                f"{time.monotonic() - start:5.0f} {live:>5}{grow:<4} {rin:6.1f} {rout:6.1f} "
                f"{len(sink.received):8d}",
                flush=True,
            )
        if sink.stopping:
            print("interrupted: stopping the detector instances")
        deploys = [r for r in master.deployer.records if r.action == "deploy"]
        print(
            f"camera sent {camera.sent}, sink received {len(sink.received)} distinct; "
            f"{len(deploys)} deploys, at most {MAX_INSTANCE} instances"
        )
    finally:
        camera.stop()
        sink.stop()
        master.stop()  # stop_instances_on_exit: the deployed detectors stop with it
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(detector.stop_all, 15)
        await asyncio.to_thread(
            lambda: [f.result(10) for f in admin.delete_topics([frames, boxes, control]).values()]
        )


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("fogverse.autoscale.workers.deployer").setLevel(logging.INFO)
    asyncio.run(main())
