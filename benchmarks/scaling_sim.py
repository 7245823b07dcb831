"""A simulated stage under a recorded load, on a simulated clock: what an auto-scaling policy
is replayed against (benchmarks/keda.py).

The stage reads a topic of ``partitions`` partitions; each message costs ``cost`` seconds of
one instance. Messages arrive at the recorded rate, spread evenly over each second and
round-robin over the partitions. Instances are consumer-group members:

- a new instance exists (and is paid for) from the moment the policy asks for it; it joins
  the group ``startup`` seconds later (container start, imports, first join);
- every join or leave is a rebalance: all members stop for ``rebalance`` seconds, then the
  partitions are range-assigned over the members in join order (members beyond the
  partition count get none, as in Kafka);
- a member works through the backlog of its partitions at ``1 / cost`` messages/s (a message
  is done at the earliest one step, ``dt``, after it arrived) and commits what it has done
  every ``commit_interval`` seconds (FogVerse's default, 0.5 s) and when its partitions are
  revoked; the lag (what KEDA's scaler and FogVerse's lag worker read) is end offsets minus
  committed offsets.

Both policies see the same stage and the same load; the numbers that differ come from their
decisions alone. What is not modelled: per-message cost variance, network, broker limits,
instances that fail to start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "EPOCH",
    "Clock",
    "Load",
    "Member",
    "Metrics",
    "Stage",
    "StageParams",
    "caught_up_after",
    "step_ramp_load",
    "summary",
]

EPOCH = 1_800_000_000.0
"""The simulated clock's zero, as epoch seconds (control messages carry real timestamps)."""


class Clock:
    """Simulated time: seconds since the start of the run, also as epoch seconds."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return EPOCH + self.t


@dataclass(frozen=True)
class Load:
    """Offered messages per second, one entry per second of the run."""

    name: str
    per_second: tuple[int, ...]
    phases: tuple[tuple[str, int, int], ...]
    """``(name, start s, end s)`` of each part of the load, for the report."""

    @property
    def duration(self) -> int:
        return len(self.per_second)

    def rate(self, t: float) -> int:
        i = int(t)
        return self.per_second[i] if 0 <= i < len(self.per_second) else 0


def step_ramp_load(
    base: int = 10,
    step: int = 60,
    top: int = 120,
    *,
    warm: int = 120,
    hold: int = 480,
    ramp: int = 300,
    top_hold: int = 300,
    tail: int = 900,
) -> Load:
    """The recorded load: ``base`` msg/s, a step to ``step``, a ramp to ``top``, a hold, then
    a quiet tail (no input)."""
    rates: list[int] = []
    rates += [base] * warm
    rates += [step] * hold
    rates += [round(step + (top - step) * (i + 1) / ramp) for i in range(ramp)]
    rates += [top] * top_hold
    rates += [0] * tail
    marks = [0, warm, warm + hold, warm + hold + ramp, warm + hold + ramp + top_hold, len(rates)]
    names = ("warm", "step", "ramp", "top", "tail")
    return Load(
        "step-ramp",
        tuple(rates),
        tuple((n, marks[i], marks[i + 1]) for i, n in enumerate(names)),
    )


@dataclass(frozen=True)
class StageParams:
    partitions: int = 12
    cost: float = 0.05
    """Seconds of one instance per message (20 messages/s per instance)."""
    startup: float = 10.0
    rebalance: float = 3.0
    commit_interval: float = 0.5
    dt: float = 0.1


@dataclass
class Member:
    """One instance of the stage."""

    instance_id: str
    created: float
    ready_at: float
    stopped: float | None = None
    joined: bool = False
    partitions: list[int] = field(default_factory=list)
    credit: float = 0.0
    commit_phase: float = 0.0
    """Where in each ``commit_interval`` this instance's commit timer fires (its own clock)."""
    done: int = 0
    """Messages this instance finished (its output), in total."""

    def exists(self) -> bool:
        return self.stopped is None


@dataclass
class Metrics:
    """What the run produced, sampled every second."""

    times: list[float] = field(default_factory=list)
    lag: list[int] = field(default_factory=list)
    rate: list[int] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)
    """Instances that exist (paid for) at each sample."""
    consuming: list[int] = field(default_factory=list)
    """Instances with partitions assigned at each sample."""
    done: list[int] = field(default_factory=list)
    """Messages finished so far, at each sample."""
    produced: list[int] = field(default_factory=list)
    """Messages offered so far, at each sample."""
    instance_seconds: float = 0.0
    scale_events: list[tuple[float, int, int]] = field(default_factory=list)
    """``(t, instances before, after)`` of every change the policy made."""


