"""``python -m benchmarks.keda_containers``: one short run of a step-and-ramp load against real
containers, beside the simulation (benchmarks/scaling_sim.py) of the same run: does the
simulation that benchmarks/keda.py's table rests on predict what real containers do?

The real run: a local broker, podman's Docker-compatible API (deploy/podman), containers of
the node image (``make image``) running the suite's stage of known cost
(tests/autoscale/autoscale_nodes.py's SlowStage: 50 ms of sleep per message, so about 20
messages/s per instance, and little CPU), and the real master with its DOCKER provider. A
feeder offers the load second by second, round-robin over the partitions, and reports its
rate as the camera would (one heartbeat a second on the control topic). Every second the
run samples the group's lag (end offsets minus committed, as KEDA's scaler and the lag
worker read it) and the instances that exist (the master's live and starting ones).

The simulation: the same master configuration, the same load and the same stage, with the
container start-up it assumes set to what the real run measured (deploy until first report).

The load is a compressed step-ramp (40 msg/s, a ramp to 70, a quiet tail) and the master's
timers are shortened to fit it; both runs use the same. Writes
benchmarks/results/keda_containers.json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import write_text_atomic
from benchmarks.kafka import broker
from benchmarks.keda import CAMERA, table
from benchmarks.keda import _run as simulate
from benchmarks.scaling_sim import Load, Metrics, StageParams, step_ramp_load, summary
from fogverse.admin import admin_client
from fogverse.autoscale import AutoScaleComponent, DeployScripts
from fogverse.autoscale.messages import Heartbeat, encode_message
from fogverse.autoscale.workers.lag import GroupOffsets, measure_lag

__all__ = ["CONF", "LOAD", "PARAMS", "main", "real_run"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
NODES_DIR = ROOT / "tests" / "autoscale"
SERVICE = "slow"  # SlowStage's auto-scale request names this service

LOAD: Load = step_ramp_load(
    base=5, step=40, top=70, warm=20, hold=120, ramp=40, top_hold=40, tail=150
)
PARAMS = StageParams(partitions=6, cost=0.05)
CONF: dict[str, Any] = {
    "included_worker": ["AUTO_DEPLOYER", "STATISTIC_WORKER", "INPUT_OUTPUT_WORKER", "LAG_WORKER"],
    "auto_deployer_config": {
        "scale_in": True,
        "deploy_delay": 10,
        "after_heartbeat_delay": 10,
        "stabilisation_window": 60,
        "startup_timeout": 120,
    },
    "input_output_worker_config": {"refresh_rate_second": 10},
    "lag_worker_config": {"refresh_rate_second": 2},
}
"""FogVerse's "lag signal + scale-in" policy (benchmarks/keda.py) with its timers shortened
to the compressed load."""


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import NewTopic

    return admin_client(bootstrap), NewTopic


class _Feeder:
    """Offers ``load`` second by second, spread over each second in 0.1 s steps and
    round-robin over the partitions; one camera heartbeat a second on the control topic."""

    def __init__(self, bootstrap: str, src: str, control: str, load: Load) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.src, self.control, self.load = src, control, load
        self.sent = 0

    async def run(self, t0: float) -> None:
        credit, partition, reported = 0.0, 0, 0
        step = 0.1
        n_steps = round(self.load.duration / step)
        for i in range(n_steps):
            t = i * step
            await asyncio.sleep(max(0.0, t0 + t - time.time()))
            credit += self.load.rate(t) * step
            while credit >= 1.0:
                self.producer.produce(self.src, b"m%d" % self.sent, partition=partition)
                partition = (partition + 1) % PARAMS.partitions
                self.sent += 1
                credit -= 1.0
            self.producer.poll(0)
            if i % round(1 / step) == 0:
                now = time.time()
                beat = Heartbeat(
                    CAMERA,
                    now,
                    target_topic=self.src,
                    total_messages=self.sent - reported,
                    since=now - 1.0,
                    interval=1.0,
                )
                reported = self.sent
                self.producer.produce(self.control, encode_message(beat), key=CAMERA.encode())
        await asyncio.to_thread(self.producer.flush, 30)


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.25)


async def _real(bootstrap: str, engine: Any, image: str, label: dict[str, str]) -> dict[str, Any]:
    from fogverse.autoscale.deploy.docker import DockerDeployer, DockerService

    run_id = uuid.uuid4().hex[:6]
    src, out, control = f"kc-src-{run_id}", f"kc-out-{run_id}", f"kc-ctl-{run_id}"
    group = f"kc-{run_id}"
    admin, new_topic = _admin(bootstrap)
    futures = admin.create_topics(
        [new_topic(src, PARAMS.partitions, 1), new_topic(out, 1, 1), new_topic(control, 1, 1)]
    )
    for fut in futures.values():
        await asyncio.wrap_future(fut)
    deployer = DockerDeployer(
        {
            SERVICE: DockerService(
                image=image,
                command=["/nodes/autoscale_nodes.py:SlowStage"],
                environment={
                    "SLOW_STAGE_PROVIDER": "DOCKER",
                    "SLOW_STAGE_MAX": str(PARAMS.partitions),
                    "SLOW_STAGE_SECONDS": str(PARAMS.cost),
                    "FOGVERSE_HEARTBEAT_INTERVAL": "1",
                    "FOGVERSE_BOOTSTRAP": bootstrap,
                },
                network="host",
                labels=label,
                run_options={"volumes": {str(NODES_DIR): {"bind": "/nodes", "mode": "ro"}}},
            )
        },
        client=engine,
    )
    scripts = DeployScripts()
    scripts.set_deploy_functions("DOCKER", deployer)
    master = AutoScaleComponent().master_auto_scaler(
        {
            "consumer_topic": control,
            "consumer_server": bootstrap,
            "consumer_group_id": f"master-{run_id}",
            **CONF,
        },
        scripts,
    )
    assert master.deployer is not None
    stage = (src, out)
    running = asyncio.create_task(master.run())
    offsets = GroupOffsets({"bootstrap.servers": bootstrap})
    metrics = Metrics()
    first = None
    try:
        await _until(master.ready.is_set, 120, "the master to catch up")
        first = await asyncio.to_thread(
            deployer,
            logging.getLogger("benchmarks.keda_containers"),
            {
                "service_name": SERVICE,
                "instance_id": f"{SERVICE}-first",
                "source_topic": src,
                "target_topic": out,
                "group_id": group,
                "control_topic": control,
                "control_servers": bootstrap,
            },
        )
        assert first is not None, "the first container did not start"
        await _until(
            lambda: stage in master.state.stages and master.deployer.counts(stage)[0] == 1,
            180,
            "the first container to report",
        )
        feeder = _Feeder(bootstrap, src, control, LOAD)
        t0 = time.time()
        feeding = asyncio.create_task(feeder.run(t0))
        for second in range(LOAD.duration):
            await asyncio.sleep(max(0.0, t0 + second - time.time()))
            if running.done():
                running.result()
            lag, _ = await asyncio.to_thread(measure_lag, admin, offsets, group, src, 10.0)
            live, starting = master.deployer.counts(stage)
            metrics.times.append(second)
            metrics.lag.append(lag)
            metrics.rate.append(LOAD.rate(second))
            metrics.instances.append(live + starting)
            metrics.instance_seconds += live + starting
        await feeding
    finally:
        master.stop()
        await asyncio.wait_for(running, 60)
        if first is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(first.stop)
    records = [r for r in master.deployer.records if r.stage == stage]
    before = 1
    for r in records:
        if r.action in ("deploy", "scale-in") and r.ts >= t0:
            after = before + (1 if r.action == "deploy" else -1)
            metrics.scale_events.append((r.ts - t0, before, after))
            before = after
    startups = [
        master.state.instances[r.instance_id].first_seen - r.ts
        for r in records
        if r.action == "deploy" and r.instance_id in master.state.instances
    ]
    return {
        "metrics": metrics,
        "startups": startups,
        "sent": feeder.sent,
        "records": [(round(r.ts - t0, 1), r.action, r.instance_id) for r in records],
    }


def real_run() -> dict[str, Any]:
    """The load against real containers (starts a broker and podman's API; builds the image
    if needed)."""
    sys.path.insert(0, str(ROOT / "deploy" / "image"))
    sys.path.insert(0, str(ROOT / "deploy" / "podman"))
    import build
    from podman_service import PodmanService

    image = build.build()
    label = ("fogverse.bench", f"keda-{uuid.uuid4().hex[:6]}")
    with broker() as bootstrap, PodmanService(label) as engine:
        return asyncio.run(_real(bootstrap, engine, image, dict([label])))


def _document(name: str, metrics: Metrics) -> dict[str, Any]:
    return {
        "policy": name,
        **summary(metrics, LOAD.phases),
        "timeline": {"t": metrics.times, "lag": metrics.lag, "instances": metrics.instances},
        "scale_events_detail": [list(e) for e in metrics.scale_events],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.keda_containers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    real = real_run()
    startup = statistics.median(real["startups"]) if real["startups"] else PARAMS.startup
    params = StageParams(**{**PARAMS.__dict__, "startup": round(startup, 1)})
    sim = asyncio.run(simulate("simulation", {"kind": "fogverse", "conf": CONF}, LOAD, params))
    rows = [
        _document("simulation (start-up as measured)", sim.stage.metrics),
        _document("real containers (podman)", real["metrics"]),
    ]
    doc: dict[str, Any] = {
        "load": {"name": LOAD.name, "phases": LOAD.phases, "per_second": LOAD.per_second},
        "stage": params.__dict__,
        "conf": CONF,
        "measured_startups_s": [round(s, 1) for s in real["startups"]],
        "sent": real["sent"],
        "deployer_records": real["records"],
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "keda_containers.json", json.dumps(doc) + "\n")
    text = table(rows)
    note = (
        f"\nLoad: {LOAD.duration} s ({', '.join(f'{n} {a}-{b} s' for n, a, b in LOAD.phases)}); "
        f"stage: {PARAMS.partitions} partitions, {PARAMS.cost * 1000:.0f} ms per message; "
        f"container start-up (deploy to first report), measured: "
        f"{[round(s, 1) for s in real['startups']]} s, median {startup:.1f} s.\n"
    )
    write_text_atomic(args.out / "keda_containers.md", text + "\n" + note)
    print(text + "\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
