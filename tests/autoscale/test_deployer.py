"""AUTO_DEPLOYER decisions on a controlled clock: delays, max_instance, expiry, backoff,
sync and async deploy functions, startup timeouts, scale-in and restart bookkeeping; and its
loop: it outlives failing evaluations and stops once, after the deploys in flight."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from polling import until

from fogverse.autoscale.config import DeployerSettings
from fogverse.autoscale.deploy import DeployScripts
from fogverse.autoscale.messages import AutoScaleRequest, DeployEvent, DeploySpec, Heartbeat
from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers.deployer import AutoDeployer

STAGE = ("src", "out")
T0 = 1_800_000_000.0
DEADLINE = 10.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Handle:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class Rig:
    """A deployer wired to a state, with a recording deploy function."""

    def __init__(self, fn: Any = None, max_instance: int = 3, **settings: Any) -> None:
        self.clock = Clock()
        self.state = ControlState(clock=self.clock)
        self.calls: list[dict[str, Any]] = []
        self.handles: list[Handle] = []
        self.published: list[Any] = []
        scripts = DeployScripts()
        scripts.set_deploy_functions("LOCAL", fn or self.deploy)
        base = {
            "deploy_delay": 10.0,
            "after_heartbeat_delay": 4.0,
            "startup_timeout": 30.0,
            "retry_backoff": 1.0,
            "retry_backoff_max": 8.0,
        }
        self.deployer = AutoDeployer(
            scripts, DeployerSettings(**{**base, **settings}), clock=self.clock
        )
        self.deployer.state = self.state
        self.state.apply(
            AutoScaleRequest(
                "first", self.clock(), *STAGE, DeploySpec("LOCAL", "svc", max_instance), "g"
            )
        )
        self.beat("first")
        self.clock.advance(60)  # the first instance is long established
        self.beat("first")

    def deploy(self, log: Any, config: dict[str, Any]) -> Handle:
        self.calls.append(dict(config))
        handle = Handle(config["instance_id"])
        self.handles.append(handle)
        return handle

    def beat(self, instance_id: str, count: int = 0) -> None:
        now = self.clock()
        self.state.apply(
            Heartbeat(instance_id, now, STAGE[1], count, now - 1.0, 1.0, STAGE[0], "g")
        )

    def beat_all(self) -> None:
        for iid in ["first"] + [c["instance_id"] for c in self.calls]:
            if iid in self.state.instances and not self.state.instances[iid].final:
                self.beat(iid)

    async def tick(self) -> None:
        await self.deployer.tick()
        st = self.deployer.stages.get(STAGE)
        if st is not None and st.task is not None:
            await st.task

    @property
    def deploys(self) -> list[Any]:
        return [r for r in self.deployer.records if r.action == "deploy"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _master(rig: Rig) -> Any:
    """What the deployer's start() reads from the master: its state, readiness and topic."""

    async def publish(message: Any) -> None:
        rig.published.append(message)

    ready = asyncio.Event()
    ready.set()
    return SimpleNamespace(
        state=rig.state,
        ready=ready,
        consumer_topic="control",
        consumer_servers="broker:9092",
        publish=publish,
    )


def test_deploys_when_a_signal_wants_more_and_passes_the_stage_details() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.deployer.recommend(STAGE, 2, "test", ttl=100)
        await rig.tick()
        assert len(rig.calls) == 1
        call = rig.calls[0]
        assert call["provider"] == "LOCAL" and call["service_name"] == "svc"
        assert call["source_topic"] == "src" and call["target_topic"] == "out"
        assert call["group_id"] == "g" and call["current_instances"] == 1
        assert rig.deployer.counts(STAGE) == (1, 1)  # the new one is starting
        # Why, for people and the live view: the signals' wishes against the count.
        assert rig.deployer.records[0].detail == "test wants 2; has 1"
        await rig.tick()
        assert len(rig.calls) == 1, "wanted 2, has 1 + 1 starting: no second deploy"

    run(scenario())


