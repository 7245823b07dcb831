"""The periodic-worker base: the loop outlives failing evaluations, logs them without flooding,
and stops promptly, once, leaving nothing behind."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from polling import until

from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers.periodic import FailureLog, PeriodicWorker

DEADLINE = 10.0


def _master() -> Any:
    ready = asyncio.Event()
    ready.set()
    return SimpleNamespace(state=ControlState(), ready=ready)


class Flaky(PeriodicWorker):
    """Raises ``errors[i]`` on its i-th evaluation while there are any, then counts successes."""

    NAME = "flaky-worker"

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__()
        self.errors = list(errors)
        self.calls = 0
        self.successes = 0

    def _interval(self) -> float:
        return 0.001

    async def _tick(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.successes += 1


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == level and "flaky-worker" in r.getMessage()]


def test_the_loop_survives_failing_evaluations_and_logs_each_distinct_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    errors: list[Exception] = [RuntimeError("broker away")] * 5 + [KeyError("stage")]

    async def scenario() -> Flaky:
        worker = Flaky(errors)
        await worker.start(_master())
        try:
            await until(lambda: worker.successes >= 3, DEADLINE, "evaluations after the failures")
        finally:
            await worker.stop()
        return worker

    worker = asyncio.run(scenario())
    assert worker.calls >= 9
    failures = _records(caplog, logging.ERROR)
    assert [r.exc_info[1] for r in failures if r.exc_info] == [errors[0], errors[-1]], (
        "one line per distinct error, with its traceback"
    )
    [recovered] = _records(caplog, logging.INFO)
    assert "6 failure(s)" in recovered.getMessage()


def test_a_repeated_error_is_logged_again_after_the_interval_with_the_count_in_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    log = FailureLog(logging.getLogger("test.failure"), every=60.0, clock=lambda: now[0])
    for _ in range(10):  # one outage, evaluated every 5 s for 45 s
        log.failed("lag", ConnectionError("down"), logging.WARNING)
        now[0] += 5.0
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    now[0] = 61.0
    log.failed("lag", ConnectionError("down"), logging.WARNING)
    assert len(caplog.records) == 2 and "9 failure(s) since not logged" in caplog.messages[1]
    log.failed("other", ConnectionError("down"))
    assert len(caplog.records) == 3, "failures of something else are tracked apart"
    log.recovered("lag")
    log.recovered("lag")
    assert caplog.messages[3:] == ["lag works again after 11 failure(s)"]
    log.failed("lag", ConnectionError("down"))
    assert len(caplog.records) == 5, "after a recovery the next failure is news again"


def test_the_first_evaluation_waits_for_the_master_to_be_ready() -> None:
    async def scenario() -> None:
        worker = Flaky([])
        master = _master()
        master.ready.clear()
        await worker.start(master)
        for _ in range(20):
            await asyncio.sleep(0)
        assert worker.calls == 0
        master.ready.set()
        await until(lambda: worker.calls > 0, DEADLINE, "the first evaluation")
        await worker.stop()

    asyncio.run(scenario())


class Stuck(PeriodicWorker):
    """An evaluation that blocks until cancelled (or, if ``stubborn``, until ``release``)."""

    NAME = "stuck-worker"

    def __init__(self, stubborn: bool = False) -> None:
        super().__init__()
        self.stubborn = stubborn
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    def _interval(self) -> float:
        return 0.001

    async def _tick(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            if self.stubborn:
                await self.release.wait()  # an evaluation that finishes its work before it ends
            raise


def test_stop_during_an_evaluation_returns_promptly_leaves_no_task_and_is_idempotent() -> None:
    async def scenario() -> None:
        worker = Stuck()
        await worker.stop()  # before start: nothing to do
        await worker.start(_master())
        await asyncio.wait_for(worker.entered.wait(), DEADLINE)
        await asyncio.wait_for(worker.stop(), DEADLINE)
        assert worker.cancelled
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await asyncio.wait_for(worker.stop(), DEADLINE)
        await asyncio.gather(worker.stop(), worker.stop())

    asyncio.run(scenario())


def test_stop_does_not_swallow_the_cancellation_of_its_caller() -> None:
    async def scenario() -> None:
        worker = Stuck(stubborn=True)
        await worker.start(_master())
        try:
            await asyncio.wait_for(worker.entered.wait(), DEADLINE)
            stopper = asyncio.create_task(worker.stop())
            await until(lambda: worker.cancelled, DEADLINE, "the loop to be cancelled")
            stopper.cancel()
            await asyncio.wait({stopper}, timeout=DEADLINE)
            assert stopper.cancelled(), "stop() turned its caller's cancellation into a return"
        finally:
            worker.release.set()
        await until(
            lambda: asyncio.all_tasks() == {asyncio.current_task()}, DEADLINE, "the loop to end"
        )

    asyncio.run(scenario())
