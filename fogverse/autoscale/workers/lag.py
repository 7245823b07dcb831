"""LAG_WORKER: scale on the consumer group's lag, the way KEDA's Kafka scaler does.

Every ``refresh_rate_second`` seconds, for each stage whose consumer group is known, it reads
the group's committed offsets and the source topic's end offsets (confluent-kafka, in a
thread: its calls block) and recommends ``ceil(total lag / lag_threshold)`` instances, at most
one per partition (more would sit idle) unless ``allow_beyond_partitions``. A partition the
group never committed, or committed before its log start, counts from its log start, because
our consumers start there (``auto_offset_reset=earliest``).

Committed offsets are read by a consumer of the group (never subscribed, so it never joins
it), not by the admin API: librdkafka's admin ListConsumerGroupOffsets dereferences a NULL
group handle when the broker answers "not coordinator" or "coordinator load in progress"
(librdkafka issue 5040, still in 2.16), which a fresh broker, or a cluster moving a group's
coordinator, does; the master process died of it.

It needs no heartbeats for the signal itself; the group comes from the stage's auto-scale
request (``group_id``, filled in by an attached observer, or ``extra_configs["group_id"]``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fogverse.admin import admin_client
from fogverse.autoscale.config import LagSettings
from fogverse.autoscale.state import Stage, StageKey
from fogverse.autoscale.workers.periodic import PeriodicWorker

__all__ = ["GroupOffsets", "LagSample", "LagWorker", "desired_instances", "measure_lag"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagSample:
    ts: float
    lag: int
    partitions: int
    wanted: int


def desired_instances(
    lag: int, threshold: float, partitions: int, allow_beyond_partitions: bool = False
) -> int:
    """KEDA's rule: ``ceil(lag / threshold)``, capped at ``partitions`` unless allowed."""
    if lag <= 0:
        return 0
    wanted = math.ceil(lag / threshold)
    if not allow_beyond_partitions and partitions > 0:
        wanted = min(wanted, partitions)
    return wanted


class GroupOffsets:
    """Reads consumer groups' committed offsets through a short-lived confluent-kafka consumer
    of the group, made and closed within each call (in the calling thread, so a stop never
    closes a client another thread is using). The consumer is never subscribed: it neither
    joins the group nor commits."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self.conf = dict(conf)

    def committed(self, group_id: str, tps: list[Any], timeout: float) -> dict[int, int]:
        """Partition -> committed offset (negative: none) of ``group_id``; blocking."""
        from confluent_kafka import Consumer, KafkaException

        consumer = Consumer({**self.conf, "group.id": group_id, "enable.auto.commit": False})
        try:
            found = consumer.committed(tps, timeout=timeout)
        finally:
            consumer.close()
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {tp.partition: tp.offset for tp in found}


def measure_lag(
    admin: Any, offsets: GroupOffsets, group_id: str, topic: str, timeout: float = 10.0
) -> tuple[int, int]:
    """``(total lag, partition count)`` of ``group_id`` on ``topic``; blocking."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    # Not list_topics(topic): the AdminClient is a producer-type client, and its metadata
    # request for a missing topic makes the broker auto-create it (a deleted stage's topic
    # would come back, with the broker's default partition count).
    try:
        description = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[
            topic
        ].result(timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise LookupError(f"topic {topic!r} not found: {err.str()}") from exc
        raise
    parts = sorted(p.id for p in description.partitions)
    tps = [TopicPartition(topic, p) for p in parts]
    committed = offsets.committed(group_id, tps, timeout)
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    end = {tp.partition: f.result(timeout).offset for tp, f in ends.items()}
    # Every partition's log start, not only the never-committed ones': a committed offset that
    # retention (or DeleteRecords) has passed resumes there too, and the records deleted before
    # it are no lag.
    res = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout)
    start = {tp.partition: f.result(timeout).offset for tp, f in res.items()}
    lag = 0
    for p in parts:
        base = max(committed.get(p, -1), start[p])
        lag += max(0, end[p] - base)
    return lag, len(parts)


class LagWorker(PeriodicWorker):
    """Recommends instance counts from consumer-group lag."""

    SOURCE = "lag"
    NAME = "lag-worker"

    def __init__(
        self,
        settings: LagSettings | None = None,
        deployer: Any = None,
        servers: str | None = None,
        admin: Any = None,
        offsets: GroupOffsets | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or LagSettings()
        self.deployer = deployer
        self.servers = servers
        self.admin = admin
        self.offsets = offsets
        self.last: dict[StageKey, LagSample] = {}
        self._warned: set[StageKey] = set()

    async def start(self, master: Any) -> None:
        if self.deployer is None:
            self.deployer = getattr(master, "deployer", None)
        servers = self.servers or master.consumer_servers or "localhost:9092"
        admin_conf = getattr(master, "admin_conf", {})  # the cluster's SASL/SSL settings
        conf = {**admin_conf, "bootstrap.servers": servers}
        if self.admin is None:
            self.admin = admin_client(servers, admin_conf)
        if self.offsets is None:
            self.offsets = GroupOffsets(conf)
        await super().start(master)

    def _interval(self) -> float:
        return self.settings.refresh_rate_second

    async def _tick(self) -> None:
        await self.evaluate()

    def _group(self, stage: Stage) -> str | None:
        group = stage.group_id or stage.spec.extra_configs.get("group_id")
        return group if isinstance(group, str) and group else None

    async def evaluate(self) -> dict[StageKey, LagSample]:
        assert self.state is not None
        assert self.offsets is not None, "start() the worker first"
        out = {}
        for key, stage in list(self.state.stages.items()):
            group = self._group(stage)
            if group is None:
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning(
                        "stage %s -> %s has no consumer group in its auto-scale "
                        "request; the lag signal cannot measure it",
                        *key,
                    )
                continue
            what = f"measuring the lag of {group} on {stage.source_topic}"
            try:
                lag, parts = await asyncio.to_thread(
                    measure_lag,
                    self.admin,
                    self.offsets,
                    group,
                    stage.source_topic,
                    self.settings.admin_timeout,
                )
            except Exception as exc:
                # Every stage fails alike while the broker is away: logged once, not per tick.
                self._failures.failed(what, exc, logging.WARNING)
                continue
            self._failures.recovered(what)
            wanted = desired_instances(
                lag, self.settings.lag_threshold, parts, self.settings.allow_beyond_partitions
            )
            sample = LagSample(self.state.clock(), lag, parts, wanted)
            self.last[key] = sample
            out[key] = sample
            logger.debug(
                "stage %s -> %s: lag %d on %d partitions -> %d instance(s)",
                key[0],
                key[1],
                lag,
                parts,
                wanted,
            )
            if self.deployer is not None:
                self.deployer.recommend(
                    key, wanted, self.SOURCE, ttl=2 * self.settings.refresh_rate_second + 5
                )
        return out
