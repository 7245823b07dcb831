"""The node loop's process-wide settings: what a running node changes in its process, and that
it puts them back."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator

import pytest

from fogverse import Producer, Record
from fogverse.node import loop

pytestmark = pytest.mark.timeout(60)


class _Seen(Producer):
    """Sends ``n`` records, noting the GC threshold while it runs; waits for ``release``
    before ending, so that another node can start and stop meanwhile."""

    def __init__(self, n: int, release: asyncio.Event | None = None) -> None:
        super().__init__(f"t-{uuid.uuid4().hex[:6]}", f"memory://{uuid.uuid4().hex[:6]}")
        self.n, self.i, self.release = n, 0, release
        self.thresholds: list[tuple[int, ...]] = []
        self.sent_all = asyncio.Event()

    async def receive(self) -> Record:
        self.thresholds.append(gc.get_threshold())
        if self.i >= self.n:
            self.sent_all.set()
            if self.release is not None:
                await self.release.wait()
            raise StopAsyncIteration
        self.i += 1
        return Record(value=b"x")


@pytest.fixture
def default_threshold() -> Iterator[tuple[int, ...]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's default up to 3.12
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)


def test_a_running_node_raises_the_default_gc_threshold_and_puts_it_back(
    default_threshold: tuple[int, ...],
) -> None:
    node = _Seen(3)
    asyncio.run(node.run())
    assert node.thresholds and all(
        t == (loop._GC_YOUNG_WHILE_RUNNING, 10, 10) for t in node.thresholds
    )
    assert gc.get_threshold() == default_threshold


def test_a_threshold_the_user_chose_is_left_alone(default_threshold: tuple[int, ...]) -> None:
    gc.set_threshold(500, 5, 5)
    node = _Seen(3)
    asyncio.run(node.run())
    assert set(node.thresholds) == {(500, 5, 5)}
    assert gc.get_threshold() == (500, 5, 5)


def test_the_threshold_stays_raised_until_the_last_node_in_the_process_stops(
    default_threshold: tuple[int, ...],
) -> None:
    async def main() -> None:
        release = asyncio.Event()
        long = _Seen(2, release)
        first = asyncio.create_task(long.run())
        await asyncio.wait_for(long.sent_all.wait(), 30)
        short = _Seen(2)
        await short.run()  # starts and stops while the first node still runs
        assert gc.get_threshold()[0] == loop._GC_YOUNG_WHILE_RUNNING
        release.set()
        await asyncio.wait_for(first, 30)
        assert gc.get_threshold() == default_threshold

    asyncio.run(main())