def test_deploy_delay_and_after_heartbeat_delay_hold_the_next_deploy() -> None:
    async def scenario() -> None:
        rig = Rig(deploy_delay=10.0, after_heartbeat_delay=4.0)
        rig.deployer.recommend(STAGE, 3, "test", ttl=1000)
        await rig.tick()
        assert len(rig.calls) == 1
        # The new instance reports 8 s later: deploy_delay (10 s) still holds.
        rig.clock.advance(8)
        rig.beat_all()
        rig.beat(rig.calls[0]["instance_id"])
        await rig.tick()
        assert len(rig.calls) == 1
        assert "deploy_delay" in (rig.deployer.stages[STAGE].blocked or "")
        # deploy_delay has passed, but the new instance reported only 3 s ago.
        rig.clock.advance(3)
        rig.beat_all()
        await rig.tick()
        assert len(rig.calls) == 1
        assert rig.deployer.stages[STAGE].blocked == "after_heartbeat_delay"
        rig.clock.advance(1.5)
        rig.beat_all()
        await rig.tick()
        assert len(rig.calls) == 2
        gap = rig.deploys[1].ts - rig.deploys[0].ts
        assert gap >= 10.0

    run(scenario())


def test_max_instance_is_never_exceeded() -> None:
    async def scenario() -> None:
        rig = Rig(max_instance=3, deploy_delay=0.0, after_heartbeat_delay=0.0)
        rig.deployer.recommend(STAGE, 50, "test", ttl=1000)
        for _ in range(20):
            await rig.tick()
            for call in rig.calls:
                rig.beat(call["instance_id"])
            rig.clock.advance(0.5)
            rig.beat_all()
        assert len(rig.calls) == 2  # 1 running + 2 = max_instance 3
        assert sum(rig.deployer.counts(STAGE)) == 3
        assert "max_instance" in (rig.deployer.stages[STAGE].blocked or "")

    run(scenario())


def test_an_instance_that_stops_reporting_expires_and_is_replaced() -> None:
    async def scenario() -> None:
        rig = Rig(deploy_delay=0.0, after_heartbeat_delay=0.0)
        rig.beat("second")  # seen by its target topic only: matched to the stage
        assert rig.deployer.counts(STAGE) == (2, 0)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        assert not rig.calls
        # "second" goes silent; expiry = 3 heartbeat intervals of 1 s.
        rig.clock.advance(2.5)
        rig.beat("first")
        assert rig.deployer.counts(STAGE) == (2, 0)
        rig.clock.advance(1.0)
        rig.beat("first")
        assert rig.deployer.counts(STAGE) == (1, 0)
        await rig.tick()
        assert len(rig.calls) == 1

    run(scenario())


def test_a_final_heartbeat_counts_the_instance_out_at_once() -> None:
    rig = Rig()
    rig.beat("second")
    assert rig.deployer.counts(STAGE) == (2, 0)
    now = rig.clock()
    rig.state.apply(Heartbeat("second", now + 0.1, "out", 3, now, 1.0, "src", "g", final=True))
    assert rig.deployer.counts(STAGE) == (1, 0)


def test_failed_deploys_are_retried_with_exponential_backoff() -> None:
    attempts: list[float] = []

    async def scenario() -> None:
        rig = Rig(
            fn=lambda log, conf: attempts.append(rig.clock()) or None,
            retry_backoff=1.0,
            retry_backoff_max=4.0,
            deploy_delay=0.0,
            after_heartbeat_delay=0.0,
        )
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        for _ in range(100):  # 25 s in 0.25 s ticks
            await rig.tick()
            rig.clock.advance(0.25)
            rig.beat_all()
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
        assert gaps[:4] == [1.0, 2.0, 4.0, 4.0], gaps  # doubling, capped at the maximum
        assert all(r.action == "deploy-failed" for r in rig.deployer.records)
        assert rig.deployer.stages[STAGE].failures == len(attempts)

    run(scenario())


def test_a_raising_deploy_function_or_an_unknown_provider_is_a_failed_deploy() -> None:
    async def scenario() -> None:
        def boom(log: Any, conf: Any) -> Any:
            raise RuntimeError("no capacity")

        rig = Rig(fn=boom)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        [record] = rig.deployer.records
        assert record.action == "deploy-failed" and "no capacity" in record.detail

        rig2 = Rig()
        rig2.state.stages[STAGE].spec = DeploySpec("NOWHERE", "svc", 3)
        rig2.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig2.tick()
        [record] = rig2.deployer.records
        assert "no deploy function for provider 'NOWHERE'" in record.detail

    run(scenario())


