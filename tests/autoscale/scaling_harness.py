"""A slow stage on the real broker, fed at a fixed rate, watched by a master: the pieces the
scale-out tests share (feeder, output collector, timeline)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogverse.autoscale import LocalDeployer, LocalService, Observer
from fogverse.autoscale.workers.lag import GroupOffsets, measure_lag

NODES = str(Path(__file__).with_name("autoscale_nodes.py"))
SERVICE = "slow"

logger = logging.getLogger(__name__)


def slow_stage_deployer(log_path: Path, max_instance: int, bootstrap: str) -> LocalDeployer:
    command = [sys.executable, "-m", "fogverse", "run", f"{NODES}:SlowStage"]
    env = {
        "SLOW_STAGE_MAX": str(max_instance),
        "FOGVERSE_HEARTBEAT_INTERVAL": "0.5",
        "FOGVERSE_BOOTSTRAP": bootstrap,  # the stage's own cluster
    }
    return LocalDeployer(
        {SERVICE: LocalService(command, env=env, output=str(log_path), stop_timeout=15)}
    )


def start_first_instance(
    deployer: LocalDeployer,
    *,
    src: str,
    out: str,
    group: str,
    control: str,
    bootstrap: str,
    max_instance: int,
) -> Any:
    """The stage's first instance: started by hand, as a user would, but tracked."""
    handle = deployer(
        logger,
        {
            "provider": "LOCAL",
            "service_name": SERVICE,
            "max_instance": max_instance,
            "extra_configs": {},
            "instance_id": "slow-first",
            "source_topic": src,
            "target_topic": out,
            "group_id": group,
            "control_topic": control,
            "control_servers": bootstrap,
        },
    )
    assert handle is not None
    return handle


async def feed(
    bootstrap: str,
    topic: str,
    partitions: int,
    control: str,
    rate: float,
    seconds: float,
    *,
    longer_while: Callable[[], bool] | None = None,
    at_most: float | None = None,
) -> int:
    """Send ``rate`` messages/s for ``seconds`` (round-robin over partitions), reporting them
    with an observer like an upstream stage would. Returns how many were sent.

    ``longer_while``: go on past ``seconds`` while it holds, up to ``at_most`` seconds (what
    a loaded machine needs: its instances start slower)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    observer = Observer(
        {
            "kafka_server": bootstrap,
            "producer_topic": control,
            "heartbeat_interval": 0.5,
            "instance_id": "feeder",
        }
    )
    await observer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = round(rate * seconds)
    limit = round(rate * max(seconds, at_most or seconds))
    acks = []
    i = 0
    try:
        while i < total or (i < limit and longer_while is not None and longer_while()):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            acks.append(await producer.send(topic, f"m{i}".encode(), partition=i % partitions))
            observer.send_heartbeat(topic, 1)
            i += 1
        await asyncio.gather(*acks)
    finally:
        await observer.close()
        await producer.stop()
    return i


class OutputCollector:
    """Reads the output topic from its beginning in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.counts: collections.Counter[bytes] = collections.Counter()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OutputCollector:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, 0)])
        await self._consumer.seek_to_beginning(TopicPartition(self.topic, 0))
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                self.counts.update(m.value for m in msgs)

    async def wait_for(self, expected: set[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expected <= self.counts.keys():
                return True
            await asyncio.sleep(0.2)
        return expected <= self.counts.keys()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@dataclass
class Timeline:
    """One row a second: time, instances (live + starting), input and output rate, lag."""

    rows: list[tuple[float, int, int, float, float, int | None]] = field(default_factory=list)

    async def sample(
        self,
        master: Any,
        stage: tuple[str, str],
        admin: Any,
        offsets: GroupOffsets,
        group: str,
        t0: float,
        window: float = 2.0,
    ) -> None:
        state = master.state
        now = state.clock()
        end = now - state.max_interval()
        in_rate = state.rates.rate(stage[0], end - window, end)
        out_rate = state.rates.rate(stage[1], end - window, end)
        live, starting = master.deployer.counts(stage)
        try:
            lag, _ = await asyncio.to_thread(measure_lag, admin, offsets, group, stage[0], 5.0)
        except Exception:
            lag = None
        self.rows.append((now - t0, live, starting, in_rate, out_rate, lag))

    async def run(self, *args: Any, **kwargs: Any) -> None:
        while True:
            await self.sample(*args, **kwargs)
            await asyncio.sleep(1.0)

    def render(self, title: str) -> str:
        lines = [title, f"{'t(s)':>6} {'inst':>4} {'start':>5} {'in/s':>6} {'out/s':>6} {'lag':>5}"]
        for t, live, starting, i, o, lag in self.rows:
            lines.append(
                f"{t:6.1f} {live:4d} {starting:5d} {i:6.1f} {o:6.1f} "
                f"{'-' if lag is None else lag:>5}"
            )
        return "\n".join(lines)
