"""The live figures of a pipeline, as one JSON-ready snapshot (schema in docs/view.md).

Sources, all read-only: the offsets of the viewed topics and the committed offsets of the
stages' consumer groups (admin API, every ``poll_interval``), the ``timestamp`` header of every
record the view reads, the profilers of in-process nodes, and the auto-scaling master's
control topic. Every series is bounded: rates over a short window, latencies over the last
:data:`LATENCY_WINDOW` seconds (at most :data:`LATENCY_SAMPLES`), charts over
``history_seconds``, the master's decisions up to :data:`MAX_DECISIONS`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fogverse.autoscale.messages import DeployEvent, InvalidMessage, parse_message
from fogverse.autoscale.state import ControlState
from fogverse.view.config import StageSpec, ViewConfig

__all__ = ["LATENCY_WINDOW", "SCHEMA_VERSION", "Figures", "Offsets"]

SCHEMA_VERSION = 1
LATENCY_WINDOW = 10.0
LATENCY_SAMPLES = 4096
RATE_WINDOW = 3.0
MAX_DECISIONS = 200
MAX_REASONS = 16

Offsets = dict[str, dict[int, int]]
"""topic -> partition -> offset."""


@dataclass
class _Counter:
    """A growing total (sum of offsets) and its rate over the last few seconds."""

    points: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def add(self, t: float, total: int) -> None:
        self.points.append((t, total))
        while len(self.points) > 2 and t - self.points[1][0] >= RATE_WINDOW:
            self.points.popleft()

    @property
    def total(self) -> int | None:
        return self.points[-1][1] if self.points else None

    def rate(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return max(0, n1 - n0) / (t1 - t0) if t1 > t0 else None


@dataclass
class _TopicFigures:
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    latencies: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )
    end: _Counter = field(default_factory=_Counter)
    partitions: int = 0
    exists: bool = False


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return {"p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2), "n": len(values)}


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class Figures:
    """Collects the figures; :meth:`snapshot` renders them. Runs on one event loop."""

    def __init__(self, config: ViewConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.started = clock()
        self.topics: dict[str, _TopicFigures] = {t: _TopicFigures() for t in config.all_topics()}
        if config.control_topic:
            self.topics.setdefault(config.control_topic, _TopicFigures())
        self.groups: dict[str, _Counter] = {s.group: _Counter() for s in config.stages}
        self.committed: dict[str, Offsets] = {}
        self.ends: Offsets = {}
        self.poll_error: str | None = None
        self.control = ControlState(expiry_factor=3.0, retention=600.0, clock=clock)
        self.control_messages = 0
        self.control_invalid = 0
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
        self._seen_decisions: set[tuple[str, str, float]] = set()
        self.clients = 0
        points = max(2, int(config.history_seconds / max(config.poll_interval, 0.05)))
        self.history: deque[dict[str, Any]] = deque(maxlen=points)

    # ---- per record ----------------------------------------------------------------------

    def on_read(self, topic: str, ts: float | None, now: float) -> None:
        f = self.topics[topic]
        f.read += 1
        if ts is not None:
            f.latencies.append((now, (now - ts) * 1000.0))

    def skip(self, topic: str, reason: str) -> None:
        skipped = self.topics[topic].skipped
        if reason not in skipped and len(skipped) >= MAX_REASONS:
            reason = "other"
        skipped[reason] = skipped.get(reason, 0) + 1

    def on_control(self, value: bytes | None) -> None:
        """One record of the master's control topic (parsed strictly, skipped if invalid)."""
        try:
            message = parse_message(value)
        except InvalidMessage:
            self.control_invalid += 1
            assert self.config.control_topic is not None
            self.skip(self.config.control_topic, "invalid control message")
            return
        self.control_messages += 1
        self.control.apply(message)
        if isinstance(message, DeployEvent):
            mark = (message.instance_id, message.action, message.ts)
            if mark in self._seen_decisions:
                return  # re-read after a restart of the view's reader
            if len(self._seen_decisions) > 4 * MAX_DECISIONS:
                self._seen_decisions.clear()
            self._seen_decisions.add(mark)
            self.decisions.append(
                {
                    "ts": message.ts,
                    "action": "scale-out" if message.action == "deploy" else "scale-in",
                    "source": message.source_topic,
                    "target": message.target_topic,
                    "instance_id": message.instance_id,
                    "reason": message.reason,
                }
            )

    # ---- per poll ------------------------------------------------------------------------

    def on_offsets(
        self, now: float, ends: Offsets, committed: dict[str, Offsets], error: str | None
    ) -> None:
        """The admin poll's result: end offsets per topic, committed offsets per group."""
        self.poll_error = error
        if error is not None:
            # Nothing was read: the rates are unknown now, not the last ones, which the charts
            # would otherwise carry on flat through a broker's whole outage.
            for counter in [*(f.end for f in self.topics.values()), *self.groups.values()]:
                counter.points.clear()
        for topic, parts in ends.items():
            f = self.topics.get(topic)
            if f is None:
                continue
            f.exists, f.partitions = True, len(parts)
            f.end.add(now, sum(parts.values()))
        self.ends.update(ends)
        for group, offsets in committed.items():
            self.committed[group] = offsets
            total = sum(o for parts in offsets.values() for o in parts.values() if o >= 0)
            self.groups[group].add(now, total)
        self.control.prune(now)
        self.history.append(self._point(now))

    # ---- rendering -----------------------------------------------------------------------

    def _latency(self, topic: str | None, now: float) -> dict[str, float] | None:
        if topic is None or topic not in self.topics:
            return None
        cutoff = now - LATENCY_WINDOW
        return _percentiles([ms for t, ms in self.topics[topic].latencies if t >= cutoff])

    def _lag(self, stage: StageSpec) -> dict[str, Any]:
        committed = self.committed.get(stage.group, {})
        per: dict[str, dict[str, int | None]] = {}
        # Unknown until a partition's lag is: 0 would show a group that never committed (one
        # stuck on its first message, say) as keeping up.
        total: int | None = None
        for topic in stage.inputs:
            for p, end in sorted(self.ends.get(topic, {}).items()):
                c = committed.get(topic, {}).get(p, -1)
                lag = end - c if c >= 0 else None  # no commit yet: unknown, not "all of it"
                per.setdefault(topic, {})[str(p)] = lag
                if lag is not None:
                    total = (total or 0) + lag
        return {"total": total, "partitions": per}

    def _profile(self, stage: StageSpec) -> dict[str, Any] | None:
        profiler = stage.tap.profiler if stage.tap is not None else None
        if profiler is None:
            return None
        s = profiler.summary()
        return {
            "node": s["node"],
            "messages": s["messages"],
            "sampled": s["sampled"],
            "mean_ms": {k: round(v["mean"] * 1000, 3) for k, v in s["stages"].items()},
            "p95_ms": {k: round(v["p95"] * 1000, 3) for k, v in s["stages"].items()},
        }

    def _stage(self, stage: StageSpec, now: float) -> dict[str, Any]:
        out = self.topics[stage.output].end.rate() if stage.output else None
        return {
            "name": stage.label,
            "group": stage.group,
            "inputs": list(stage.inputs),
            "output": stage.output,
            "in_per_s": _r(self.groups[stage.group].rate()),
            "out_per_s": _r(out),
            "consumed": self.groups[stage.group].total,
            "lag": self._lag(stage),
            "latency_ms": self._latency(stage.output, now),
            "profile": self._profile(stage),
        }

    def _point(self, now: float) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        for s in self.config.stages:
            lat = self._latency(s.output, now)
            stages[s.label] = {
                "in": _r(self.groups[s.group].rate()),
                "out": _r(self.topics[s.output].end.rate()) if s.output else None,
                "lag": self._lag(s)["total"],
                "p50": lat["p50"] if lat else None,
                "p95": lat["p95"] if lat else None,
                "p99": lat["p99"] if lat else None,
            }
        auto = self._autoscale(now)
        return {
            "t": round(now, 3),
            "topics": {n: _r(f.end.rate()) for n, f in self.topics.items()},
            "stages": stages,
            "instances": {s["name"]: s["instances"] for s in auto["stages"]} if auto else {},
        }

    def _autoscale(self, now: float) -> dict[str, Any] | None:
        if not self.config.control_topic:
            return None
        state = self.control
        stages = []
        for key, stage in sorted(state.stages.items()):
            live = state.instances_of(key, now)
            stages.append(
                {
                    "name": f"{key[0]} → {key[1]}",
                    "source": key[0],
                    "target": key[1],
                    "group": stage.group_id,
                    "provider": stage.spec.provider,
                    "service": stage.spec.service_name,
                    "max_instance": stage.spec.max_instance,
                    "instances": len(live),
                    "instance_ids": sorted(i.instance_id for i in live),
                }
            )
        return {
            "topic": self.config.control_topic,
            "messages": self.control_messages,
            "invalid": self.control_invalid,
            "live_instances": len(state.live_instances(now)),
            "stages": stages,
            "decisions": list(self.decisions),
        }

    def snapshot(self, frames: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self.clock()
        return {
            "v": SCHEMA_VERSION,
            "time": round(now, 3),
            "started": round(self.started, 3),
            "poll_error": self.poll_error,
            "clients": self.clients,
            "topics": {
                name: {
                    "exists": f.exists,
                    "partitions": f.partitions,
                    "end_offsets": f.end.total,
                    "per_s": _r(f.end.rate()),
                    "read": f.read,
                    "skipped": dict(f.skipped),
                    "latency_ms": self._latency(name, now),
                }
                for name, f in self.topics.items()
            },
            "skipped": sum(n for f in self.topics.values() for n in f.skipped.values()),
            "frames": frames or {},
            "stages": [self._stage(s, now) for s in self.config.stages],
            "autoscale": self._autoscale(now),
            "history": list(self.history),
        }
