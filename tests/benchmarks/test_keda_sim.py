"""The FogVerse-versus-KEDA replay (benchmarks/keda.py): the simulation keeps its own rules
(messages conserved, an instance's capacity, partitions), KEDA's side follows the HPA's rules,
FogVerse's side is the real master's deployer deciding, and the table in
benchmarks/results/keda.md is what one run of ``python -m benchmarks.keda`` prints. Never
which policy wins: that is the table's job, not a test's."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from benchmarks import keda
from benchmarks.scaling_sim import EPOCH, StageParams, caught_up_after, step_ramp_load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs() -> dict[str, keda.Run]:
    return {r.policy: r for r in keda.run_all()}


def test_every_policy_replays_the_same_load_and_loses_no_message(
    runs: dict[str, keda.Run],
) -> None:
    load = step_ramp_load()
    for name, r in runs.items():
        m, stage = r.stage.metrics, r.stage
        assert m.rate == [load.rate(t) for t in m.times], name
        assert sum(stage.produced) == sum(load.per_second), name
        for produced, done, lag in zip(m.produced, m.done, m.lag, strict=True):
            # Committed offsets trail finished ones; nothing is finished twice or skipped.
            assert 0 <= produced - done <= lag, name
        assert m.lag[-1] == 0 and m.done[-1] == sum(load.per_second), f"{name} drains the tail"


def test_no_instance_works_faster_than_its_cost_or_without_a_partition(
    runs: dict[str, keda.Run],
) -> None:
    p = StageParams()
    per_second = 1 / p.cost
    for name, r in runs.items():
        m = r.stage.metrics
        assert max(m.consuming) <= p.partitions, name
        assert all(c <= n for c, n in zip(m.consuming, m.instances, strict=True)), name
        for i in range(1, len(m.times)):
            busy = max(m.consuming[i - 1], m.consuming[i])
            assert m.done[i] - m.done[i - 1] <= busy * per_second + 1, (name, m.times[i])


def test_keda_follows_the_hpa_rules(runs: dict[str, keda.Run]) -> None:
    s = keda.KedaSettings()
    for name in ("KEDA defaults", "KEDA, minReplicaCount 1"):
        r = runs[name]
        assert isinstance(r.driver, keda.KedaPolicy)
        events = r.stage.metrics.scale_events
        assert events, name
        history = r.driver.history
        for t, before, after in events:
            if after > before and before > 0:
                # +100 % or +4 pods per 15 s, counted from the count 15 s before.
                start = before - sum(
                    b - a for ts, a, b in events if t - s.scale_up_period < ts < t and b > a
                )
                assert after <= max(start + s.scale_up_pods, 2 * start), (name, t)
                assert after <= r.stage.p.partitions, "capped at the partition count"
            elif after < before and after > 0:
                window = [d for ts, d in history if t - s.scale_down_window < ts <= t]
                assert max(window) <= after, (name, t, "scale-down inside the window")
        # Every decision is made on the 15 s sync or KEDA's 30 s poll.
        assert all(t % s.hpa_sync_period == 0 for t, _, _ in events), name
    floor = {r.policy: min(r.stage.metrics.instances) for r in runs.values()}
    assert floor["KEDA defaults"] == 0 and floor["KEDA, minReplicaCount 1"] == 1


def test_fogverse_decisions_are_the_real_deployers(runs: dict[str, keda.Run]) -> None:
    for name in ("FogVerse defaults", "FogVerse lag signal + scale-in"):
        r = runs[name]
        assert isinstance(r.driver, keda.FogVersePolicy)
        deployer = r.driver.master.deployer
        assert deployer is not None
        records = [(rec.action, rec.ts - EPOCH) for rec in deployer.records]
        events = r.stage.metrics.scale_events
        assert [a for a, _ in records] == [
            "deploy" if after > before else "scale-in" for _, before, after in events
        ], name
        for (_, ts), (t, _, _) in zip(records, events, strict=True):
            assert math.isclose(ts, t, abs_tol=1e-6), name
        settings = deployer.settings
        times = [t for t, _, _ in events]
        assert all(b - a >= settings.deploy_delay for a, b in itertools.pairwise(times)), name
        assert max(r.stage.metrics.instances) <= r.stage.p.partitions, "max_instance"
        if not settings.scale_in:
            assert all(after > before for _, before, after in events), name


def test_catch_up_is_measured_from_the_lag_and_the_offered_rate(
    runs: dict[str, keda.Run],
) -> None:
    m = runs["KEDA defaults"].stage.metrics
    caught = caught_up_after(m, 120, 600)
    if caught is not None:
        end = 120 + int(caught)
        assert all(
            lag <= rate
            for t, lag, rate in zip(m.times, m.lag, m.rate, strict=True)
            if end <= t < 600
        )
        assert caught == 0 or m.lag[end - 1] > m.rate[end - 1]


def test_the_published_table_is_what_the_command_prints(
    runs: dict[str, keda.Run], tmp_path: Path
) -> None:
    table = keda.table([runs[name].summary() for name in keda.POLICIES])
    published = (ROOT / "benchmarks" / "results" / "keda.md").read_text()
    assert published.strip() == table.strip(), "re-run python -m benchmarks.keda"
    assert table in (ROOT / "docs" / "autoscale.md").read_text(), "docs/autoscale.md's copy"
    again = keda.run("KEDA defaults").summary()
    assert again == runs["KEDA defaults"].summary(), "the replay is deterministic"
