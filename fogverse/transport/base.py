"""The small interface every transport implements: Kafka for production, memory for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, runtime_checkable

from fogverse.record import Headers, Record, TopicPartition

__all__ = ["AckCallback", "ConsumerTransport", "ProducerTransport", "RebalanceCallback"]

# A coroutine function: librdkafka's callbacks hand it to the event loop from their thread.
RebalanceCallback = Callable[[set[TopicPartition]], Coroutine[Any, Any, None]]
AckCallback = Callable[[BaseException | None], None]
"""Called on the event-loop thread once a record is settled: ``None`` when the broker
acknowledged it, else why it was not delivered."""


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

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        on_ack: AckCallback,
    ) -> bool:
        """Queue a record if the send buffer has room now, without a future: ``on_ack`` gets
        its outcome (it may be called before this returns, e.g. for a record refused
        locally). ``False``: no room, nothing was queued (``send`` waits for room).

        The node loop's path for every output: no coroutine and no future per record.
        """
        ...

    async def flush(self) -> None: ...
