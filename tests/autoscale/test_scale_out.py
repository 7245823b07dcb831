"""End to end on the real broker: a stage with capacity ≈ 20 messages/s per instance, fed
50 messages/s, scaled out by the master through the LOCAL provider (real processes).

Each configuration must either scale the stage until it keeps up, within ``max_instance`` and
at most one deploy per ``deploy_delay``, losing no message, or be refused at start.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from typing import Any

import pytest
from polling import until
from scaling_harness import (
    OutputCollector,
    Timeline,
    feed,
    slow_stage_deployer,
    start_first_instance,
)

from fogverse.autoscale import AutoScaleComponent, ConfigError, DeployScripts, Worker
from fogverse.autoscale.workers.lag import GroupOffsets

logger = logging.getLogger(__name__)

RATE = 50.0
FEED_SECONDS = 28.0
# On a loaded machine instances start slower and the third may come late: the feed goes on
# until three have run together this long (the window the end-of-feed check looks at).
KEPT_UP_SECONDS = 9.0
MAX_FEED_SECONDS = 70.0
PARTITIONS = 6  # 3 instances x 2 partitions keep up with 50/s; 4 partitions would need 4
MAX_INSTANCE = 4
DEPLOY_DELAY = 5.0
AFTER_HEARTBEAT_DELAY = 2.0


def master_conf(bootstrap: str, control: str, workers: list[Worker]) -> dict[str, Any]:
    return {
        "consumer_topic": control,
        "consumer_server": bootstrap,
        "consumer_group_id": "test-master",
        "auto_deployer_config": {
            "deploy_delay": DEPLOY_DELAY,
            "after_heartbeat_delay": AFTER_HEARTBEAT_DELAY,
            "startup_timeout": 40,
            "tick": 0.25,
        },
        "statistic_worker_config": {"z_value": 2.0, "refresh_rate": 1, "maximum_seconds": 30},
        "included_worker": workers,
        "distributed_worker_config": {"master_host": "127.0.0.1", "master_port": 0},
        "input_output_worker_config": {
            "refresh_rate_second": 1,
            "input_output_ratio_threshold": 0.9,
            "window_seconds": 3,
        },
        "lag_worker_config": {"lag_threshold": 50, "refresh_rate_second": 1},
        "lookback_seconds": 30,
    }


async def _scenario(
    bootstrap: str,
    admin: Any,
    topics: dict[str, str],
    group: str,
    workers: list[Worker],
    deployer: Any,
) -> dict[str, Any]:
    src, out, control = topics["src"], topics["out"], topics["control"]
    scripts = DeployScripts()
    scripts.set_deploy_functions("LOCAL", deployer)
    master = AutoScaleComponent().master_auto_scaler(
        master_conf(bootstrap, control, workers), scripts
    )
    stage = (src, out)
    run = asyncio.create_task(master.run())
    timeline = Timeline()
    try:
        await until(master.ready.is_set, 30, "the master to catch up", interval=0.1)
        await asyncio.to_thread(
            start_first_instance,
            deployer,
            src=src,
            out=out,
            group=group,
            control=control,
            bootstrap=bootstrap,
            max_instance=MAX_INSTANCE,
        )
        await until(
            lambda: stage in master.state.stages and master.deployer.counts(stage)[0] == 1,
            40,
            "the first instance to register its stage",
            interval=0.1,
        )
        loop = asyncio.get_running_loop()
        t0 = master.state.clock()
        async with OutputCollector(bootstrap, out) as outputs:
            sampler = asyncio.create_task(
                timeline.run(
                    master, stage, admin, GroupOffsets({"bootstrap.servers": bootstrap}), group, t0
                )
            )
            feed_start = loop.time()
            sent = await feed(
                bootstrap,
                src,
                PARTITIONS,
                control,
                RATE,
                FEED_SECONDS,
                longer_while=lambda: not _scaled_for(timeline, KEPT_UP_SECONDS),
                at_most=MAX_FEED_SECONDS,
            )
            feed_end = master.state.clock() - t0
            expected = {f"m{i}".encode() for i in range(sent)}
            complete = await outputs.wait_for(expected, 60)
            drained = loop.time() - feed_start - FEED_SECONDS
            sampler.cancel()
            counts = dict(outputs.counts)
        if run.done():
            run.result()
    finally:
        master.stop()
        await asyncio.wait_for(run, 30)
    return {
        "master": master,
        "timeline": timeline,
        "sent": sent,
        "expected": expected,
        "counts": counts,
        "complete": complete,
        "feed_end": feed_end,
        "drained": drained,
    }


def _scaled_for(timeline: Timeline, seconds: float) -> bool:
    """Whether three instances have been live together for ``seconds`` by the last sample."""
    rows = timeline.rows
    first = next((t for t, live, *_ in rows if live >= 3), None)
    return first is not None and rows[-1][0] - first >= seconds


def _check(result: dict[str, Any], title: str) -> None:
    timeline: Timeline = result["timeline"]
    master = result["master"]
    print("\n" + timeline.render(title))
    deploys = [r for r in master.deployer.records if r.action == "deploy"]
    counts = result["counts"]
    missing = result["expected"] - counts.keys()
    dups = sum(c - 1 for c in counts.values())
    print(
        f"sent {result['sent']}, received {sum(counts.values())}, lost {len(missing)}, "
        f"duplicates {dups}; deploys at "
        f"{[round(r.ts - deploys[0].ts, 1) for r in deploys] if deploys else []} s; "
        f"drained {result['drained']:.1f} s after the feed ended"
    )
    assert not missing, f"lost {len(missing)} messages"
    assert result["complete"]
    peak = max(live + starting for _, live, starting, *_ in timeline.rows)
    assert peak <= MAX_INSTANCE, f"{peak} instances > max_instance {MAX_INSTANCE}"
    assert len(deploys) <= MAX_INSTANCE - 1
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(deploys)]
    assert all(g >= DEPLOY_DELAY - 0.01 for g in gaps), f"deploys closer than deploy_delay: {gaps}"
    # Two instances (40/s) cannot keep up with 50/s: the master had to reach three.
    assert max(live for _, live, *_ in timeline.rows) >= 3, "never scaled out far enough"
    tail = [
        (i, o)
        for t, _, _, i, o, _ in timeline.rows
        if result["feed_end"] - 8 <= t <= result["feed_end"] - 1
    ]
    assert tail, "no timeline samples near the end of the feed"
    ratio = sum(o for _, o in tail) / max(1e-9, sum(i for i, _ in tail))
    assert ratio >= 0.9, f"the stage did not keep up at the end of the feed: out/in = {ratio:.2f}"


@pytest.fixture
def stage_topics(new_topic: Any) -> dict[str, str]:
    return {
        "src": new_topic(partitions=PARTITIONS, prefix="as-src"),
        "out": new_topic(prefix="as-out"),
        "control": new_topic(prefix="as-ctl"),
    }


@pytest.fixture
def slow_deployer(tmp_path: Any, kafka_bootstrap: str) -> Any:
    deployer = slow_stage_deployer(tmp_path / "instances.log", MAX_INSTANCE, kafka_bootstrap)
    yield deployer
    # No orphans, pass or fail: every instance started in the test is stopped here.
    handles = list(deployer.handles)
    deployer.stop_all(timeout=10)
    assert not [h for h in handles if h.alive()]
    log = tmp_path / "instances.log"
    if log.exists():
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
        assert not errors, log.read_text()[-4000:]


CONFIGS = {
    "seed-workers": [
        Worker.AUTO_DEPLOYER,
        Worker.DISTRIBUTED_LOCK_WORKER,
        Worker.STATISTIC_WORKER,
        Worker.INPUT_OUTPUT_WORKER,
    ],
    "without-statistics": [Worker.AUTO_DEPLOYER, Worker.INPUT_OUTPUT_WORKER],
    "lag-signal-alone": [Worker.AUTO_DEPLOYER, Worker.LAG_WORKER],
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_stage_scales_out_until_it_keeps_up(
    name: str,
    kafka_bootstrap: str,
    kafka_admin: Any,
    stage_topics: dict[str, str],
    slow_deployer: Any,
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    result = asyncio.run(
        _scenario(kafka_bootstrap, kafka_admin, stage_topics, group, CONFIGS[name], slow_deployer)
    )
    _check(result, f"{name}: {RATE:.0f} msg/s into a 20 msg/s stage, max {MAX_INSTANCE}")


@pytest.mark.parametrize(
    ("workers", "needle"),
    [
        ([Worker.AUTO_DEPLOYER, Worker.STATISTIC_WORKER], "needs a signal"),
        ([Worker.AUTO_DEPLOYER], "needs a signal"),
        ([Worker.INPUT_OUTPUT_WORKER, Worker.STATISTIC_WORKER], "include AUTO_DEPLOYER"),
        ([Worker.LAG_WORKER], "include AUTO_DEPLOYER"),
        ([], "empty"),
    ],
)
def test_combinations_that_cannot_work_are_refused_at_start(
    workers: list[Worker], needle: str
) -> None:
    scripts = DeployScripts()
    scripts.set_deploy_functions("LOCAL", lambda log, conf: None)
    conf = master_conf("127.0.0.1:1", "control", workers)
    with pytest.raises(ConfigError, match=needle):
        AutoScaleComponent().master_auto_scaler(conf, scripts)


@pytest.mark.parametrize(
    "workers",
    [
        [Worker.STATISTIC_WORKER],
        [Worker.DISTRIBUTED_LOCK_WORKER],
        [Worker.AUTO_DEPLOYER, Worker.INPUT_OUTPUT_WORKER],
        [Worker.AUTO_DEPLOYER, Worker.LAG_WORKER],
        [
            Worker.AUTO_DEPLOYER,
            Worker.LAG_WORKER,
            Worker.INPUT_OUTPUT_WORKER,
            Worker.STATISTIC_WORKER,
        ],
    ],
)
def test_combinations_that_work_on_their_own_are_accepted(workers: list[Worker]) -> None:
    scripts = DeployScripts()
    scripts.set_deploy_functions("LOCAL", lambda log, conf: None)
    master = AutoScaleComponent().master_auto_scaler(
        master_conf("127.0.0.1:1", "control", workers), scripts
    )
    assert master.settings.workers == frozenset(workers)
    # A lock-only master needs no Kafka at all.
    assert (master.consumer_topic is None) == (workers == [Worker.DISTRIBUTED_LOCK_WORKER])
