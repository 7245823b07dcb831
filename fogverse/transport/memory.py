"""An in-process broker behind the same transport interface, for users' tests.

It mimics what a pipeline relies on — partitions, keys, consumer groups with committed
offsets, redelivery of uncommitted records to a restarted consumer — not Kafka's protocol.
FogVerse's own Kafka behaviour is always tested against a real broker, never this.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fogverse.record import Headers, Record, TopicPartition
from fogverse.transport.base import AckCallback, RebalanceCallback

__all__ = ["MemoryBroker", "MemoryConsumerTransport", "MemoryProducerTransport"]

SCHEME = "memory://"


@dataclass
class _Group:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    members: list[MemoryConsumerTransport] = field(default_factory=list)
    # Who holds each partition now: a partition reaches its new owner only once the old one
    # gave it up (after its on_revoke), as in Kafka's rebalance.
    owners: dict[TopicPartition, MemoryConsumerTransport] = field(default_factory=dict)


class MemoryBroker:
    """Topics, partitions and consumer groups in memory, for one event loop.

    ``MemoryBroker.named("x")`` returns the broker a ``memory://x`` server string refers to,
    so a pipeline's nodes find each other by name, as they would through a bootstrap address.
    """

    _registry: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self, default_partitions: int = 1) -> None:
        self.default_partitions = default_partitions
        self.topics: dict[str, list[list[Record]]] = {}
        self.groups: dict[str, _Group] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._rr = itertools.count()

    @classmethod
    def named(cls, name: str) -> MemoryBroker:
        return cls._registry.setdefault(name, cls())

    @classmethod
    def for_servers(cls, servers: str) -> MemoryBroker:
        return cls.named(servers[len(SCHEME) :] or "default")

    @classmethod
    def reset(cls) -> None:
        """Forget every named broker (between tests)."""
        cls._registry.clear()

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        if name not in self.topics:
            self.topics[name] = [[] for _ in range(partitions or self.default_partitions)]
            self._rebalance_all()

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition (for assertions in tests)."""
        return [r for part in self.topics.get(topic, []) for r in part]

    def append(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None
    ) -> Record:
        self.create_topic(topic)
        parts = self.topics[topic]
        p = (zlib.crc32(key) if key is not None else next(self._rr)) % len(parts)
        rec = Record(
            value=value,
            key=key,
            headers=list(headers or []),
            topic=topic,
            partition=p,
            offset=len(parts[p]),
            timestamp=int(time.time() * 1000),
        )
        parts[p].append(rec)
        self._notify()
        return rec

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_change(self, timeout: float) -> None:
        # A future of the running loop, not an Event bound to the first loop that waited: a
        # named broker outlives an asyncio.run() (a restarted pipeline, the next test).
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _rebalance_all(self) -> None:
        for group in self.groups.values():
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        # Round-robin of every subscribed partition over the members in join order.
        wanted: dict[MemoryConsumerTransport, set[TopicPartition]] = {
            m: set() for m in group.members
        }
        tps = sorted(
            {
                (t, p)
                for m in group.members
                for t in m.topics
                for p in range(len(self.topics.get(t, [])))
            }
        )
        subscribers = {tp: [m for m in group.members if tp[0] in m.topics] for tp in tps}
        for i, tp in enumerate(tps):
            members = subscribers[tp]
            if members:
                wanted[members[i % len(members)]].add(tp)
        for member, tps_for in wanted.items():
            member._set_assignment(tps_for)
        self._notify()  # members waiting in getmany() take part in the rebalance now


class MemoryConsumerTransport:
    def __init__(
        self,
        broker: MemoryBroker,
        topics: Iterable[str],
        group_id: str | None,
        *,
        auto_offset_reset: str = "earliest",
    ) -> None:
        self.broker = broker
        self.topics = list(topics)
        self.group_id = group_id or f"memory-{id(self)}"
        self.auto_offset_reset = auto_offset_reset
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        self._assigned: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._target: set[TopicPartition] = set()
        self._stopped = False
        self._turn = 0  # which assigned partition a fetch starts at

    async def start(self) -> None:
        self._stopped = False
        for t in self.topics:
            self.broker.create_topic(t)
        group = self.broker.groups.setdefault(self.group_id, _Group())
        group.members.append(self)
        self.broker._rebalance(group)

    async def stop(self) -> None:
        group = self.broker.groups.get(self.group_id)
        self._stopped = True
        if group and self in group.members:
            self._target = set()
            try:
                await self._apply()
            finally:
                group.members.remove(self)
                self.broker._rebalance(group)
        self.broker._notify()  # a getmany() waiting on this consumer returns

    def _set_assignment(self, tps: set[TopicPartition]) -> None:
        self._target = tps

    async def _apply(self) -> None:
        group = self.broker.groups[self.group_id]
        revoked = self._assigned - self._target
        if revoked:
            try:
                if self.on_revoke is not None:
                    await self.on_revoke(revoked)
            finally:  # given up even if on_revoke failed, as the Kafka transport does
                self._assigned -= revoked
                for tp in revoked:
                    self._position.pop(tp, None)
                    if group.owners.get(tp) is self:
                        del group.owners[tp]
                self.broker._notify()  # members waiting for these partitions take them
        # Partitions another member still holds come once it revoked them.
        added = {tp for tp in self._target - self._assigned if tp not in group.owners}
        self._assigned |= added
        for tp in added:
            group.owners[tp] = self
            if tp in group.committed:
                self._position[tp] = group.committed[tp]
            elif self.auto_offset_reset in ("latest", "largest", "end"):  # librdkafka's names
                self._position[tp] = len(self.broker.topics[tp[0]][tp[1]])
            else:
                self._position[tp] = 0
        if added and self.on_assign is not None:
            await self.on_assign(added)

    async def getmany(self, timeout: float, max_records: int) -> list[Record]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._stopped:
                return []
            if self._target != self._assigned:
                await self._apply()
            out: list[Record] = []
            # Each fetch starts one partition further on, so a partition with a long backlog
            # does not starve the others behind it (Kafka's fetches rotate the same way).
            tps = sorted(self._assigned)
            if tps:
                self._turn = (self._turn + 1) % len(tps)
                tps = tps[self._turn :] + tps[: self._turn]
            for tp in tps:
                log = self.broker.topics[tp[0]][tp[1]]
                pos = self._position[tp]
                take = log[pos : pos + max_records - len(out)]
                out.extend(take)
                self._position[tp] = pos + len(take)
                if len(out) >= max_records:
                    break
            remaining = deadline - loop.time()
            if out or remaining <= 0:
                return out
            await self.broker.wait_for_change(remaining)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        group = self.broker.groups[self.group_id]
        for tp, off in offsets.items():
            group.committed[tp] = off  # as in Kafka: a lower offset rewinds the group

    async def seek_to_end(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._position[tp] = len(self.broker.topics[tp[0]][tp[1]])

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)


class MemoryProducerTransport:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        rec = self.broker.append(topic, value, key, headers)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(rec)
        return fut

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        on_ack: AckCallback,
    ) -> bool:
        self.broker.append(topic, value, key, headers)
        on_ack(None)
        return True

    async def flush(self) -> None:
        return None
