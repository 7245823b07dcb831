"""What the master knows, rebuilt from control messages alone: throughput per topic, live
instances and the stages that may be scaled.

Everything is keyed by the senders' UTC epoch timestamps, not by arrival time, so a master that
re-reads the last minutes of the control topic after a restart arrives at the same state as one
that never stopped (clocks are assumed to be NTP-synchronised; a timestamp from the future is
clamped to the master's clock so that a fast clock cannot keep a dead instance alive).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fogverse.autoscale.messages import (
    Announce,
    AutoScaleRequest,
    ControlMessage,
    DeploySpec,
    Heartbeat,
    now,
)

__all__ = ["ControlState", "Instance", "RateTracker", "Stage", "StageKey"]

logger = logging.getLogger(__name__)

# A heartbeat's clock this far ahead of the master's has jumped (or the message is garbage)
# rather than drifted: it must not hold back the ones after it.
_FAR_AHEAD = 300.0

StageKey = tuple[str, str]
"""``(source_topic, target_topic)``: the stage that reads the first and writes the second."""


class RateTracker:
    """Messages per second per topic, from heartbeats that each cover ``[since, ts]``.

    A heartbeat's count is spread evenly over the span it covers, so a window's rate does not
    jump when a heartbeat lands just inside or just outside it.
    """

    def __init__(self, retention: float = 600.0) -> None:
        self.retention = retention
        self._events: dict[str, deque[tuple[float, float, int]]] = {}

    def add(self, topic: str, since: float, ts: float, count: int) -> None:
        events = self._events.get(topic)
        if events is None:
            events = self._events[topic] = deque()
        events.append((since, ts, count))

    def topics(self) -> list[str]:
        return list(self._events)

    def prune(self, current: float) -> None:
        cutoff = current - self.retention
        for topic, events in list(self._events.items()):
            while events and events[0][1] < cutoff:
                events.popleft()
            if not events:
                del self._events[topic]

    def count(self, topic: str, start: float, end: float) -> float:
        """Messages sent to ``topic`` within ``[start, end]`` (fractional at the edges)."""
        total = 0.0
        for since, ts, n in self._events.get(topic, ()):
            if ts < start or since > end or n == 0:
                continue
            span = ts - since
            if span <= 0:
                total += n
                continue
            overlap = min(ts, end) - max(since, start)
            if overlap > 0:
                total += n * overlap / span
        return total

    def rate(self, topic: str, start: float, end: float) -> float:
        """Messages per second sent to ``topic`` over ``[start, end]``."""
        if end <= start:
            return 0.0
        return self.count(topic, start, end) / (end - start)

    def first_seen(self, topic: str) -> float | None:
        events = self._events.get(topic)
        return min(e[0] for e in events) if events else None


@dataclass
class Instance:
    """One running node, as its messages describe it."""

    instance_id: str
    first_seen: float
    last_seen: float
    interval: float = 1.0
    source_topic: str | None = None
    target_topic: str | None = None
    group_id: str | None = None
    final: bool = False
    last_beat: dict[str | None, float] = field(default_factory=dict)
    """Per target topic, the newest heartbeat's timestamp clamped to the master's clock."""
    last_raw: dict[str | None, float] = field(default_factory=dict)
    """Per target topic, the newest heartbeat's own timestamp (to know a re-read of it)."""

    def alive(self, current: float, expiry_factor: float) -> bool:
        return not self.final and current - self.last_seen <= expiry_factor * self.interval


@dataclass
class Stage:
    """A stage that asked to be auto-scaled, with the latest deploy spec it sent."""

    source_topic: str
    target_topic: str
    spec: DeploySpec
    group_id: str | None
    updated: float

    @property
    def key(self) -> StageKey:
        return (self.source_topic, self.target_topic)