class Stage:
    """The simulated stage: partitions, members, backlog."""

    def __init__(self, params: StageParams, load: Load, clock: Clock) -> None:
        self.p = params
        self.load = load
        self.clock = clock
        self.produced = [0] * params.partitions
        self.done = [0] * params.partitions
        self.committed = [0] * params.partitions
        self.members: list[Member] = []
        self.paused_until = -math.inf
        self.metrics = Metrics()
        self._arrival_credit = 0.0
        self._next_partition = 0
        self._serial = 0
        self.on_join: list[Callable[[Member], None]] = []
        self.on_leave: list[Callable[[Member], None]] = []

    # ---- what a policy may do ------------------------------------------------------------

    def add(self, instance_id: str | None = None) -> Member:
        """Start one more instance (it joins the group ``startup`` seconds from now)."""
        self._serial += 1
        t = self.clock.t
        member = Member(instance_id or f"i{self._serial}", t, t + self.p.startup)
        # Commit timers run from each node's own start: spread them over the interval.
        steps = max(1, round(self.p.commit_interval / self.p.dt))
        member.commit_phase = ((self._serial * 3) % steps) * self.p.dt
        self.members.append(member)
        return member

    def remove(self, member: Member | None = None) -> Member | None:
        """Stop ``member`` (default: the newest); it leaves the group at once."""
        live = [m for m in self.members if m.exists()]
        if not live:
            return None
        member = member or live[-1]
        member.stopped = self.clock.t
        if member.joined:
            member.joined = False
            self._rebalance()
            for fn in self.on_leave:
                fn(member)
        return member

    def scaled(self, before: int, after: int) -> None:
        """Record one scaling decision (one deploy, one stop, one replica-count patch)."""
        self.metrics.scale_events.append((self.clock.t, before, after))

    def count(self) -> int:
        return sum(1 for m in self.members if m.exists())

    def lag(self) -> int:
        return sum(self.produced) - sum(self.committed)

    def partition_offsets(self) -> tuple[list[int], list[int]]:
        """``(end offsets, committed offsets)`` per partition."""
        return list(self.produced), list(self.committed)

    # ---- time ----------------------------------------------------------------------------

    def advance(self) -> None:
        """One ``dt`` of arrivals, joins and work; samples the metrics on whole seconds."""
        p, t = self.p, self.clock.t
        for m in self.members:
            if m.exists() and not m.joined and t >= m.ready_at:
                m.joined = True
                self._rebalance()
                for fn in self.on_join:
                    fn(m)
        if t >= self.paused_until:
            self._work()
        for m in self.members:
            k = (t - m.commit_phase) / p.commit_interval
            if m.joined and abs(k - round(k)) < 1e-6:
                for q in m.partitions:
                    self.committed[q] = self.done[q]
        # Work before arrivals: a message is done (and committed) no earlier than the step
        # after it arrived, so a stage with input never shows a lag of exactly zero.
        self._arrive(t)
        live = self.count()
        self.metrics.instance_seconds += live * p.dt
        if abs(t - round(t)) < p.dt / 2:
            self.metrics.times.append(round(t))
            self.metrics.lag.append(self.lag())
            self.metrics.rate.append(self.load.rate(t))
            self.metrics.instances.append(live)
            self.metrics.consuming.append(sum(1 for m in self.members if m.joined and m.partitions))
            self.metrics.done.append(sum(self.done))
            self.metrics.produced.append(sum(self.produced))

    def _arrive(self, t: float) -> None:
        self._arrival_credit += self.load.rate(t) * self.p.dt
        n = int(self._arrival_credit + 1e-9)
        self._arrival_credit -= n
        for _ in range(n):
            self.produced[self._next_partition] += 1
            self._next_partition = (self._next_partition + 1) % self.p.partitions

    def _rebalance(self) -> None:
        self.paused_until = self.clock.t + self.p.rebalance
        self.committed = list(self.done)  # members commit what they finished on revocation
        members = [m for m in self.members if m.joined]
        for m in members:
            m.partitions = []
            m.credit = 0.0
        # Kafka's range assignor: consecutive partitions, the first members one more each.
        n, k = self.p.partitions, len(members)
        if not k:
            return
        each, extra = divmod(n, k)
        start = 0
        for i, m in enumerate(members):
            size = each + (1 if i < extra else 0)
            m.partitions = list(range(start, start + size))
            start += size

    def _work(self) -> None:
        per_tick = self.p.dt / self.p.cost
        for m in self.members:
            if not m.joined or not m.partitions:
                continue
            m.credit += per_tick
            while m.credit >= 1.0:
                busiest = max(m.partitions, key=lambda q: self.produced[q] - self.done[q])
                if self.produced[busiest] == self.done[busiest]:
                    m.credit = min(m.credit, 1.0)  # idle time is not banked
                    break
                self.done[busiest] += 1
                m.done += 1
                m.credit -= 1.0


def caught_up_after(
    metrics: Metrics, start: int, end: int, seconds_of_input: float = 1.0
) -> float | None:
    """Seconds from ``start`` until the lag is under ``seconds_of_input`` of the offered rate
    for the rest of ``[start, end)``; ``None`` if it is still above at ``end``."""
    last_over = None
    for t, lag, rate in zip(metrics.times, metrics.lag, metrics.rate, strict=True):
        if start <= t < end and lag > rate * seconds_of_input:
            last_over = t
    if last_over is None:
        return 0.0
    if last_over >= end - 1:
        return None
    return float(last_over + 1 - start)


def summary(metrics: Metrics, phases: Sequence[tuple[str, int, int]]) -> dict[str, object]:
    """The table's figures for one policy's run."""
    spans = {name: (a, b) for name, a, b in phases}
    step_start, ramp_end = spans["step"][0], spans["top"][1]
    return {
        "caught_up_after_step_s": caught_up_after(metrics, step_start, spans["ramp"][0]),
        "caught_up_after_ramp_s": caught_up_after(metrics, spans["ramp"][0], ramp_end),
        "peak_lag": max(metrics.lag),
        "lag_at_load_end": metrics.lag[ramp_end] if ramp_end < len(metrics.lag) else None,
        "drained_after_load_s": next(
            (
                t - ramp_end
                for t, lag in zip(metrics.times, metrics.lag, strict=True)
                if t >= ramp_end and lag == 0
            ),
            None,
        ),
        "instance_seconds": round(metrics.instance_seconds),
        "scale_events": len(metrics.scale_events),
        "peak_instances": max(metrics.instances),
        "instances_at_end": metrics.instances[-1],
    }
