"""AUTO_DEPLOYER: turns the signals' recommendations into deploys (and, if enabled, scale-ins).

Signals (:mod:`.io_ratio`, :mod:`.lag`) call :meth:`AutoDeployer.recommend` with the number of
instances they want for a stage; vetoes (:mod:`.statistic`) may block a scale-out. Per stage the
deployer counts live instances from heartbeats (expired ones drop out) plus instances it started
that have not reported yet, and deploys one more only when

- the wanted count exceeds that, and the stage is below ``max_instance``;
- ``deploy_delay`` has passed since its last deploy, and ``after_heartbeat_delay`` since its
  newest instance first reported (its effect must show in the rates first);
- no instance it started is still starting, and the backoff after failed deploys has passed.

Deploy functions run off the event loop (sync) or are awaited (async), as a task, so a slow
deploy blocks nothing else. Scale-in (off by default) stops one instance the deployer started,
only when every recommendation over ``stabilisation_window`` seconds was below the count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fogverse.autoscale.config import DeployerSettings
from fogverse.autoscale.deploy import (
    DeployConfig,
    DeployScripts,
    call_deploy_function,
    stop_handle,
)
from fogverse.autoscale.messages import ControlMessage, DeployEvent, now
from fogverse.autoscale.state import Stage, StageKey
from fogverse.autoscale.workers.periodic import PeriodicWorker

__all__ = ["AutoDeployer", "DeployRecord", "StageStatus", "Veto"]

logger = logging.getLogger(__name__)

# A DeployEvent's string fields are at most 512 characters.
_MAX_REASON = 500

Veto = Callable[[Stage], str | None]
"""Returns a reason to hold a scale-out of the stage back, or ``None``."""


@dataclass
class DeployRecord:
    """One thing the deployer did, for timelines and tests."""

    ts: float
    stage: StageKey
    action: str  # "deploy", "deploy-failed", "startup-timeout", "scale-in"
    instance_id: str
    instances_before: int
    detail: str = ""


@dataclass
class _Owned:
    instance_id: str
    handle: Any
    deployed_at: float
    anonymous: bool = False
    """Its instance reports under a name of its own (a Deployment's replica), not
    ``instance_id``: it is counted from heartbeats only and never named by scale-in."""


@dataclass
class StageStatus:
    """The deployer's bookkeeping for one stage."""

    last_action: float = -math.inf
    failures: int = 0
    retry_at: float = -math.inf
    task: asyncio.Task[None] | None = None
    pending: dict[str, float] = field(default_factory=dict)
    owned: list[_Owned] = field(default_factory=list)
    stopping: set[str] = field(default_factory=set)
    anonymous: dict[str, set[str]] = field(default_factory=dict)
    """Pending deploys whose instance reports under a name of its own: the ids of the stage's
    instances known when each was deployed (the first id not among them is its instance)."""
    recommendations: dict[str, tuple[float, int, float]] = field(default_factory=dict)
    history: deque[tuple[float, int]] = field(default_factory=deque)
    blocked: str | None = None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class AutoDeployer(PeriodicWorker):
    """Deploys instances of registered stages through :class:`DeployScripts`."""

    NAME = "auto-deployer"
    stop_wait: float = 30.0
    """Seconds ``stop()`` waits for deploys and stops still running."""

    def __init__(
        self,
        scripts: DeployScripts,
        settings: DeployerSettings | None = None,
        *,
        clock: Callable[[], float] = now,
    ) -> None:
        super().__init__()
        self.scripts = scripts
        self.settings = settings or DeployerSettings()
        self.clock = clock
        self.stages: dict[StageKey, StageStatus] = {}
        self.records: list[DeployRecord] = []
        self.vetoes: list[Veto] = []
        self.control_topic: str | None = None
        self.control_servers: str | None = None
        self._master: Any = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ---- wiring --------------------------------------------------------------------------

    async def start(self, master: Any) -> None:
        self._master = master
        self._closed = False
        self.control_topic = master.consumer_topic
        self.control_servers = master.consumer_servers
        await super().start(master)

    async def stop(self) -> None:
        """End the loop, then wait (up to ``stop_wait`` seconds) for the deploys and stops it
        started; with ``stop_instances_on_exit``, stop every instance it deployed, including
        one whose deploy returns only after this wait."""
        await super().stop()
        busy = (s.task for s in self.stages.values() if s.busy)
        running = [t for t in busy if t is not None] + list(self._background)
        if running:
            # A deploy in flight finishes (its handle is recorded) rather than leaking.
            _, late = await asyncio.wait(running, timeout=self.stop_wait)
            if late:
                logger.warning(
                    "%d deploy(s) or stop(s) still running after %.0f s; an instance they "
                    "start from now on is stopped as soon as its deploy returns",
                    len(late),
                    self.stop_wait,
                )
        self._closed = True
        if self.settings.stop_instances_on_exit:
            await self.stop_all()

    def add_veto(self, veto: Veto) -> None:
        self.vetoes.append(veto)

    def on_message(self, message: ControlMessage) -> None:
        if isinstance(message, DeployEvent):
            self._restore(message)

    def _restore(self, event: DeployEvent) -> None:
        """Learn about a deploy from the control topic (ours, or a previous master's)."""
        st = self._status(event.stage)
        # Clamped to our clock, as the state clamps heartbeats: an event dated in the future
        # (a previous master's fast clock) must not hold this stage's deploys back until then.
        ts = min(event.ts, self.clock())
        st.last_action = max(st.last_action, ts)
        if event.action != "deploy":
            return
        known = event.instance_id in st.pending or any(
            o.instance_id == event.instance_id for o in st.owned
        )
        seen = self.state is not None and event.instance_id in self.state.instances
        deadline = ts + self.settings.startup_timeout
        if not known and not seen and deadline > self.clock():
            logger.debug(
                "instance %s of %s was deployed at %.0f and has not reported yet",
                event.instance_id,
                event.stage,
                event.ts,
            )
            st.pending[event.instance_id] = deadline

    def _status(self, key: StageKey) -> StageStatus:
        st = self.stages.get(key)
        if st is None:
            st = self.stages[key] = StageStatus()
        return st

    # ---- the signals' side ---------------------------------------------------------------

    def recommend(self, stage: StageKey, desired: int, source: str, ttl: float = 10.0) -> None:
        """Signal ``source`` wants ``desired`` instances of ``stage``, valid for ``ttl`` s."""
        self._status(stage).recommendations[source] = (self.clock(), max(0, int(desired)), ttl)

    def desired(self, stage: StageKey, current: float | None = None) -> int | None:
        """The largest fresh recommendation for ``stage`` (``None``: no signal has one)."""
        current = self.clock() if current is None else current
        st = self.stages.get(stage)
        if st is None:
            return None
        fresh = [d for ts, d, ttl in st.recommendations.values() if current - ts <= ttl]
        return max(fresh) if fresh else None

    def counts(self, stage: StageKey, current: float | None = None) -> tuple[int, int]:
        """``(live, starting)`` instances of ``stage``."""
        current = self.clock() if current is None else current
        st = self._status(stage)
        live = (
            {i.instance_id for i in self.state.instances_of(stage, current)}
            if self.state is not None
            else set()
        )
        # An instance we started whose process still runs counts even when its heartbeats are
        # late (a node busy in blocking code): replacing it would overshoot max_instance.
        live |= {
            o.instance_id
            for o in st.owned
            if not o.anonymous and o.instance_id not in st.pending and _running(o.handle)
        }
        starting = [i for i in st.pending if self.state is None or i not in self.state.instances]
        return len(live - st.stopping), len(starting)

    # ---- deciding ------------------------------------------------------------------------

    def _interval(self) -> float:
        return self.settings.tick

    async def _tick(self) -> None:
        await self.tick()

    async def tick(self, current: float | None = None) -> None:
        """Decide once for every stage."""
        if self.state is None:
            return
        current = self.clock() if current is None else current
        for key, stage in list(self.state.stages.items()):
            st = self._status(key)
            self._settle_pending(key, st, current)
            live, starting = self.counts(key, current)
            effective = live + starting
            want = self.desired(key, current)
            if want is None:
                continue
            st.history.append((current, want))
            # Trimmed to the window, but the newest sample at or before its start stays: it
            # shows the evidence covers the whole window. (Dropping it too left the oldest
            # sample up to a tick short of the window, so scale-in waited for a tick to land
            # on the window's edge by chance.)
            window = self.settings.stabilisation_window
            while len(st.history) > 1 and current - st.history[1][0] >= window:
                st.history.popleft()
            if st.busy:
                continue
            if want > effective:
                reason = self._hold_out(key, stage, st, effective, current)
                if reason is None:
                    why = self._why(st, effective, current)
                    st.task = asyncio.create_task(self._deploy(stage, st, effective, current, why))
                elif reason != st.blocked:
                    logger.info(
                        "stage %s -> %s wants %d instances (has %d): waiting: %s",
                        key[0],
                        key[1],
                        want,
                        effective,
                        reason,
                    )
                st.blocked = reason
            else:
                st.blocked = None
                if self.settings.scale_in and want < effective:
                    self._maybe_scale_in(key, st, effective, current)

    def _settle_pending(self, key: StageKey, st: StageStatus, current: float) -> None:
        assert self.state is not None
        claimed: set[str] = set()
        ids = self._ids_of(key) if st.anonymous else set()
        for iid, deadline in list(st.pending.items()):
            known = st.anonymous.get(iid)
            new = ids - known - claimed if known is not None else set()
            if iid in self.state.instances or new:
                # It reported: heartbeats count it from now on.
                del st.pending[iid]
                st.anonymous.pop(iid, None)
                claimed |= set(sorted(new)[:1])
            elif current > deadline:
                del st.pending[iid]
                st.anonymous.pop(iid, None)
                self._failed(st, current)
                self.records.append(DeployRecord(current, key, "startup-timeout", iid, 0))
                logger.warning(
                    "instance %s of %s did not report within %.0f s; counting the deploy as failed",
                    iid,
                    key,
                    self.settings.startup_timeout,
                )
                owned = next((o for o in st.owned if o.instance_id == iid), None)
                if owned is not None:
                    st.owned.remove(owned)
                    task = asyncio.create_task(self._stop_or_keep(st, owned))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
        live = {i.instance_id for i in self.state.live_instances(current)}
        # A silent instance may only be hung: its handle is kept (so it can still be stopped)
        # unless the handle itself says the instance has exited.
        st.owned = [o for o in st.owned if o.instance_id in live or not _exited(o.handle)]
        st.stopping &= live

    def _hold_out(
        self, key: StageKey, stage: Stage, st: StageStatus, effective: int, current: float
    ) -> str | None:
        s = self.settings
        if effective >= stage.spec.max_instance:
            return f"at max_instance ({stage.spec.max_instance})"
        if st.pending:
            return f"{len(st.pending)} instance(s) still starting"
        if current < st.retry_at:
            return f"backing off after {st.failures} failed deploy(s)"
        if current < st.last_action + s.deploy_delay:
            return "deploy_delay"
        assert self.state is not None
        newest = max(
            (i.first_seen for i in self.state.instances_of(key, current)), default=-math.inf
        )
        if current < newest + s.after_heartbeat_delay:
            return "after_heartbeat_delay"
        for veto in self.vetoes:
            reason = veto(stage)
            if reason:
                return reason
        return None

    @staticmethod
    def _why(st: StageStatus, effective: int, current: float) -> str:
        """The fresh recommendations behind a scale-out, as the deploy's ``reason``."""
        fresh = sorted(
            (source, d)
            for source, (ts, d, ttl) in st.recommendations.items()
            if current - ts <= ttl
        )
        wants = ", ".join(f"{source} wants {d}" for source, d in fresh)
        return f"{wants}; has {effective}"[:_MAX_REASON]

    def _failed(self, st: StageStatus, current: float) -> None:
        st.failures += 1
        backoff = min(
            self.settings.retry_backoff_max, self.settings.retry_backoff * 2 ** (st.failures - 1)
        )
        st.retry_at = current + backoff

    # ---- acting --------------------------------------------------------------------------

    async def _deploy(
        self, stage: Stage, st: StageStatus, effective: int, current: float, reason: str = ""
    ) -> None:
        spec = stage.spec
        instance_id = f"{spec.service_name}-{uuid.uuid4().hex[:10]}"
        config: DeployConfig = {
            "provider": spec.provider,
            "service_name": spec.service_name,
            "max_instance": spec.max_instance,
            "extra_configs": dict(spec.extra_configs),
            "instance_id": instance_id,
            "source_topic": stage.source_topic,
            "target_topic": stage.target_topic,
            "group_id": stage.group_id,
            "current_instances": effective,
            "control_topic": self.control_topic,
            "control_servers": self.control_servers,
        }
        fn = self.scripts.get_deploy_function(spec.provider)
        logger.info(
            "deploying %s for %s -> %s (%d running, max %d)",
            instance_id,
            stage.source_topic,
            stage.target_topic,
            effective,
            spec.max_instance,
        )
        handle: Any = None
        error = ""
        try:
            if fn is None:
                error = (
                    f"no deploy function for provider {spec.provider!r} (registered: "
                    f"{', '.join(self.scripts.providers) or 'none'})"
                )
            else:
                handle = await call_deploy_function(fn, logger, config)
                if handle is None:
                    error = "the deploy function returned None"
        except Exception as exc:
            logger.exception("deploy function for %s raised", spec.provider)
            error = f"{type(exc).__name__}: {exc}"
        finished = self.clock()
        if error:
            self._failed(st, finished)
            logger.warning(
                "deploy of %s failed (%s); retrying in %.1f s",
                instance_id,
                error,
                st.retry_at - finished,
            )
            self.records.append(
                DeployRecord(current, stage.key, "deploy-failed", instance_id, effective, error)
            )
            return
        anonymous = bool(getattr(handle, "anonymous", False))
        owned = _Owned(instance_id, handle, current, anonymous)
        if self._closed and self.settings.stop_instances_on_exit:
            # stop() gave up waiting for this deploy and has already stopped the rest.
            logger.warning("deploy of %s returned after stop(); stopping it", instance_id)
            await self._stop_quietly(owned)
            return
        st.failures = 0
        st.retry_at = -math.inf
        st.last_action = current
        st.owned.append(owned)
        assert self.state is not None
        if anonymous:
            st.anonymous[instance_id] = self._ids_of(stage.key)
            st.pending[instance_id] = finished + self.settings.startup_timeout
        elif instance_id not in self.state.instances:
            st.pending[instance_id] = finished + self.settings.startup_timeout
        self.records.append(
            DeployRecord(current, stage.key, "deploy", instance_id, effective, reason)
        )
        if self._master is not None:
            await self._master.publish(
                DeployEvent(
                    instance_id,
                    current,
                    stage.source_topic,
                    stage.target_topic,
                    "deploy",
                    spec.provider,
                    spec.service_name,
                    reason or None,
                )
            )

    def _maybe_scale_in(
        self, key: StageKey, st: StageStatus, effective: int, current: float
    ) -> None:
        s = self.settings
        if not st.history or current - st.history[0][0] < s.stabilisation_window * 0.999:
            return  # not a full window of evidence yet
        target = max(max(d for _, d in st.history), s.min_instance)
        if target >= effective or current < st.last_action + s.deploy_delay:
            return
        assert self.state is not None
        live = {i.instance_id for i in self.state.instances_of(key, current)}
        candidates = [
            o
            for o in st.owned
            if (o.anonymous and o.instance_id not in st.pending)
            or (o.instance_id in live and o.instance_id not in st.stopping)
        ]
        if not candidates:
            return  # nothing of ours to stop (instances started elsewhere stay)
        victim = max(candidates, key=lambda o: o.deployed_at)
        if not victim.anonymous:
            # (Which replica goes is not ours to know: it is counted until it leaves.)
            st.stopping.add(victim.instance_id)
        st.owned.remove(victim)
        st.last_action = current
        reason = (
            f"every recommendation over {s.stabilisation_window:g} s was at most {target}; "
            f"has {effective}"
        )
        self.records.append(
            DeployRecord(current, key, "scale-in", victim.instance_id, effective, reason)
        )
        logger.info(
            "scaling %s -> %s in: stopping %s (%d -> %d wanted)",
            key[0],
            key[1],
            victim.instance_id,
            effective,
            target,
        )
        st.task = asyncio.create_task(self._scale_in(key, victim, current, reason))

    async def _scale_in(self, key: StageKey, victim: _Owned, current: float, reason: str) -> None:
        if not await self._stop_or_keep(self._status(key), victim):
            return
        if self._master is not None:
            await self._master.publish(
                DeployEvent(
                    victim.instance_id, current, key[0], key[1], "stop", reason=reason[:_MAX_REASON]
                )
            )

    def _ids_of(self, key: StageKey) -> set[str]:
        """Every instance the state knows for stage ``key``, live or not."""
        state = self.state
        assert state is not None
        return {i.instance_id for i in state.instances.values() if state.stage_of(i) == key}

    async def _stop_quietly(self, owned: _Owned) -> bool:
        try:
            await stop_handle(owned.handle)
        except Exception:
            logger.exception("stopping instance %s failed", owned.instance_id)
            return False
        return True

    async def _stop_or_keep(self, st: StageStatus, owned: _Owned) -> bool:
        """Stop ``owned``; if that fails it may still run: it is counted and held again (a
        later scale-in or ``stop_all`` tries again) rather than counted out and forgotten."""
        if await self._stop_quietly(owned):
            return True
        st.stopping.discard(owned.instance_id)
        if not self._closed and owned not in st.owned:
            st.owned.append(owned)
        return False

    async def stop_all(self) -> None:
        """Stop every instance this deployer started and still holds a handle for."""
        owned = [o for st in self.stages.values() for o in st.owned]
        for st in self.stages.values():
            st.owned.clear()
            st.pending.clear()
        if owned:
            logger.info("stopping %d deployed instance(s)", len(owned))
            await asyncio.gather(*(self._stop_quietly(o) for o in owned))


def _exited(handle: Any) -> bool:
    alive = getattr(handle, "alive", None)
    if not callable(alive):
        return False
    try:
        return not alive()
    except Exception:
        return False


def _running(handle: Any) -> bool:
    alive = getattr(handle, "alive", None)
    if not callable(alive):
        return False
    try:
        return bool(alive())
    except Exception:
        return False