class ControlState:
    """Applies control messages; answers "how fast" and "how many are alive"."""

    def __init__(
        self,
        *,
        expiry_factor: float = 3.0,
        retention: float = 600.0,
        clock: Callable[[], float] = now,
    ) -> None:
        self.expiry_factor = expiry_factor
        self.clock = clock
        self.rates = RateTracker(retention)
        self.read_until: float | None = None
        """When the master last began a read of the control topic that reached its end
        (None: no reader tells, judge by the clock). An instance is judged silent against
        this, not the clock: after the master's loop stalled, its instances' heartbeats of
        the stall are still unread, and they would look gone and be replaced."""
        self.instances: dict[str, Instance] = {}
        self.stages: dict[StageKey, Stage] = {}
        self._instance_stage: dict[str, StageKey] = {}

    # ---- applying messages ---------------------------------------------------------------

    def apply(self, message: ControlMessage) -> None:
        current = self.clock()
        if isinstance(message, Heartbeat):
            self._heartbeat(message, current)
        elif isinstance(message, Announce):
            self._touch(
                message.instance_id,
                min(message.ts, current),
                message.interval,
                message.source_topic,
                message.target_topic,
                message.group_id,
            )
        elif isinstance(message, AutoScaleRequest):
            self._request(message, current)

    def _touch(
        self,
        instance_id: str,
        ts: float,
        interval: float,
        source: str | None,
        target: str | None,
        group: str | None,
    ) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            inst = self.instances[instance_id] = Instance(instance_id, ts, ts, interval)
            logger.info("instance %s appeared (%s -> %s)", instance_id, source, target)
        inst.first_seen = min(inst.first_seen, ts)
        inst.last_seen = max(inst.last_seen, ts)
        inst.interval = interval
        inst.source_topic = source or inst.source_topic
        inst.target_topic = target or inst.target_topic
        inst.group_id = group or inst.group_id
        return inst

    def _heartbeat(self, hb: Heartbeat, current: float) -> None:
        ts = min(hb.ts, current)
        inst = self._touch(
            hb.instance_id, ts, hb.interval, hb.source_topic, hb.target_topic, hb.group_id
        )
        # The same heartbeat read twice (a producer retry, an overlapping re-read) counts once:
        # one no newer than the newest seen is a re-read.
        target = hb.target_topic
        newest = inst.last_raw.get(target, 0.0)
        if newest > current + _FAR_AHEAD:
            # The newest came from far in the future (a clock that jumped ahead once, garbage):
            # it must not make every later heartbeat look like a re-read, nor decide ``final``,
            # until then. Meanwhile they are ordered by their timestamps clamped to our clock,
            # and a repeat of it still counts once. A clock that is always a little ahead keeps
            # the exact order of its own timestamps.
            seen = hb.ts <= inst.last_beat.get(target, 0.0) or hb.ts == newest
        else:
            seen = hb.ts <= newest
        if seen:
            return
        if ts >= max(inst.last_beat.values(), default=0.0):
            # The newest heartbeat decides: an id reused by a restarted node lives again.
            if hb.final and not inst.final:
                logger.info("instance %s stopped", hb.instance_id)
            inst.final = hb.final
        inst.last_beat[target] = ts
        inst.last_raw[target] = max(newest, hb.ts)
        if hb.target_topic is not None and hb.total_messages:
            self.rates.add(hb.target_topic, hb.since, hb.ts, hb.total_messages)
        if hb.source_topic and hb.target_topic and hb.instance_id not in self._instance_stage:
            self._instance_stage[hb.instance_id] = (hb.source_topic, hb.target_topic)

    def _request(self, req: AutoScaleRequest, current: float) -> None:
        stage = self.stages.get(req.stage)
        if stage is None:
            logger.info(
                "stage %s -> %s registered for auto-scaling (%s, max %d)",
                req.source_topic,
                req.target_topic,
                req.topic_configs.provider,
                req.topic_configs.max_instance,
            )
            self.stages[req.stage] = Stage(
                req.source_topic, req.target_topic, req.topic_configs, req.group_id, req.ts
            )
        elif req.ts >= stage.updated:
            stage.spec = req.topic_configs
            stage.group_id = req.group_id or stage.group_id
            stage.updated = req.ts
        self._instance_stage[req.instance_id] = req.stage
        inst = self.instances.get(req.instance_id)
        if inst is None:
            # A request is also a sign of life: the instance exists from now on.
            inst = self._touch(
                req.instance_id,
                min(req.ts, current),
                1.0,
                req.source_topic,
                req.target_topic,
                req.group_id,
            )
        if inst.source_topic is None:
            inst.source_topic = req.source_topic
        if inst.target_topic is None:
            inst.target_topic = req.target_topic

    # ---- queries -------------------------------------------------------------------------

    def prune(self, current: float | None = None) -> None:
        """Forget rates past retention and instances long gone."""
        current = self.clock() if current is None else current
        self.rates.prune(current)
        horizon = self.rates.retention
        for iid, inst in list(self.instances.items()):
            if current - inst.last_seen > max(horizon, 10 * inst.interval * self.expiry_factor):
                del self.instances[iid]
                self._instance_stage.pop(iid, None)

    def stage_of(self, inst: Instance) -> StageKey | None:
        key = self._instance_stage.get(inst.instance_id)
        if key is not None:
            return key
        if inst.target_topic is None:
            return None
        matches = [
            k
            for k in self.stages
            if k[1] == inst.target_topic
            and (inst.source_topic is None or k[0] == inst.source_topic)
        ]
        return matches[0] if len(matches) == 1 else None

    def mark_read(self, started: float) -> None:
        """A read that began at ``started`` reached the end of the control topic."""
        if self.read_until is None or started > self.read_until:
            self.read_until = started

    def live_instances(self, current: float | None = None) -> list[Instance]:
        current = self.clock() if current is None else current
        if self.read_until is not None:
            current = min(current, self.read_until)
        return [i for i in self.instances.values() if i.alive(current, self.expiry_factor)]

    def instances_of(self, stage: StageKey, current: float | None = None) -> list[Instance]:
        """Live instances of ``stage``."""
        return [i for i in self.live_instances(current) if self.stage_of(i) == stage]

    def max_interval(self) -> float:
        """The longest heartbeat interval among live instances (how late a count can be)."""
        live = self.live_instances()
        return max((i.interval for i in live), default=1.0)
