"""``python -m benchmarks.keda``: FogVerse's auto-scaler against KEDA's Kafka rule, on one
recorded load replayed on one simulated clock (benchmarks/scaling_sim.py).

- **FogVerse**: the real master, built by ``AutoScaleComponent().master_auto_scaler`` from a
  configuration, with its real deployer, statistic, input/output and lag workers. The
  simulation only feeds it what a real deployment would: encoded heartbeats and auto-scale
  requests through ``Master.handle_raw``, the consumer group's offsets through the lag
  worker's admin client, and the clock; it calls each worker's evaluation at its configured
  period. Its deploy function adds an instance to the simulated stage, its handle's ``stop()``
  removes one.
- **KEDA**: the Kafka scaler's metric (total lag, capped at partitions x ``lagThreshold``
  unless idle consumers are allowed) fed to the HPA's algorithm as in Kubernetes v1.34
  (pkg/controller/podautoscaler): every 15 s, ``ceil(metric / target)`` unless the usage
  ratio is within the 0.1 tolerance; the scale-down stabilisation window (the highest
  recommendation of the last 300 s); scale-up limited to the larger of +100 % and +4 pods per
  15 s. KEDA's own loop (every ``pollingInterval`` 30 s) activates a Deployment at zero and
  scales it to ``minReplicaCount`` after ``cooldownPeriod`` (300 s) without lag.

Writes benchmarks/results/keda.json and keda.md; prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import write_text_atomic
from benchmarks.scaling_sim import (
    Clock,
    Load,
    Member,
    Stage,
    StageParams,
    step_ramp_load,
    summary,
)
from fogverse.autoscale import AutoScaleComponent, DeployScripts
from fogverse.autoscale.messages import (
    AutoScaleRequest,
    ControlMessage,
    DeploySpec,
    Heartbeat,
    encode_message,
)

__all__ = ["POLICIES", "FogVersePolicy", "KedaPolicy", "KedaSettings", "run", "run_all"]

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE, TARGET, GROUP = "frames", "detections", "detector"
CAMERA = "camera-1"


# ---- KEDA + HPA ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KedaSettings:
    """A ScaledObject with a kafka trigger; every default is KEDA's / the HPA's."""

    lag_threshold: float = 10.0
    activation_lag_threshold: float = 0.0
    allow_idle_consumers: bool = False
    min_replicas: int = 0
    max_replicas: int = 100
    polling_interval: float = 30.0
    cooldown_period: float = 300.0
    hpa_sync_period: float = 15.0
    tolerance: float = 0.1
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_up_period: float = 15.0
    scale_down_percent: float = 100.0
    scale_down_period: float = 15.0
    scale_down_window: float = 300.0


class KedaPolicy:
    """KEDA's operator loop and the HPA controller it drives, over the simulated stage."""

    def __init__(self, stage: Stage, settings: KedaSettings = KedaSettings()) -> None:
        self.stage, self.s = stage, settings
        self.replicas = stage.count()
        self.recommendations: list[tuple[float, int]] = []
        self.history: list[tuple[float, int]] = []
        """Every HPA recommendation ``(t, desired)``, for checking the rules afterwards."""
        self.changes: list[tuple[float, int]] = []  # (t, +added / -removed)
        self.last_active = 0.0
        self._next_poll = 0.0
        self._next_sync = 0.0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def metric(self) -> float:
        """The kafka scaler's metric value: total lag, capped unless idle consumers are allowed."""
        lag = float(self.stage.lag())
        if not self.s.allow_idle_consumers:
            lag = min(lag, self.stage.p.partitions * self.s.lag_threshold)
        return lag

    async def step(self) -> None:
        t = self.stage.clock.t
        if t >= self._next_poll - 1e-9:
            self._next_poll += self.s.polling_interval
            self._keda_poll(t)
        if t >= self._next_sync - 1e-9:
            self._next_sync += self.s.hpa_sync_period
            if self.replicas > 0:  # the HPA does nothing to a Deployment at zero
                self._hpa_sync(t)

    def _keda_poll(self, t: float) -> None:
        active = self.stage.lag() > self.s.activation_lag_threshold
        if active:
            self.last_active = t
            if self.replicas == 0:
                self._set(max(self.s.min_replicas, 1), t)
        elif (
            self.replicas > self.s.min_replicas
            and self.s.min_replicas == 0
            and t - self.last_active >= self.s.cooldown_period
        ):
            self._set(0, t)

    def _hpa_sync(self, t: float) -> None:
        s, current = self.s, self.replicas
        metric = self.metric()
        ratio = metric / (s.lag_threshold * current)
        desired = current
        if abs(ratio - 1.0) > s.tolerance:
            desired = math.ceil(metric / s.lag_threshold)
        hpa_min = max(s.min_replicas, 1)
        desired = min(max(desired, hpa_min), s.max_replicas)
        # Stabilisation: scale down only to the highest recommendation of the window.
        window = [r for ts, r in self.recommendations if ts > t - s.scale_down_window]
        down_limit = max([desired, *window])
        recommendation = min(max(current, desired), down_limit)
        self.recommendations.append((t, desired))
        self.history.append((t, desired))
        self.recommendations = [
            (ts, r) for ts, r in self.recommendations if ts > t - s.scale_down_window
        ]
        # Rate limits, from the replica count at the start of each policy's period.
        if recommendation > current:
            start = current - self._changed(t, s.scale_up_period, up=True)
            limit = max(start + s.scale_up_pods, math.ceil(start * (1 + s.scale_up_percent / 100)))
            recommendation = min(recommendation, limit, s.max_replicas)
        elif recommendation < current:
            start = current + self._changed(t, s.scale_down_period, up=False)
            limit = math.ceil(start * (1 - s.scale_down_percent / 100))
            recommendation = max(recommendation, limit, hpa_min)
        if recommendation != current:
            self._set(recommendation, t)

    def _changed(self, t: float, period: float, *, up: bool) -> int:
        return sum(abs(d) for ts, d in self.changes if ts > t - period and (d > 0) == up)

    def _set(self, replicas: int, t: float) -> None:
        before = self.replicas
        for _ in range(replicas - before):
            self.stage.add()
        for _ in range(before - replicas):
            self.stage.remove()
        self.replicas = replicas
        self.changes.append((t, replicas - before))
        self.stage.scaled(before, replicas)


