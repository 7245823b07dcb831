"""Per-partition commit watermarks for out-of-order completion.

A node may finish input offsets in any order (acks arrive out of order, a process pool
completes tasks out of order). Committing the highest finished offset would lose every
unfinished one below it on a crash, so each partition commits only up to its contiguous
watermark: the first offset that is not finished yet.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from fogverse.record import TopicPartition

__all__ = ["OffsetTracker", "Pending"]


class Pending:
    """One input offset that is in flight; ``OffsetTracker.done`` finishes it and
    ``OffsetTracker.abandon`` gives up on it. A subclass (the node's per-input
    :class:`~fogverse.node.delivery.Delivery`) can be its own entry: see ``OffsetTracker.begin``."""

    __slots__ = ("abandoned", "done", "in_log", "offset")

    in_log: _Partition
    offset: int
    done: bool
    abandoned: bool

    @property
    def waited_for(self) -> bool:
        return not (self.done or self.abandoned)


class _Partition:
    __slots__ = ("committed", "inflight", "watermark")

    def __init__(self) -> None:
        self.inflight: deque[Pending] = deque()
        self.watermark: int | None = None  # next offset to commit, once known
        self.committed: int | None = None


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._count = 0
        # Waiters for specific partitions to drain (rebalances); checked only when present.
        self._waiters: list[tuple[set[TopicPartition], asyncio.Future[None]]] = []

    @property
    def in_flight(self) -> int:
        return self._count

    def begin(self, tp: TopicPartition, offset: int, p: Pending | None = None) -> Pending:
        """Track ``offset`` of ``tp`` as in flight, in ``p`` if given (an object that is its
        own entry saves one per input), else in a new :class:`Pending`."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if p is None:
            p = Pending()
        p.in_log = part
        p.offset = offset
        p.done = p.abandoned = False
        part.inflight.append(p)
        self._count += 1
        if self._count == 1:
            self._idle.clear()
        return p

    def done(self, p: Pending) -> None:
        if p.done or p.abandoned:  # not p.waited_for, without a property call per message
            return
        p.done = True
        part = p.in_log
        q = part.inflight
        while q and q[0].done:
            part.watermark = q.popleft().offset + 1
        self._settled()

    def abandon(self, p: Pending) -> None:
        """``p`` will never finish (its input could be neither delivered nor dead-lettered):
        drains stop waiting for it, and its partition is never committed past it."""
        if not p.waited_for:
            return
        p.abandoned = True
        self._settled()

    def _settled(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        still = []
        for tps, fut in self._waiters:
            if fut.done():
                continue
            if self.pending_in(tps) == 0:
                fut.set_result(None)
            else:
                still.append((tps, fut))
        self._waiters = still

    def waiting(self) -> list[Pending]:
        """The entries still waited for (neither done nor abandoned)."""
        return [p for part in self._parts.values() for p in part.inflight if p.waited_for]

    def committable(self) -> dict[TopicPartition, int]:
        """Watermarks that moved since the last :meth:`mark_committed`."""
        return {
            tp: part.watermark
            for tp, part in self._parts.items()
            if part.watermark is not None and part.watermark != part.committed
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = off

    def pending_in(self, tps: Iterable[TopicPartition]) -> int:
        return sum(
            sum(p.waited_for for p in self._parts[tp].inflight) for tp in tps if tp in self._parts
        )

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions this node no longer owns (after a rebalance took them)."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                for p in part.inflight:
                    if p.waited_for:
                        p.done = True
                        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def wait_partitions(self, tps: set[TopicPartition], timeout: float) -> bool:
        """Wait until nothing is in flight for ``tps``; ``False`` on timeout."""
        if self.pending_in(tps) == 0:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((set(tps), fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; ``False`` if ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
