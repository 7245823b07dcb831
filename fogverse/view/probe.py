"""Offsets through the admin API: every viewed topic's partitions and end offsets, and each
stage's committed offsets (for rates and lag). Read-only: nothing is created or committed.

aiokafka's clients, not confluent-kafka's: librdkafka's admin ListConsumerGroupOffsets
dereferences a NULL consumer-group handle when the broker answers "coordinator loading" or
"not coordinator" (librdkafka issue 5040, still in 2.16) and takes the whole process down,
the pipeline with it; a freshly started broker answers exactly that for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from fogverse.view.figures import Offsets

__all__ = ["READ_TIMEOUT", "OffsetProbe"]

READ_TIMEOUT = 10.0
"""Seconds one :meth:`OffsetProbe.read` may take. A broker that accepts connections but does
not answer (frozen, overloaded) holds each request for aiokafka's 40 s, a read makes up to four
of them, and meanwhile the page shows the last figures as current with no error."""


class OffsetProbe:
    def __init__(self, servers: str, conf: Mapping[str, Any] | None = None) -> None:
        self.conf = {"bootstrap_servers": servers, **(conf or {})}
        self._admin: Any = None
        self._offsets: Any = None

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        try:
            # A consumer outside any group, only to ask for end offsets.
            self._offsets = AIOKafkaConsumer(
                group_id=None, client_id="fogverse-view-offsets", **self.conf
            )
            await self._offsets.start()
            admin = AIOKafkaAdminClient(client_id="fogverse-view-admin", **self.conf)
            await admin.start()
            self._admin = admin
        except BaseException:
            await self.close()  # the next read starts afresh
            raise

    async def close(self) -> None:
        admin, offsets, self._admin, self._offsets = self._admin, self._offsets, None, None
        for client in (offsets, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await (client.close() if client is admin else client.stop())

    async def read(
        self, topics: Iterable[str], groups: Mapping[str, Iterable[str]]
    ) -> tuple[Offsets, dict[str, Offsets]]:
        """``(end offsets per topic, committed offsets per group)``; topics that do not exist
        (yet) are left out. ``groups`` maps each group to the topics it reads.

        ``TimeoutError`` if the brokers take longer than :data:`READ_TIMEOUT`."""
        deadline = asyncio.timeout(READ_TIMEOUT)
        try:
            async with deadline:
                return await self._read(topics, groups)
        except TimeoutError:
            if not deadline.expired():
                raise
            await self.close()  # the next read starts afresh, not behind requests still waiting
            raise TimeoutError(
                f"the brokers did not answer offsets requests within {READ_TIMEOUT:g} s"
            ) from None

    async def _read(
        self, topics: Iterable[str], groups: Mapping[str, Iterable[str]]
    ) -> tuple[Offsets, dict[str, Offsets]]:
        from aiokafka import TopicPartition

        if self._admin is None:
            await self._start()
        # Every topic's metadata: asking for one by name could auto-create it.
        wanted = set(topics)
        parts: dict[str, list[int]] = {}
        for t in await self._admin.describe_topics():
            if t["topic"] in wanted and not t["error_code"] and t["partitions"]:
                parts[t["topic"]] = sorted(p["partition"] for p in t["partitions"])
        ends: Offsets = {}
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        if tps:
            for tp, end in (await self._offsets.end_offsets(tps)).items():
                ends.setdefault(tp.topic, {})[tp.partition] = end
        committed: dict[str, Offsets] = {}
        for group, inputs in groups.items():
            mine = [TopicPartition(t, p) for t in inputs for p in parts.get(t, ())]
            if not mine:
                continue
            found = await self._admin.list_consumer_group_offsets(group, partitions=mine)
            offsets: Offsets = {}
            for tp, meta in found.items():
                offsets.setdefault(tp.topic, {})[tp.partition] = meta.offset
            committed[group] = offsets
        return ends, committed
