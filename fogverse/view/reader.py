"""Reads the viewed topics without joining any consumer group.

Partitions are assigned by hand (``group_id=None``): the view never joins, rebalances or
commits for a pipeline's group, and never commits at all. Frame and detection topics are read
from their end at start (a live view has no use for the backlog); the control topic from
``lookback`` seconds ago, like the master, so the view knows the live instances at once.
Partitions added later are read from their beginning (they only hold messages sent since).

Image topics are *sampled*: a browser is sent at most ``max_fps`` frames a second, so reading
every 250 KB frame of a 100 frames/s camera would cost the pipeline's host for nothing. After
each read, an image partition is paused for ``1 / max_fps`` seconds, then moved to its newest
record: the frames in between are never fetched, and the view's cost is bounded by
``max_fps`` whatever the topics' rates. Detections and the control topic are read whole.
Records that cannot be parsed (:class:`~fogverse.transport.aiokafka_clients.UnparsedRecord`) are
handed on with ``value=None`` so that the caller counts them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fogverse.transport.aiokafka_clients import SafeFetch, UnparsedRecord

__all__ = ["TopicReader"]

logger = logging.getLogger(__name__)

OnRecord = Callable[[str, bytes | None, list[tuple[str, bytes]], bytes | None, bool], None]
"""``(topic, key, headers, value, parsed)``."""


class TopicReader:
    def __init__(
        self,
        servers: str,
        topics: list[str],
        on_record: OnRecord,
        *,
        control_topic: str | None = None,
        sampled: Iterable[str] = (),
        max_fps: float = 15.0,
        lookback: float = 60.0,
        max_frame_bytes: int = 16 * 1024 * 1024,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        self.servers = servers
        self.topics = list(dict.fromkeys([*topics, *([control_topic] if control_topic else [])]))
        self.control_topic = control_topic
        self.lookback = lookback
        self.sampled = set(sampled)
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._resume_at: dict[Any, float] = {}
        self.on_record = on_record
        self.max_frame_bytes = max_frame_bytes
        self.conf = dict(conf or {})
        self._consumer: Any = None
        self._fetch: SafeFetch | None = None
        self._known: dict[str, set[int]] = {}

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        conf = {
            "bootstrap_servers": self.servers,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            "client_id": "fogverse-view",
            "fetch_max_wait_ms": 100,
            # One frame must fit in a fetch, or the partition would never move on.
            "max_partition_fetch_bytes": max(1024 * 1024, self.max_frame_bytes),
            "fetch_max_bytes": max(8 * 1024 * 1024, 2 * self.max_frame_bytes),
            **self.conf,
        }
        self._consumer = AIOKafkaConsumer(**conf)
        self._fetch = SafeFetch(self._consumer)
        await self._consumer.start()

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def assign(self, partitions: Mapping[str, Any]) -> None:
        """Read every partition of ``partitions`` (topic -> partition ids) not read yet."""
        from aiokafka import TopicPartition

        new: list[TopicPartition] = []
        for topic in self.topics:
            have = self._known.setdefault(topic, set())
            for p in sorted(set(partitions.get(topic, ())) - have):
                new.append(TopicPartition(topic, p))
        if not new or self._consumer is None:
            return
        first_time = {tp.topic for tp in new if not self._known[tp.topic]}
        current = set(self._consumer.assignment())
        self._consumer.assign(sorted(current | set(new)))
        for tp in new:
            self._known[tp.topic].add(tp.partition)
        later = [tp for tp in new if tp.topic not in first_time]
        fresh = [tp for tp in new if tp.topic in first_time]
        control = [tp for tp in fresh if tp.topic == self.control_topic]
        live = [tp for tp in fresh if tp.topic != self.control_topic]
        if later:
            await self._consumer.seek_to_beginning(*later)
        if live:
            await self._consumer.seek_to_end(*live)
        if control:
            since = int((time.time() - self.lookback) * 1000)
            found = await self._consumer.offsets_for_times({tp: since for tp in control})
            ends = await self._consumer.end_offsets(control)
            for tp in control:
                hit = found.get(tp)
                self._consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        logger.info("view reading %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in new))

    async def run(self) -> None:
        """Read until cancelled."""
        assert self._fetch is not None
        import asyncio

        loop = asyncio.get_running_loop()
        wait_ms = int(min(200, max(10, self.interval * 1000 / 2)))
        while True:
            if not self._consumer.assignment():
                await asyncio.sleep(0.1)  # nothing to read until the first assign()
                continue
            batches = await self._fetch.getmany(timeout_ms=wait_ms, max_records=500)
            for tp, records in batches.items():
                if tp.topic in self.sampled and records:
                    records = records[-1:]  # the newest frame is enough
                    self._consumer.pause(tp)
                    self._resume_at[tp] = loop.time() + self.interval
                for r in records:
                    if type(r) is UnparsedRecord:
                        self.on_record(r.topic, None, [], None, False)
                        continue
                    self.on_record(r.topic, r.key, list(r.headers or ()), r.value, True)
            if self._resume_at:
                await self._resume_due(loop.time())

    async def _resume_due(self, now: float) -> None:
        """Move paused image partitions whose pause is over to their newest record."""
        due = [tp for tp, at in self._resume_at.items() if at <= now]
        if not due:
            return
        for tp in due:
            del self._resume_at[tp]
        assigned = self._consumer.assignment()
        due = [tp for tp in due if tp in assigned]
        try:
            ends = await self._consumer.end_offsets(due) if due else {}
        except Exception as exc:
            # The broker may be restarting: read on from where they stand rather than leave
            # them paused for good (and end the reader with this exception).
            logger.warning("view: reading the end of %s failed: %r", due, exc)
            ends = {}
        for tp in due:
            end = ends.get(tp)
            if end is not None and end - 1 > await self._consumer.position(tp):
                self._consumer.seek(tp, end - 1)  # skip to the newest frame
            self._consumer.resume(tp)
