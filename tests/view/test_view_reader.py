"""The view's topic reader and offset probe without Kafka: a consumer stand-in drives the
reader's loop; a server that never answers stands for a frozen broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from fogverse.view import probe
from fogverse.view.probe import OffsetProbe
from fogverse.view.reader import TopicReader

FRAMES = "cam.frames"
TP = TopicPartition(FRAMES, 0)


class _Consumer:
    """One image partition; a record at every fetch while it is not paused."""

    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()
        self.offset = 0
        self.end_offsets_fails = 1

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.offset = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.offset

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.end_offsets_fails:
            self.end_offsets_fails -= 1
            raise KafkaTimeoutError()  # the broker restarting
        return dict.fromkeys(tps, self.offset)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        await asyncio.sleep(0.005)
        if TP in self.paused:
            return {}
        self.offset += 1
        record = SimpleNamespace(topic=FRAMES, key=b"k", headers=(), value=b"frame")
        return {TP: [record]}


@pytest.mark.timeout(30)
def test_the_reader_goes_on_after_reading_offsets_fails() -> None:
    """After each frame an image partition is paused, then moved to its end: when asking for
    the end failed (a broker restarting), the exception ended the reader's loop for good, and
    the partition stayed paused; no frame was read again however long the broker was back."""

    async def test() -> None:
        got: list[bytes | None] = []
        reader = TopicReader(
            "127.0.0.1:1", [FRAMES], lambda *a: got.append(a[3]), sampled=[FRAMES], max_fps=50
        )
        consumer = _Consumer()
        reader._consumer = consumer
        reader._fetch = consumer  # type: ignore[assignment]
        task = asyncio.create_task(reader.run())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while len(got) < 3:
                assert not task.done(), task.exception()
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.01)
            assert consumer.end_offsets_fails == 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(test())


@pytest.mark.timeout(60)
def test_offsets_from_a_broker_that_never_answers_fail_within_the_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frozen broker accepts connections and answers nothing: each of a read's requests
    waited aiokafka's 40 s, so the page showed the last figures as current, with no error, for
    minutes. The read now gives up after READ_TIMEOUT and drops its clients."""
    monkeypatch.setattr(probe, "READ_TIMEOUT", 0.5, raising=False)

    async def test() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client hangs up
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        offsets = OffsetProbe(f"127.0.0.1:{port}")
        try:
            with pytest.raises(TimeoutError, match="did not answer offsets requests"):
                # The outer bound only catches a read that would hang for aiokafka's 40 s.
                await asyncio.wait_for(offsets.read([FRAMES], {"g": [FRAMES]}), 20)
            assert offsets._admin is None and offsets._offsets is None
        finally:
            await offsets.close()
            server.close()
            await server.wait_closed()

    asyncio.run(test())