# ---- FogVerse ----------------------------------------------------------------------------------


class _Future:
    """What confluent-kafka's admin futures give ``measure_lag``: ``result().offset``."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def result(self, timeout: float | None = None) -> _Future:
        return self


class _SimAdmin:
    """The AdminClient calls :func:`fogverse.autoscale.workers.lag.measure_lag` makes, answered
    from the simulated topic."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def describe_topics(self, topics: Any, request_timeout: float = 0) -> dict[str, Any]:
        parts = [type("Partition", (), {"id": p})() for p in range(self.stage.p.partitions)]
        description = type("Description", (), {"partitions": parts})()
        return {
            name: type("Done", (), {"result": lambda self, t=None: description})()
            for name in topics.topic_names
        }

    def list_offsets(
        self, request: Mapping[Any, Any], request_timeout: float = 0
    ) -> dict[Any, Any]:
        from confluent_kafka.admin import OffsetSpec

        ends, _ = self.stage.partition_offsets()
        latest = type(OffsetSpec.latest())
        return {
            tp: _Future(ends[tp.partition] if isinstance(spec, latest) else 0)
            for tp, spec in request.items()
        }


class _SimOffsets:
    """The group's committed offsets (``GroupOffsets.committed``), from the simulated group."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def committed(self, group_id: str, tps: list[Any], timeout: float) -> dict[int, int]:
        _, done = self.stage.partition_offsets()
        return {tp.partition: done[tp.partition] for tp in tps}


class _Handle:
    def __init__(self, policy: FogVersePolicy, member: Member) -> None:
        self.policy, self.member = policy, member

    async def stop(self) -> None:
        stage = self.policy.stage
        before = stage.count()
        stage.remove(self.member)
        stage.scaled(before, stage.count())


class FogVersePolicy:
    """The real FogVerse master, fed and clocked by the simulation."""

    def __init__(self, stage: Stage, conf: Mapping[str, Any], max_instance: int) -> None:
        self.stage = stage
        self.max_instance = max_instance
        scripts = DeployScripts()
        scripts.set_deploy_functions("SIM", self._deploy)
        master = AutoScaleComponent().master_auto_scaler(
            {"consumer_topic": "fogverse-autoscale", "consumer_server": "sim:9092", **conf},
            scripts,
        )
        # The master's clock is the simulation's: state, deployer and workers read this one.
        master.state.clock = stage.clock.now
        assert master.deployer is not None
        master.deployer.clock = stage.clock.now
        if master.lag_worker is not None:
            master.lag_worker.admin = _SimAdmin(stage)
            master.lag_worker.offsets = _SimOffsets(stage)
        self.master = master
        self._reported: dict[str, int] = {}
        self._last_beat: dict[str, float] = {}
        self._camera_sent = 0
        self._due: dict[str, float] = {}
        self._pending: list[ControlMessage] = []
        stage.on_join.append(self._joined)
        stage.on_leave.append(self._left)

    async def start(self) -> None:
        # start() wires each worker to the master (vetoes, deployer, state); their own loops
        # wait for ``master.ready``, which is never set: the simulation calls them on its clock.
        for obs in self.master.observers:
            await obs.start(self.master)
        for member in self.stage.members:
            if member.joined:
                self._joined(member)

    async def stop(self) -> None:
        for obs in reversed(self.master.observers):
            await obs.stop()

    async def _deploy(self, log: logging.Logger, config: Mapping[str, Any]) -> _Handle:
        before = self.stage.count()
        member = self.stage.add(str(config["instance_id"]))
        self.stage.scaled(before, self.stage.count())
        return _Handle(self, member)

    # ---- what the nodes send -------------------------------------------------------------

    async def _send(self, message: ControlMessage) -> None:
        await self.master.handle_raw(encode_message(message))

    def _request(self, member: Member) -> AutoScaleRequest:
        spec = DeploySpec("SIM", "detector", self.max_instance)
        return AutoScaleRequest(
            member.instance_id,
            self.stage.clock.now(),
            source_topic=SOURCE,
            target_topic=TARGET,
            topic_configs=spec,
            group_id=GROUP,
        )

    def _joined(self, member: Member) -> None:
        self._reported[member.instance_id] = member.done
        self._last_beat[member.instance_id] = self.stage.clock.now()
        self._pending.append(self._request(member))

    def _left(self, member: Member) -> None:
        self._pending.append(self._beat(member, final=True))

    def _beat(self, member: Member, final: bool = False) -> Heartbeat:
        now = self.stage.clock.now()
        count = member.done - self._reported.get(member.instance_id, 0)
        self._reported[member.instance_id] = member.done
        since = self._last_beat.get(member.instance_id, now - 1.0)
        self._last_beat[member.instance_id] = now
        return Heartbeat(
            member.instance_id,
            now,
            target_topic=TARGET,
            total_messages=count,
            since=since,
            interval=1.0,
            source_topic=SOURCE,
            group_id=GROUP,
            final=final,
        )

    def _every(self, name: str, period: float) -> bool:
        t = self.stage.clock.t
        due = self._due.get(name, 0.0)
        if t >= due - 1e-9:
            self._due[name] = due + period
            return True
        return False

    async def step(self) -> None:
        stage, m = self.stage, self.master
        now = stage.clock.now()
        for message in self._pending:
            await self._send(message)
        self._pending.clear()
        if self._every("heartbeat", 1.0):
            sent = sum(stage.produced)
            await self._send(
                Heartbeat(
                    CAMERA,
                    now,
                    target_topic=SOURCE,
                    total_messages=sent - self._camera_sent,
                    since=now - 1.0,
                    interval=1.0,
                )
            )
            self._camera_sent = sent
            for member in stage.members:
                if member.joined:
                    await self._send(self._beat(member))
        if self._every("requests", 30.0):
            for member in stage.members:
                if member.joined:
                    await self._send(self._request(member))
        s = m.settings
        if m.statistics is not None and self._every("statistics", s.statistics.refresh_rate):
            m.statistics.sample()
        if m.io_worker is not None and self._every("io", s.io.refresh_rate_second):
            m.io_worker.evaluate()
        if m.lag_worker is not None and self._every("lag", s.lag.refresh_rate_second):
            await m.lag_worker.evaluate()
        assert m.deployer is not None
        if self._every("deployer", s.deployer.tick):
            await m.deployer.tick()
            # A deploy or stop runs as a task; in the simulation it takes no time.
            for st in m.deployer.stages.values():
                if st.task is not None:
                    await st.task


# ---- the comparison ----------------------------------------------------------------------------


POLICIES: dict[str, dict[str, Any]] = {
    "FogVerse defaults": {"kind": "fogverse", "conf": {}},
    "FogVerse lag signal + scale-in": {
        "kind": "fogverse",
        "conf": {
            "included_worker": [
                "AUTO_DEPLOYER",
                "STATISTIC_WORKER",
                "INPUT_OUTPUT_WORKER",
                "LAG_WORKER",
            ],
            "auto_deployer_config": {"scale_in": True},
        },
    },
    "KEDA defaults": {"kind": "keda", "settings": {}},
    "KEDA, minReplicaCount 1": {"kind": "keda", "settings": {"min_replicas": 1}},
}
"""Every policy in the table. FogVerse's first row is the master with nothing configured but
its topic (the seed's workers: statistic, input/output, deployer; no lag signal, no
scale-in). Its lock worker is part of those defaults but plays no part here."""


@dataclass
class Run:
    """One policy's replay of the load: the stage as it ended and the policy that drove it."""

    policy: str
    stage: Stage
    driver: KedaPolicy | FogVersePolicy

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy, **summary(self.stage.metrics, self.stage.load.phases)}

    def document(self) -> dict[str, Any]:
        m = self.stage.metrics
        return {
            **self.summary(),
            "scale_events_detail": [list(e) for e in m.scale_events],
            "timeline": {"t": m.times, "lag": m.lag, "instances": m.instances},
        }


