"""STATISTIC_WORKER: throughput per topic and a spike test defined for every history."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogverse.autoscale.config import StatisticSettings
from fogverse.autoscale.messages import AutoScaleRequest, DeploySpec, Heartbeat
from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers.statistic import StatisticWorker, spike_test

T0 = 1_800_000_000.0


def test_zero_variance_history_does_not_divide_by_zero() -> None:
    flat = [50.0] * 20
    assert not spike_test(flat, 50.0, 1.5).spike
    assert not spike_test(flat, 50.5, 1.5).spike, "a 1 % wobble on a flat history is no spike"
    assert spike_test(flat, 80.0, 1.5).spike
    zeros = [0.0] * 10
    result = spike_test(zeros, 0.0, 1.5)
    assert not result.spike and result.z == 0.0
    assert spike_test(zeros, 20.0, 1.5).spike
    assert math.isfinite(spike_test(zeros, 20.0, 1.5).z)


def test_short_history_is_never_a_spike() -> None:
    assert not spike_test([], 1000.0, 1.5).spike
    assert not spike_test([1.0, 1.0], 1000.0, 1.5, min_samples=3).spike
    assert spike_test([1.0, 1.0, 1.0], 1000.0, 1.5, min_samples=3).spike


def test_spike_is_an_upward_outlier_beyond_z_value() -> None:
    history = [10.0, 12.0, 11.0, 9.0, 10.0, 11.0, 10.0, 12.0]
    assert spike_test(history, 30.0, 1.5).spike
    assert not spike_test(history, 11.5, 1.5).spike
    assert not spike_test(history, 0.0, 1.5).spike, "a drop is not a reason to hold back"
    r = spike_test(history, 30.0, 1.5)
    assert r.z == pytest.approx((30.0 - r.mean) / r.sigma)


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), max_size=50),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0.1, max_value=5),
)
def test_spike_test_is_total(history: list[float], current: float, z: float) -> None:
    result = spike_test(history, current, z)
    assert (math.isfinite(result.z) and result.sigma > 0) or not history


class Clock:
    t = T0

    def __call__(self) -> float:
        return self.t


def _worker() -> tuple[StatisticWorker, ControlState, Clock]:
    clock = Clock()
    state = ControlState(clock=clock)
    worker = StatisticWorker(
        StatisticSettings(z_value=2.0, refresh_rate=1.0, maximum_seconds=30, min_samples=3)
    )
    worker.state = state
    state.apply(AutoScaleRequest("n", T0, "in", "out", DeploySpec("LOCAL", "s", 3)))
    return worker, state, clock


def _second(state: ControlState, clock: Clock, rate: int) -> None:
    clock.t += 1.0
    state.apply(Heartbeat("up", clock.t, "in", rate, clock.t - 1.0, 1.0))


def test_worker_samples_rates_flags_a_burst_and_vetoes_scale_out_of_that_stage() -> None:
    worker, state, clock = _worker()
    for _ in range(15):
        _second(state, clock, 20)
        worker.sample()
    stage = state.stages[("in", "out")]
    assert worker.veto(stage) is None
    assert worker.throughput("in") == pytest.approx(20.0, rel=0.1)
    for _ in range(3):
        _second(state, clock, 200)
        worker.sample()
    assert worker.is_spike("in")
    assert "spiking" in (worker.veto(stage) or "")
    # A sustained level stops being a spike once the history has absorbed it.
    for _ in range(30):
        _second(state, clock, 200)
        worker.sample()
    assert not worker.is_spike("in") and worker.veto(stage) is None
    assert len(worker.history["in"]) <= 31, "history is bounded by maximum_seconds"


def test_a_stage_with_no_input_yet_is_sampled_as_zero() -> None:
    worker, _state, clock = _worker()
    clock.t += 5
    results = worker.sample()
    assert results["in"].spike is False and worker.history["in"][-1][1] == 0.0
