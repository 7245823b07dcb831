"""The small interface every transport implements: Kafka for production, memory for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, runtime_checkable

from fogverse.record import Headers, Record, TopicPartition

__all__ = ["ConsumerTransport", "ProducerTransport", "RebalanceCallback"]

# A coroutine function: librdkafka's callbacks hand it to the event loop from their thread.
RebalanceCallback = Callable[[set[TopicPartition]], Coroutine[Any, Any, None]]


@runtime_checkable
class ConsumerTransport(Protocol):
    """Reads records for a consumer group, with explicit commits only.

    ``on_revoke`` runs before partitions are taken away, so the node can finish or commit
    the work it holds for them; ``on_assign`` runs after new partitions arrive.
    """

    on_assign: RebalanceCallback | None
    on_revoke: RebalanceCallback | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(self, timeout: float, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit "next offset to read" per partition."""
        ...

    async def seek_to_end(self, partitions: Iterable[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...


@runtime_checkable
class ProducerTransport(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a record; the returned future resolves once the broker acknowledged it.

        Awaiting ``send`` itself only waits for room in the send buffer (backpressure).
        """
        ...

    async def flush(self) -> None: ...
