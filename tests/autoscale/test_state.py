"""What the master knows: rates from heartbeats, live instances, stage membership."""

from __future__ import annotations

import pytest

from fogverse.autoscale.messages import AutoScaleRequest, DeploySpec, Heartbeat
from fogverse.autoscale.state import ControlState, RateTracker

T0 = 1_800_000_000.0


def test_counts_are_spread_over_the_span_each_heartbeat_covers() -> None:
    r = RateTracker()
    r.add("t", T0, T0 + 2, 100)  # 50/s over two seconds
    assert r.count("t", T0, T0 + 1) == pytest.approx(50)
    assert r.rate("t", T0 + 0.5, T0 + 1.5) == pytest.approx(50)
    assert r.rate("t", T0 + 2, T0 + 4) == 0
    assert r.rate("t", T0, T0) == 0


class Clock:
    t = T0

    def __call__(self) -> float:
        return self.t


def test_duplicate_heartbeats_count_once_and_future_timestamps_are_clamped() -> None:
    clock = Clock()
    state = ControlState(clock=clock)
    hb = Heartbeat("a", T0, "out", 10, T0 - 1, 1.0)
    state.apply(hb)
    state.apply(hb)  # a producer retry, an overlapping re-read
    assert state.rates.count("out", T0 - 1, T0) == pytest.approx(10)
    state.apply(Heartbeat("b", T0 + 3600, "out", 0, T0 + 3599, 1.0))  # a fast clock
    clock.t = T0 + 3.5
    assert "b" not in {i.instance_id for i in state.live_instances()}, "not kept alive"


def test_instances_belong_to_the_stage_they_asked_to_scale_or_report_for() -> None:
    clock = Clock()
    state = ControlState(clock=clock)
    spec = DeploySpec("LOCAL", "s", 3)
    state.apply(AutoScaleRequest("a", T0, "in", "out", spec))
    state.apply(AutoScaleRequest("x", T0, "in", "other", spec))
    state.apply(Heartbeat("a", T0, "out", 1, T0 - 1, 1.0))
    state.apply(Heartbeat("b", T0, "out", 1, T0 - 1, 1.0, "in"))  # source + target
    state.apply(Heartbeat("c", T0, "out", 1, T0 - 1, 1.0))  # target only: unique match
    state.apply(Heartbeat("up", T0, "in", 1, T0 - 1, 1.0))  # upstream: not an instance
    assert {i.instance_id for i in state.instances_of(("in", "out"))} == {"a", "b", "c"}
    assert {i.instance_id for i in state.instances_of(("in", "other"))} == {"x"}
    clock.t = T0 + 3.5
    assert state.instances_of(("in", "out")) == []
    state.prune(T0 + 10_000)
    assert state.instances == {}


@pytest.mark.timeout(30)
def test_one_heartbeat_from_the_future_does_not_make_later_ones_look_like_duplicates() -> None:
    # A node's clock jumped a day ahead for one heartbeat (or a garbage/forged one) that said
    # final: its later, correct heartbeats must still count and keep it alive.
    clock = Clock()
    state = ControlState(clock=clock)
    state.apply(Heartbeat("a", T0 + 86_400, "out", 1, T0 + 86_399, 1.0, "in", final=True))
    for k in range(1, 11):
        clock.t = T0 + k
        state.apply(Heartbeat("a", T0 + k, "out", 100, T0 + k - 1, 1.0, "in"))
    assert state.rates.count("out", T0, T0 + 10) == pytest.approx(1000)
    assert [i.instance_id for i in state.live_instances()] == ["a"]


@pytest.mark.timeout(30)
def test_a_heartbeat_from_a_slightly_fast_clock_read_twice_counts_once() -> None:
    clock = Clock()
    state = ControlState(clock=clock)
    hb = Heartbeat("a", T0 + 0.5, "out", 10, T0 - 0.5, 1.0)  # sender 0.5 s ahead
    state.apply(hb)
    clock.t = T0 + 0.1
    state.apply(hb)  # a producer retry
    later = Heartbeat("a", T0 + 1.5, "out", 10, T0 + 0.5, 1.0)
    clock.t = T0 + 1.0
    state.apply(later)
    state.apply(hb)  # an old one, late
    state.apply(later)
    assert state.rates.count("out", T0 - 1, T0 + 2) == pytest.approx(20)


@pytest.mark.timeout(30)
def test_heartbeats_from_a_clock_always_two_minutes_ahead_read_twice_count_once() -> None:
    # A node without NTP, steadily ahead: its own timestamps still order its heartbeats, so a
    # re-read of an older one (a master's overlapping re-read) is known as one.
    clock = Clock()
    state = ControlState(clock=clock)
    beats = [Heartbeat("a", T0 + 120 + k, "out", 10, T0 + 119 + k, 1.0) for k in range(1, 6)]
    for k, hb in enumerate(beats, 1):
        clock.t = T0 + k
        state.apply(hb)
        state.apply(beats[0])  # read again
    assert state.rates.count("out", T0, T0 + 200) == pytest.approx(50)


def test_an_instance_is_judged_silent_only_against_what_the_master_has_read() -> None:
    # A master whose loop stalled has the heartbeats sent meanwhile still unread: judged by
    # the clock alone, its instances looked gone and were replaced past max_instance.
    clock = Clock()
    state = ControlState(clock=clock)
    state.apply(Heartbeat("a", T0, "out", 1, T0 - 0.5, 0.5))
    state.mark_read(T0)
    clock.t = T0 + 5  # 10 intervals later, nothing read since
    assert [i.instance_id for i in state.live_instances()] == ["a"]
    state.mark_read(T0 + 4)  # a read that began then reached the end: "a" said nothing
    assert state.live_instances() == []
    state.mark_read(T0 + 1)  # an older read moves nothing back
    assert state.read_until == T0 + 4