def test_sync_deploy_functions_run_off_the_event_loop_and_async_ones_on_it() -> None:
    threads: list[str] = []
    # A blocking SDK call that returns only once the event loop has run a callback meanwhile:
    # on the loop's own thread it would wait out its timeout instead.
    loop_ran = threading.Event()
    loop_ran_during_call: list[bool] = []

    def slow_sync(log: Any, conf: Any) -> Handle:
        threads.append(threading.current_thread().name)
        loop_ran_during_call.append(loop_ran.wait(timeout=5))
        return Handle(conf["instance_id"])

    async def fast_async(log: Any, conf: Any) -> Handle:
        threads.append(threading.current_thread().name)
        await asyncio.sleep(0)
        return Handle(conf["instance_id"])

    async def scenario(fn: Any) -> None:
        rig = Rig(fn=fn)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.01)
                if threads:  # the call has begun
                    loop_ran.set()

        t = asyncio.create_task(ticker())
        await rig.tick()
        t.cancel()
        assert rig.deploys, "the deploy succeeded"

    run(scenario(slow_sync))
    assert threads[-1] != threading.main_thread().name
    assert loop_ran_during_call == [True], "the event loop was blocked by a sync deploy"
    run(scenario(fast_async))
    assert threads[-1] == threading.main_thread().name


def test_an_instance_that_never_reports_counts_as_a_failed_deploy_and_is_stopped() -> None:
    async def scenario() -> None:
        rig = Rig(startup_timeout=5.0, deploy_delay=0.0, after_heartbeat_delay=0.0)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        assert rig.deployer.counts(STAGE) == (1, 1)
        rig.clock.advance(5.5)
        rig.beat("first")
        await rig.tick()
        # The stop runs in the background.
        await until(lambda: rig.handles[0].stopped, DEADLINE, "the silent instance's stop")
        assert [r.action for r in rig.deployer.records][:2] == ["deploy", "startup-timeout"]
        assert rig.handles[0].stopped
        assert rig.deployer.stages[STAGE].failures == 1

    run(scenario())


def test_scale_in_is_off_by_default_and_waits_for_the_stabilisation_window() -> None:
    async def grow(rig: Rig) -> None:
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        rig.beat(rig.calls[0]["instance_id"])
        assert rig.deployer.counts(STAGE) == (2, 0)

    async def scenario(scale_in: bool) -> Rig:
        rig = Rig(
            deploy_delay=1.0,
            after_heartbeat_delay=0.0,
            scale_in=scale_in,
            stabilisation_window=20.0,
        )
        await grow(rig)
        for _ in range(60):  # 30 s of "one is enough"
            rig.clock.advance(0.5)
            rig.beat_all()
            rig.deployer.recommend(STAGE, 1, "test", ttl=1000)
            await rig.tick()
            if rig.handles[0].stopped:
                break
        return rig

    off = run(scenario(False))
    assert not off.handles[0].stopped
    on = run(scenario(True))
    assert on.handles[0].stopped
    [record] = [r for r in on.deployer.records if r.action == "scale-in"]
    assert record.ts - (T0 + 60) >= 20.0, "scaled in before a full stabilisation window"


def test_scale_in_keeps_min_instance_and_never_stops_instances_it_did_not_start() -> None:
    async def scenario() -> Rig:
        rig = Rig(
            deploy_delay=0.0,
            after_heartbeat_delay=0.0,
            scale_in=True,
            stabilisation_window=2.0,
            min_instance=1,
        )
        rig.beat("second")  # not ours
        for _ in range(20):
            rig.clock.advance(0.5)
            rig.beat_all()
            rig.beat("second")
            rig.deployer.recommend(STAGE, 0, "test", ttl=1000)
            await rig.tick()
        return rig

    rig = run(scenario())
    assert rig.deployer.counts(STAGE) == (2, 0)
    assert not [r for r in rig.deployer.records if r.action == "scale-in"]


