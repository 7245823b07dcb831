"""The pool's window of shared-memory slots: at most ``max_running_task`` of them, each held by
one task from submit to release. Waiting for a free slot is the pool's backpressure."""

from __future__ import annotations

import asyncio
import collections
import threading

from fogverse.parallel import shm

__all__ = ["Slot", "SlotAllocator"]


class Slot:
    """One of the pool's reusable shared-memory regions, and how often it was replaced."""

    __slots__ = ("generation", "index", "region")

    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        # Created by the first input that needs it: tasks with small values never do.
        self.region = shm.NO_REGION


class SlotAllocator:
    """Hands out slots: a free one, else a new one while fewer than ``limit`` exist, else the
    first freed slot goes to the longest waiter (first come, first served)."""

    __slots__ = (
        "_free",
        "_initial_bytes",
        "_limit",
        "_loop_thread",
        "_waiters",
        "in_flight",
        "loop",
        "max_in_flight",
        "renew_abandoned",
        "slots",
        "stats",
    )

    def __init__(self, limit: int, initial_bytes: int, stats: collections.Counter[str]) -> None:
        self._limit = limit
        self._initial_bytes = initial_bytes
        self.stats = stats
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.slots: list[Slot] = []
        self._free: list[Slot] = []
        self._waiters: collections.deque[asyncio.Future[Slot]] = collections.deque()
        self.in_flight = 0
        self.max_in_flight = 0
        # Only while tasks may still write into slots can an abandoned result be overwritten.
        self.renew_abandoned = True

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Slots are handed out and freed on ``loop``'s thread only."""
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def try_take(self) -> Slot | None:
        """A slot now, or ``None`` while all are held (or others already wait for one)."""
        if self._free and not self._waiters:
            slot = self._free.pop()
        elif len(self.slots) < self._limit:
            slot = Slot(len(self.slots))
            self.slots.append(slot)
        else:
            return None
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        return slot

    async def wait(self) -> Slot:
        """The next slot freed after the waiters already queued have had theirs."""
        loop = self.loop
        assert loop is not None
        waiter: asyncio.Future[Slot] = loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.free(waiter.result())
            raise

    def free(self, slot: Slot) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)  # handed over: still in flight
                return
        self.in_flight -= 1
        self._free.append(slot)

    def abandon(self, slot: Slot, shared: bool) -> None:
        """A finished handle was dropped unreleased. If its result lives in the slot, views of
        it may still be in use, so the slot continues with a new region and the old one lives
        as long as those views."""
        if threading.get_ident() != self._loop_thread:
            # Dropped by another thread (its last reference went there): free it on the loop's.
            loop = self.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.abandon, slot, shared)
            return
        if shared and self.renew_abandoned:
            self._replace_region(slot, slot.region.size)
        self.free(slot)

    def fill(self, slot: Slot, enc: shm.Encoded, reserve: int) -> None:
        """Write ``enc`` at the start of ``slot``, with ``reserve`` bytes after it for the
        result; a slot too small gets a larger region."""
        needed = shm.measure(enc)
        if reserve:
            needed = shm.align(needed) + reserve
        if needed > slot.region.size:
            # Headroom so that inputs and results that vary a little do not regrow every time.
            size = needed + needed // 8
            if slot.region is shm.NO_REGION:
                size = max(size, self._initial_bytes)
            else:
                self.stats["slot_grows"] += 1
            self._replace_region(slot, size)
        region = slot.region
        shm.write(region.view, 0, enc, region.address)

    def _replace_region(self, slot: Slot, size: int) -> None:
        region = shm.SharedRegion.create(size, f"fogverse-slot{slot.index}")
        slot.region.close()
        slot.region = region
        # Workers hold the old region's descriptor: the new generation makes the next TASK
        # frame for this slot carry the new one.
        slot.generation += 1

    def fail_waiters(self, error: BaseException) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # marked retrieved: asyncio must not log it as unhandled

    def close(self) -> None:
        """Unmap every slot's region (views still in use keep theirs alive)."""
        for slot in self.slots:
            slot.region.close()
        self._free.clear()
