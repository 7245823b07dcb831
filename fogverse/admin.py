"""Kafka administration: where every part of FogVerse gets its Kafka admin client.

:func:`admin_client` makes confluent-kafka's ``AdminClient`` (blocking calls that return
futures) from bootstrap servers and librdkafka settings (SASL/SSL...); :class:`KafkaAdmin`
wraps one with the topic calls the nodes and add-ons await. The transports, dynamic partitions,
the auto-scaling master and its lag worker, and the local broker's launcher and cluster all
make their admin clients here.

One reader stays on aiokafka's admin client on purpose: the live view's offset probe reads
committed offsets, and librdkafka's ListConsumerGroupOffsets can take the whole process down
while a broker's group coordinator loads (see :mod:`fogverse.view.probe`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

__all__ = ["KafkaAdmin", "admin_client"]

logger = logging.getLogger(__name__)


def admin_client(bootstrap_servers: str, config: Mapping[str, Any] | None = None) -> AdminClient:
    """A confluent-kafka ``AdminClient`` for ``bootstrap_servers`` with the librdkafka
    settings in ``config`` (``{"log_level": 3}`` keeps a client polling a starting broker
    quiet)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({**(config or {}), "bootstrap.servers": bootstrap_servers})


class KafkaAdmin:
    """Topic administration on confluent-kafka, every call awaited off the event loop."""

    def __init__(self, bootstrap_servers: str, config: Mapping[str, Any] | None = None) -> None:
        self.client = admin_client(bootstrap_servers, config)

    async def _wait(self, futures: Mapping[str, Any]) -> None:
        for name, fut in futures.items():
            try:
                await asyncio.wrap_future(fut)
            except Exception as exc:
                if _is_already_exists(exc):
                    logger.debug("topic %s already exists", name)
                    continue
                raise

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication: int = -1,
        config: dict[str, str] | None = None,
    ) -> None:
        """Create ``name`` (an existing one is fine). ``replication=-1``: the cluster's
        ``default.replication.factor``, so a replicated cluster replicates FogVerse's topics
        (the auto-scaling master's control topic) as it does its users'."""
        from confluent_kafka.admin import NewTopic

        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=replication, config=config or {}
        )
        await self._wait(self.client.create_topics([topic]))

    async def partitions(self, name: str) -> int:
        """The topic's partition count; 0 if it does not exist (and it is not created)."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection

        fut = self.client.describe_topics(TopicCollection([name]))[name]
        try:
            desc = await asyncio.wrap_future(fut)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return 0
            raise
        return len(desc.partitions)

    async def grow_partitions(self, name: str, total: int) -> None:
        """Raise the partition count to ``total``; partitions never shrink."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewPartitions

        if await self.partitions(name) >= total:
            return
        try:
            await self._wait(self.client.create_partitions([NewPartitions(name, total)]))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            # Another client grew it between our count and our request ("already has N",
            # "N would not be an increase"): done, if it has enough now.
            if not (
                isinstance(err, KafkaError)
                and err.code() == KafkaError.INVALID_PARTITIONS
                and await self.partitions(name) >= total
            ):
                raise


def _is_already_exists(exc: Exception) -> bool:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