def test_scale_in_happens_when_ticks_do_not_divide_the_window() -> None:
    """A real loop's ticks drift (0.25 s asked, 0.26 s taken): the evidence must still be
    seen to cover the window, or scale-in waits for a tick to land on its edge by chance."""

    async def scenario() -> Rig:
        rig = Rig(
            deploy_delay=1.0,
            after_heartbeat_delay=0.0,
            scale_in=True,
            stabilisation_window=4.0,
            max_instance=3,
        )
        rig.deployer.recommend(STAGE, 3, "test", ttl=1000)
        for _ in range(2):
            await rig.tick()
            rig.beat(rig.calls[-1]["instance_id"])
            rig.clock.advance(1.0)
        assert rig.deployer.counts(STAGE) == (3, 0)
        for _ in range(200):  # 52 s of "one is enough"
            rig.clock.advance(0.26)
            rig.beat_all()
            rig.deployer.recommend(STAGE, 1, "test", ttl=1000)
            await rig.tick()
        return rig

    rig = run(scenario())
    assert [h.stopped for h in rig.handles] == [True, True]
    assert rig.deployer.counts(STAGE) == (1, 0)


def test_a_veto_holds_a_scale_out_back() -> None:
    async def scenario() -> None:
        rig = Rig(deploy_delay=0.0, after_heartbeat_delay=0.0)
        vetoing = [True]
        rig.deployer.add_veto(lambda stage: "spike" if vetoing[0] else None)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        assert not rig.calls and rig.deployer.stages[STAGE].blocked == "spike"
        vetoing[0] = False
        await rig.tick()
        assert len(rig.calls) == 1

    run(scenario())


def test_a_restarted_deployer_learns_recent_deploys_from_the_control_topic() -> None:
    async def scenario() -> None:
        rig = Rig(deploy_delay=10.0, after_heartbeat_delay=0.0)
        # The previous master deployed "svc-old" 3 s ago; it has not reported yet.
        rig.deployer.on_message(
            DeployEvent("svc-old", rig.clock() - 3, *STAGE, "deploy", "LOCAL", "svc")
        )
        rig.deployer.recommend(STAGE, 3, "test", ttl=1000)
        assert rig.deployer.counts(STAGE) == (1, 1)
        await rig.tick()
        assert not rig.calls, "deployed again while the previous master's instance starts"
        rig.beat("svc-old")
        await rig.tick()
        assert not rig.calls and rig.deployer.stages[STAGE].blocked == "deploy_delay"
        rig.clock.advance(7.5)
        rig.beat_all()
        rig.beat("svc-old")
        await rig.tick()
        assert len(rig.calls) == 1

    run(scenario())


def test_stale_recommendations_expire() -> None:
    rig = Rig()
    rig.deployer.recommend(STAGE, 3, "io", ttl=2.0)
    rig.deployer.recommend(STAGE, 2, "lag", ttl=10.0)
    assert rig.deployer.desired(STAGE) == 3
    rig.clock.advance(3)
    assert rig.deployer.desired(STAGE) == 2
    rig.clock.advance(10)
    assert rig.deployer.desired(STAGE) is None


@pytest.mark.parametrize("stop_on_exit", [False, True])
def test_stop_instances_on_exit(stop_on_exit: bool) -> None:
    async def scenario() -> Rig:
        rig = Rig(stop_instances_on_exit=stop_on_exit)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        await rig.deployer.stop()
        return rig

    rig = run(scenario())
    assert rig.handles[0].stopped is stop_on_exit


def test_a_failing_evaluation_does_not_end_the_loop_and_a_repeated_error_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fogverse.autoscale.workers.deployer")
    failures = [RuntimeError("statistics unavailable")] * 3

    def veto(stage: Any) -> str | None:
        if failures:
            raise failures.pop()
        return None

    async def scenario() -> Rig:
        rig = Rig(tick=0.001)
        rig.deployer.add_veto(veto)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.deployer.start(_master(rig))
        try:
            await until(lambda: bool(rig.published), DEADLINE, "the deploy after the failures")
        finally:
            await rig.deployer.stop()
        return rig

    rig = run(scenario())
    assert len(rig.calls) == 1 and rig.published[0].action == "deploy"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the same error every tick is logged once, not once per tick"
    assert "auto-deployer" in errors[0].getMessage() and errors[0].exc_info
    assert any("works again after 3 failure(s)" in m for m in caplog.messages)


