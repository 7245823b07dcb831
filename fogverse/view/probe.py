"""Offsets through the admin API: every viewed topic's partitions and end offsets, and each
stage's committed offsets (for rates and lag). Read-only: nothing is created or committed.

The calls block (confluent-kafka's admin client), so :meth:`OffsetProbe.read` runs them in a
thread; one read is a metadata request, one ListOffsets and one OffsetFetch per group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from fogverse.view.figures import Offsets

__all__ = ["OffsetProbe"]


class OffsetProbe:
    def __init__(
        self, servers: str, conf: Mapping[str, Any] | None = None, timeout: float = 5.0
    ) -> None:
        self.conf = {"bootstrap.servers": servers, **(conf or {})}
        self.timeout = timeout
        self._admin: Any = None

    async def read(
        self, topics: Iterable[str], groups: Mapping[str, Iterable[str]]
    ) -> tuple[Offsets, dict[str, Offsets]]:
        """``(end offsets per topic, committed offsets per group)``; topics that do not exist
        (yet) are left out. ``groups`` maps each group to the topics it reads."""
        return await asyncio.to_thread(
            self._read, list(topics), {g: list(t) for g, t in groups.items()}
        )

    def _read(
        self, topics: list[str], groups: dict[str, list[str]]
    ) -> tuple[Offsets, dict[str, Offsets]]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        if self._admin is None:  # made on first use: a view that is never started has none
            self._admin = AdminClient(self.conf)
        # All topics' metadata: asking for one by name could auto-create it on some brokers.
        meta = self._admin.list_topics(timeout=self.timeout)
        parts: dict[str, list[int]] = {}
        for name in topics:
            info = meta.topics.get(name)
            if info is not None and info.error is None and info.partitions:
                parts[name] = sorted(info.partitions)
        ends: Offsets = {}
        if parts:
            request = {
                TopicPartition(t, p): OffsetSpec.latest() for t, ps in parts.items() for p in ps
            }
            futures = self._admin.list_offsets(request, request_timeout=self.timeout)
            for tp, fut in futures.items():
                ends.setdefault(tp.topic, {})[tp.partition] = fut.result(self.timeout).offset
        committed: dict[str, Offsets] = {}
        for group, inputs in groups.items():
            tps = [TopicPartition(t, p) for t in inputs for p in parts.get(t, ())]
            if not tps:
                continue
            res = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, tps)], request_timeout=self.timeout
            )
            offsets: Offsets = {}
            for tp in res[group].result(self.timeout).topic_partitions:
                offsets.setdefault(tp.topic, {})[tp.partition] = tp.offset
            committed[group] = offsets
        return ends, committed
