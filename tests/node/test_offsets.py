"""OffsetTracker: commit watermarks under out-of-order completion, and inputs given up on."""

from __future__ import annotations

import asyncio

import pytest

from fogverse.node.offsets import OffsetTracker

TP = ("t", 0)
OTHER = ("t", 1)

pytestmark = pytest.mark.timeout(30)


def test_the_watermark_stops_at_the_first_unfinished_offset() -> None:
    tracker = OffsetTracker()
    a, b, c = (tracker.begin(TP, offset) for offset in (10, 11, 12))
    tracker.done(c)
    tracker.done(b)
    assert tracker.committable() == {}, "committed past offset 10, which is not done"
    tracker.done(a)
    assert tracker.committable() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.committable() == {}
    assert tracker.in_flight == 0


def test_an_abandoned_offset_is_never_committed_past_but_is_not_waited_for() -> None:
    async def scenario() -> None:
        tracker = OffsetTracker()
        a, b, c = (tracker.begin(TP, offset) for offset in (10, 11, 12))
        other = tracker.begin(OTHER, 5)
        tracker.done(a)
        tracker.abandon(b)
        tracker.done(c)
        assert tracker.committable() == {TP: 11}, "the watermark passed the abandoned offset"
        assert tracker.pending_in({TP}) == 0
        assert await tracker.wait_partitions({TP}, 5)
        assert tracker.in_flight == 1
        idle = asyncio.create_task(tracker.wait_idle(5))
        await asyncio.sleep(0)
        assert not idle.done(), "idle while offset 5 of the other partition is in flight"
        tracker.done(other)
        assert await idle
        assert tracker.committable() == {TP: 11, OTHER: 6}

    asyncio.run(scenario())


def test_finishing_an_abandoned_offset_changes_nothing() -> None:
    tracker = OffsetTracker()
    a, b = tracker.begin(TP, 0), tracker.begin(TP, 1)
    tracker.abandon(a)
    tracker.done(a)
    tracker.abandon(a)
    tracker.done(b)
    assert tracker.committable() == {}
    assert tracker.in_flight == 0


def test_abandoning_wakes_a_drain_waiting_for_the_partition() -> None:
    async def scenario() -> bool:
        tracker = OffsetTracker()
        p = tracker.begin(TP, 0)
        waiter = asyncio.create_task(tracker.wait_partitions({TP}, 5))
        await asyncio.sleep(0)
        tracker.abandon(p)
        return await waiter

    assert asyncio.run(scenario())


def test_forgetting_a_partition_releases_its_offsets() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0)
    tracker.abandon(tracker.begin(TP, 1))
    tracker.begin(OTHER, 0)
    tracker.forget({TP})
    assert tracker.in_flight == 1
    assert tracker.pending_in({TP}) == 0