async def _run(name: str, spec: Mapping[str, Any], load: Load, params: StageParams) -> Run:
    clock = Clock()
    stage = Stage(params, load, clock)
    stage.add("initial")  # the Deployment's first replica, running before the load starts
    stage.members[0].ready_at = 0.0
    driver: KedaPolicy | FogVersePolicy
    if spec["kind"] == "keda":
        driver = KedaPolicy(stage, KedaSettings(**spec["settings"]))
    else:
        driver = FogVersePolicy(stage, spec["conf"], max_instance=params.partitions)
    stage.advance()  # t = 0: the first member joins
    await driver.start()
    try:
        for i in range(1, round(load.duration / params.dt)):
            clock.t = i * params.dt
            await driver.step()
            stage.advance()
    finally:
        await driver.stop()
    return Run(name, stage, driver)


def run(name: str, load: Load | None = None, params: StageParams | None = None) -> Run:
    """One policy's replay of the recorded load (or ``load``)."""
    return asyncio.run(
        _run(name, POLICIES[name], load or step_ramp_load(), params or StageParams())
    )


def run_all(load: Load | None = None, params: StageParams | None = None) -> list[Run]:
    return [run(name, load, params) for name in POLICIES]


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "not caught up"
    return "never behind" if v == 0 else f"{v:.0f} s"


def table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        "| policy | caught up after the step | after the ramp | peak lag (msgs) | "
        "instance-seconds | scale events | peak instances | instances at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['policy']} | {_fmt_s(r['caught_up_after_step_s'])} | "
            f"{_fmt_s(r['caught_up_after_ramp_s'])} | {r['peak_lag']} | "
            f"{r['instance_seconds']} | {r['scale_events']} | {r['peak_instances']} | "
            f"{r['instances_at_end']} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.keda", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    load, params = step_ramp_load(), StageParams()
    runs = run_all(load, params)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "load": {"name": load.name, "phases": load.phases, "per_second": load.per_second},
        "stage": params.__dict__,
        "keda": KedaSettings().__dict__,
        "policies": POLICIES,
        "results": [r.document() for r in runs],
    }
    write_text_atomic(args.out / "keda.json", json.dumps(doc) + "\n")
    text = table([r.summary() for r in runs])
    write_text_atomic(args.out / "keda.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
