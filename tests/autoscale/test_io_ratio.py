"""INPUT_OUTPUT_WORKER: output/input per stage; a stall is a scale-out, never a worker exit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fogverse.autoscale.config import IOSettings
from fogverse.autoscale.messages import AutoScaleRequest, DeploySpec, Heartbeat
from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers.io_ratio import InputOutputWorker

T0 = 1_800_000_000.0
STAGE = ("in", "out")


class Clock:
    t = T0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, int, str]] = []

    def recommend(self, stage: Any, desired: int, source: str, ttl: float = 0) -> None:
        self.calls.append((stage, desired, source))


def _rig(threshold: float = 0.8) -> tuple[InputOutputWorker, ControlState, Clock, Recorder]:
    clock = Clock()
    state = ControlState(clock=clock)
    rec = Recorder()
    worker = InputOutputWorker(
        IOSettings(
            refresh_rate_second=1.0, input_output_ratio_threshold=threshold, window_seconds=5.0
        ),
        rec,
    )
    worker.state = state
    state.apply(AutoScaleRequest("a", T0, *STAGE, DeploySpec("LOCAL", "s", 4), "g"))
    return worker, state, clock, rec


def _run(
    state: ControlState, clock: Clock, seconds: int, rate_in: int, rate_out: dict[str, int]
) -> None:
    for _ in range(seconds):
        clock.t += 1.0
        state.apply(Heartbeat("up", clock.t, "in", rate_in, clock.t - 1.0, 1.0))
        for iid, n in rate_out.items():
            state.apply(Heartbeat(iid, clock.t, "out", n, clock.t - 1.0, 1.0, "in", "g"))


def test_falling_behind_asks_for_one_more_instance() -> None:
    worker, state, clock, rec = _rig()
    _run(state, clock, 10, 50, {"a": 20, "b": 20})
    [sample] = worker.evaluate().values()
    assert sample.ratio == 0.8 or abs(sample.ratio - 0.8) < 0.01
    _run(state, clock, 10, 50, {"a": 15, "b": 15})
    sample = worker.evaluate()[STAGE]
    assert abs(sample.ratio - 0.6) < 0.01 and sample.instances == 2
    assert rec.calls[-1] == (STAGE, 3, "input_output")


def test_keeping_up_recommends_the_current_count() -> None:
    worker, state, clock, rec = _rig()
    _run(state, clock, 10, 50, {"a": 25, "b": 25})
    assert worker.evaluate()[STAGE].ratio > 0.99
    assert rec.calls[-1] == (STAGE, 2, "input_output")


def test_a_stalled_stage_is_ratio_zero_and_a_scale_out_and_the_worker_keeps_going() -> None:
    worker, state, clock, rec = _rig()
    _run(state, clock, 10, 50, {"a": 0})
    for _ in range(3):  # evaluated again and again: the worker does not give up on a stall
        sample = worker.evaluate()[STAGE]
        assert sample.ratio == 0.0
        assert rec.calls[-1] == (STAGE, 2, "input_output")
        _run(state, clock, 1, 50, {"a": 0})


def test_the_worker_loop_survives_a_stall() -> None:
    async def scenario() -> None:
        worker, state, clock, rec = _rig()
        worker.settings = IOSettings(
            refresh_rate_second=0.01, input_output_ratio_threshold=0.8, window_seconds=5.0
        )
        _run(state, clock, 10, 50, {"a": 0})
        ready = asyncio.Event()
        ready.set()
        task = asyncio.create_task(worker._loop(ready))
        deadline = asyncio.get_running_loop().time() + 10.0
        while len(rec.calls) < 5:
            assert not task.done(), "the worker exited on a stalled stage"
            assert asyncio.get_running_loop().time() < deadline, "the worker stopped evaluating"
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task})

    asyncio.run(scenario())


def test_no_input_means_no_decision() -> None:
    worker, state, clock, rec = _rig()
    _run(state, clock, 10, 0, {"a": 0})
    assert worker.evaluate()[STAGE].ratio is None
    assert rec.calls == []


def test_both_rates_use_the_same_window_so_uneven_heartbeats_do_not_bias_the_ratio() -> None:
    worker, state, clock, _rec = _rig()
    # Upstream reports every 0.5 s, the stage every 2 s: same true rate of 40/s.
    for _ in range(20):
        for half in (0.5, 1.0):
            t = clock.t + half
            state.apply(Heartbeat("up", t, "in", 20, t - 0.5, 0.5))
        clock.t += 1.0
        if int(clock.t) % 2 == 0:
            state.apply(Heartbeat("a", clock.t, "out", 80, clock.t - 2.0, 2.0, "in", "g"))
    assert abs(worker.evaluate()[STAGE].ratio - 1.0) < 0.05


@pytest.mark.timeout(30)
def test_min_input_rate_zero_judges_every_stage_with_input_and_skips_one_without() -> None:
    # min_input_rate: 0 passes validation; a stage with no input then divided by zero and the
    # exception ended the evaluation before the other stages were judged.
    worker, state, clock, rec = _rig()
    worker.settings = IOSettings(
        refresh_rate_second=1.0,
        input_output_ratio_threshold=0.8,
        window_seconds=5.0,
        min_input_rate=0.0,
    )
    state.apply(AutoScaleRequest("z", T0, "idle", "out2", DeploySpec("LOCAL", "s", 4), "g"))
    _run(state, clock, 10, 50, {"a": 10})
    samples = worker.evaluate()
    assert samples[("idle", "out2")].ratio is None
    assert samples[STAGE].ratio is not None and samples[STAGE].ratio < 0.8
    assert rec.calls == [(STAGE, 2, "input_output")]