def test_stop_waits_for_a_deploy_in_flight_and_stops_what_it_started() -> None:
    entered = threading.Event()
    release = threading.Event()
    handles: list[Handle] = []

    def slow_deploy(log: Any, conf: Any) -> Handle:
        entered.set()
        release.wait(DEADLINE)  # a deploy SDK call still running when the master stops
        handles.append(Handle(conf["instance_id"]))
        return handles[-1]

    async def scenario() -> Rig:
        rig = Rig(fn=slow_deploy, stop_instances_on_exit=True)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.deployer.start(_master(rig))
        try:
            await until(entered.is_set, DEADLINE, "the deploy to start")
            stopper = asyncio.create_task(rig.deployer.stop())
            for _ in range(50):
                await asyncio.sleep(0)
            assert not stopper.done(), "stop() returned with a deploy in flight"
            release.set()
            await asyncio.wait_for(stopper, DEADLINE)
        finally:
            release.set()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return rig

    rig = run(scenario())
    [handle] = handles
    assert [r.action for r in rig.deployer.records] == ["deploy"], "the handle was recorded"
    assert handle.stopped, "the instance deployed during stop() was stopped on exit"


def test_a_deploy_that_returns_after_stop_gave_up_waiting_is_stopped_not_orphaned() -> None:
    entered = threading.Event()
    release = threading.Event()
    handles: list[Handle] = []

    def slow_deploy(log: Any, conf: Any) -> Handle:
        entered.set()
        release.wait(DEADLINE)
        handles.append(Handle(conf["instance_id"]))
        return handles[-1]

    async def scenario() -> Rig:
        rig = Rig(fn=slow_deploy, stop_instances_on_exit=True)
        rig.deployer.stop_wait = 0.05
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.deployer.start(_master(rig))
        try:
            await until(entered.is_set, DEADLINE, "the deploy to start")
            await asyncio.wait_for(rig.deployer.stop(), DEADLINE)
            assert not handles, "stop() was meant to give up before the deploy returned"
            release.set()
            busy = [s.task for s in rig.deployer.stages.values() if s.task is not None]
            await asyncio.wait_for(asyncio.gather(*busy), DEADLINE)
        finally:
            release.set()
        return rig

    rig = run(scenario())
    [handle] = handles
    assert handle.stopped, "the instance whose deploy outlived stop() was left running"
    assert not any(st.owned for st in rig.deployer.stages.values())


def test_stop_is_idempotent_and_stops_each_instance_once() -> None:
    stops: list[str] = []

    class Counting(Handle):
        def stop(self) -> None:
            stops.append(self.instance_id)

    async def scenario() -> None:
        rig = Rig(fn=lambda log, conf: Counting(conf["instance_id"]), stop_instances_on_exit=True)
        await rig.deployer.stop()  # before start: nothing to do
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.deployer.start(_master(rig))
        await until(lambda: bool(rig.published), DEADLINE, "the deploy")
        await asyncio.wait_for(rig.deployer.stop(), DEADLINE)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await asyncio.wait_for(rig.deployer.stop(), DEADLINE)
        await asyncio.gather(rig.deployer.stop(), rig.deployer.stop())

    run(scenario())
    assert len(stops) == 1


def test_stop_does_not_swallow_the_cancellation_of_its_caller() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.deployer.start(_master(rig))
        await asyncio.sleep(0)  # the loop is running
        entered = asyncio.Event()

        async def stopping() -> None:
            entered.set()
            await rig.deployer.stop()

        stopper = asyncio.create_task(stopping())
        await asyncio.sleep(0)  # stopper runs up to its wait for the loop to end
        assert entered.is_set() and not stopper.done()
        stopper.cancel()
        await asyncio.wait({stopper}, timeout=DEADLINE)
        assert stopper.cancelled(), "stop() turned its caller's cancellation into a return"
        await rig.deployer.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario())


@pytest.mark.timeout(30)
def test_a_deploy_event_from_the_future_does_not_hold_deploys_back_until_then() -> None:
    async def scenario() -> None:
        rig = Rig(deploy_delay=10.0, after_heartbeat_delay=0.0)
        # A previous master whose clock ran a day ahead deployed "svc-old", which never came up.
        rig.deployer.on_message(
            DeployEvent("svc-old", rig.clock() + 86_400, *STAGE, "deploy", "LOCAL", "svc")
        )
        rig.deployer.recommend(STAGE, 2, "test", ttl=10_000)
        for _ in range(12):  # two minutes: past startup_timeout, backoff and deploy_delay
            rig.clock.advance(10)
            rig.beat_all()
            await rig.tick()
            if rig.calls:
                break
        assert len(rig.calls) == 1, rig.deployer.counts(STAGE)

    run(scenario())


def _scaling_in(fn: Any) -> Rig:
    """A rig that deploys through ``fn`` and scales in after a 2 s stabilisation window."""
    return Rig(
        fn=fn, deploy_delay=1.0, after_heartbeat_delay=0.0, scale_in=True, stabilisation_window=2.0
    )


@pytest.mark.timeout(30)
def test_a_scale_in_whose_stop_fails_keeps_counting_the_instance_and_its_handle() -> None:
    """A stop that raises (an engine timeout, an API error) left the instance running but
    counted out for as long as it ran, and its handle dropped: never stopped again."""
    attempts: list[str] = []

    class FailsOnce(Handle):
        def stop(self) -> None:
            attempts.append(self.instance_id)
            if len(attempts) == 1:
                raise RuntimeError("engine timed out")
            self.stopped = True

    async def scenario() -> Rig:
        rig = _scaling_in(
            lambda log, conf: rig.calls.append(dict(conf)) or FailsOnce(conf["instance_id"])
        )
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        rig.beat(rig.calls[0]["instance_id"])
        assert rig.deployer.counts(STAGE) == (2, 0)
        for _ in range(20):
            rig.clock.advance(0.5)
            rig.beat_all()
            rig.deployer.recommend(STAGE, 2 if attempts else 1, "test", ttl=1000)
            await rig.tick()
            if attempts:
                break
        assert attempts, "no scale-in was tried"
        # The instance still runs and reports: it is still one of the stage's two.
        rig.clock.advance(0.5)
        rig.beat_all()
        assert rig.deployer.counts(STAGE) == (2, 0)
        await rig.deployer.stop_all()
        return rig

    run(scenario())
    assert len(attempts) == 2, "the instance whose stop failed was never stopped again"


class Replica:
    """A scale-mode handle: the replica it adds reports under a name of its own."""

    anonymous = True

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


@pytest.mark.timeout(30)
def test_a_replica_that_reports_under_its_own_name_is_not_a_startup_timeout() -> None:
    """KUBERNETES scale mode: the new pod reports under its pod name, never the instance id
    the deployer made up; the deploy was taken for one that never came up and undone."""
    replicas: list[Replica] = []

    def scale_up(log: Any, conf: Any) -> Replica:
        replicas.append(Replica())
        return replicas[-1]

    async def scenario() -> Rig:
        rig = Rig(fn=scale_up, startup_timeout=5.0, deploy_delay=0.0, after_heartbeat_delay=0.0)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        assert len(replicas) == 1 and rig.deployer.counts(STAGE) == (1, 1)
        rig.clock.advance(1.0)
        rig.beat("first")
        rig.beat("detector-7f9c-x2x")  # the new pod
        await rig.tick()
        assert rig.deployer.counts(STAGE) == (2, 0), "the new pod was counted twice"
        for _ in range(10):  # past startup_timeout
            rig.clock.advance(1.0)
            rig.beat("first")
            rig.beat("detector-7f9c-x2x")
            await rig.tick()
        return rig

    rig = run(scenario())
    assert [r.action for r in rig.deployer.records] == ["deploy"]
    assert not replicas[0].stopped, "the replica was scaled away again"
    assert rig.deployer.counts(STAGE) == (2, 0)


@pytest.mark.timeout(30)
def test_scale_in_gives_back_a_replica_that_reports_under_its_own_name() -> None:
    replicas: list[Replica] = []

    def scale_up(log: Any, conf: Any) -> Replica:
        replicas.append(Replica())
        return replicas[-1]

    async def scenario() -> Rig:
        rig = _scaling_in(scale_up)
        rig.deployer.recommend(STAGE, 2, "test", ttl=1000)
        await rig.tick()
        rig.beat("pod-b")
        await rig.tick()
        assert rig.deployer.counts(STAGE) == (2, 0)
        for _ in range(20):
            rig.clock.advance(0.5)
            rig.beat("first")
            rig.beat("pod-b")
            rig.deployer.recommend(STAGE, 1, "test", ttl=1000)
            await rig.tick()
            if replicas[0].stopped:
                break
        return rig

    rig = run(scenario())
    assert replicas[0].stopped, "scale-in never gave the replica back"
    assert [r.action for r in rig.deployer.records] == ["deploy", "scale-in"]
