"""Dynamic partitioning: a consumer that joins its group first grows the topic to fit it.

A consumer group cannot use more consumers than its topic has partitions, so a scaled-out
consumer would sit idle. :class:`ConsumerStart` (the seed's "Dynamic Partition Usage") makes a
joining consumer take the lock ``partition:<topic>:<group>`` from the lock service, grow the topic
to at least (live members of the group + 1) partitions, join the group and wait until it owns a
partition before it lets the next consumer in. Every wait is asynchronous, every admin call runs
off the event loop, and the lock is released whatever happens (its lease also ends on its own if
the holder freezes or dies).

Partitions only grow. Adding partitions moves keys: see ``docs/partitions.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from fogverse.admin import admin_client
from fogverse.config import split_topics
from fogverse.plugins import Plugin
from fogverse.transport.memory import SCHEME as MEMORY_SCHEME

if TYPE_CHECKING:
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient

    from fogverse.admin import KafkaAdmin

__all__ = [
    "DEFAULT_METADATA_MAX_AGE_MS",
    "INITIAL_PARTITIONS_ENV",
    "LOCK_ADDRESS_ENV",
    "METADATA_MAX_AGE_ENV",
    "ConsumerStart",
    "DynamicPartitionError",
    "JoinResult",
    "PartitionAdminError",
    "lock_name",
    "node_plugin",
    "refresh_metadata_often",
]

logger = logging.getLogger(__name__)

DEFAULT_METADATA_MAX_AGE_MS: Final = 5_000
"""How old a client's view of partition counts may get in this mode (aiokafka's default is
5 minutes: a new partition would stay unread by its owner, and unused by producers, that long)."""

LOCK_ADDRESS_ENV: Final = "FOGVERSE_DYNAMIC_PARTITIONS"
"""``host:port`` of the lock service. Set, it switches a node started by a deploy script (the
auto-scaler's LOCAL provider, say) to dynamic partitioning: see :meth:`ConsumerStart.from_env`."""
INITIAL_PARTITIONS_ENV: Final = "FOGVERSE_INITIAL_PARTITIONS"
METADATA_MAX_AGE_ENV: Final = "FOGVERSE_METADATA_MAX_AGE_MS"

# Waiting for the assignment: how often the consumer's assignment is looked at.
_ASSIGNMENT_POLL = 0.05
# Waiting for a created or grown topic to show every partition with a leader.
_METADATA_POLL = 0.1
_LOCK_PREFIX = "partition:"
# The lock service's token variable (fogverse.autoscale.lock.server.TOKEN_ENV). The lock
# package is imported only when a join runs: importing this module must stay cheap for nodes.
_TOKEN_ENV = "FOGVERSE_LOCK_TOKEN"


class DynamicPartitionError(RuntimeError):
    """Joining with dynamic partitioning failed (the lock was released)."""


class PartitionAdminError(DynamicPartitionError):
    """A Kafka admin call (describe, create topic, grow partitions) failed.

    ``code`` is the Kafka error name (``"POLICY_VIOLATION"``, ``"_TIMED_OUT"``...) when Kafka
    gave one; the original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class JoinResult:
    """What one :meth:`ConsumerStart.start_with_distributed_lock` did."""

    consumer_id: str
    group_id: str
    members_before: int
    """Live members of the group counted under the lock (this consumer not included)."""
    partitions_before: dict[str, int]
    partitions: dict[str, int]
    """Partition count of each topic once grown (never below ``partitions_before``)."""
    assignment: frozenset[tuple[str, int]]
    """The consumer's partitions when the lock was released; empty only if
    ``assignment_timeout`` ran out first."""
    lock_wait: float
    """Seconds spent waiting for the lock."""
    duration: float
    """Seconds from the call to the release of the lock."""


def lock_name(topic: str, group_id: str) -> str:
    """The lock guarding the partition count of ``topic`` for ``group_id``."""
    from fogverse.autoscale.lock.protocol import MAX_NAME_CHARS

    name = f"{_LOCK_PREFIX}{topic}:{group_id}"
    if len(name) <= MAX_NAME_CHARS:
        return name
    # Topic names go up to 249 characters and group ids are unbounded: hash what does not fit.
    digest = hashlib.sha256(f"{topic}\0{group_id}".encode()).hexdigest()
    return f"{_LOCK_PREFIX}sha256:{digest}"


def refresh_metadata_often(
    config: MutableMapping[str, Any], max_age_ms: int = DEFAULT_METADATA_MAX_AGE_MS
) -> MutableMapping[str, Any]:
    """Cap ``metadata_max_age_ms`` in an aiokafka producer or consumer config; returns it.

    Producers of a topic that consumers grow need it too, or they keep writing to the old
    partitions only: ``Producer(producer_conf=refresh_metadata_often({}))``.
    """
    current = config.get("metadata_max_age_ms")
    if current is None or current > max_age_ms:
        config["metadata_max_age_ms"] = max_age_ms
    return config


def _error_of(exc: BaseException) -> KafkaError | None:
    from confluent_kafka import KafkaError

    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def _transient(err: KafkaError) -> bool:
    from confluent_kafka import KafkaError

    # librdkafka's retriable() flag is False for these, yet they only mean "not yet": a group
    # coordinator still loading (the first group on a fresh cluster), a leader being elected.
    codes = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_CONTROLLER,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
    return bool(err.retriable()) or err.code() in codes


def _assigned(consumer: Any, topics: Iterable[str]) -> frozenset[tuple[str, int]]:
    wanted = set(topics)
    out: set[tuple[str, int]] = set()
    for tp in consumer.assignment():
        topic, partition = (tp.topic, tp.partition) if hasattr(tp, "topic") else tp
        if topic in wanted:
            out.add((topic, partition))
    return frozenset(out)


def _is_raw_aiokafka(consumer: Any) -> bool:
    from aiokafka import AIOKafkaConsumer

    return isinstance(consumer, AIOKafkaConsumer)


class ConsumerStart(Plugin):
    """Joins a consumer to its group through the lock service, growing the topic first.

    As a node's plugin (``Consumer(dynamic_partitions=...)``, or ``node.plugins``) it caps
    the node's producer's metadata age before it starts and joins the node's consumer.

    ``kafka_admin`` is a ``confluent_kafka.admin.AdminClient``, a
    :class:`~fogverse.admin.KafkaAdmin`, or bootstrap servers (an admin client is then
    made for each join, in the process that joins, and dropped after it). ``master_host`` and
    ``master_port`` locate the lock service (the auto-scaling Master's DISTRIBUTED_LOCK_WORKER, or
    a standalone :class:`~fogverse.autoscale.lock.LockServer`); ``token`` defaults to
    ``$FOGVERSE_LOCK_TOKEN``.

    ``sleep_time`` is the pause before retrying an admin call that failed with a transient
    error (at most ``retry_attempt`` retries). ``lock_lease`` is the lease on the lock, renewed
    while held: a holder that freezes blocks the next joiner for at most that long (one that dies
    not at all: its connection closes). ``lock_timeout`` bounds the wait for the lock (None:
    for ever). ``assignment_timeout`` bounds starting the consumer and waiting for a partition:
    a consumer that has not started by then fails the join; one that started but owns nothing
    yet stays in the group, the lock is released anyway, and a later rebalance gives it a
    partition (None: wait for ever). ``metadata_max_age_ms`` caps how long the consumer's client
    trusts its partition counts.
    """

    def __init__(
        self,
        kafka_admin: AdminClient | KafkaAdmin | str,
        sleep_time: float = 3,
        master_host: str = "localhost",
        master_port: int = 4242,
        initial_total_partition: int = 1,
        *,
        token: str | None = None,
        lock_lease: float = 10.0,
        lock_timeout: float | None = 300.0,
        assignment_timeout: float | None = 60.0,
        metadata_max_age_ms: int = DEFAULT_METADATA_MAX_AGE_MS,
        admin_timeout: float = 30.0,
        admin_config: dict[str, Any] | None = None,
        replication_factor: int = -1,
    ) -> None:
        if initial_total_partition < 1:
            raise ValueError("initial_total_partition must be at least 1")
        if not 0 < master_port <= 65535:
            # Else every join fails late, with the socket's bare OverflowError.
            raise ValueError(f"master_port must be a TCP port (1-65535), got {master_port}")
        if sleep_time < 0 or lock_lease <= 0 or admin_timeout <= 0 or metadata_max_age_ms <= 0:
            raise ValueError(
                "sleep_time must be >= 0; lock_lease, admin_timeout and metadata_max_age_ms > 0"
            )
        self._admin_source = kafka_admin
        self._admin_client: Any = None
        # librdkafka settings (SASL/SSL...) for the admin client made from a servers string.
        self._admin_config = dict(admin_config or {})
        self.sleep_time = float(sleep_time)
        self.master_host = master_host
        self.master_port = int(master_port)
        self.initial_total_partition = int(initial_total_partition)
        self._token = token if token is not None else (os.environ.get(_TOKEN_ENV) or None)
        self.lock_lease = float(lock_lease)
        self.lock_timeout = lock_timeout
        self.assignment_timeout = assignment_timeout
        self.metadata_max_age_ms = int(metadata_max_age_ms)
        self.admin_timeout = float(admin_timeout)
        self.replication_factor = int(replication_factor)

    def __repr__(self) -> str:
        return (
            f"ConsumerStart(lock={self.master_host}:{self.master_port}, "
            f"initial_total_partition={self.initial_total_partition})"
        )

    @classmethod
    def from_env(
        cls, bootstrap_servers: str, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> ConsumerStart | None:
        """A ConsumerStart configured by the environment, or None when it does not ask for one.

        ``FOGVERSE_DYNAMIC_PARTITIONS=host:port`` switches it on; ``FOGVERSE_INITIAL_PARTITIONS``
        and ``FOGVERSE_METADATA_MAX_AGE_MS`` are optional, the token comes from
        ``FOGVERSE_LOCK_TOKEN``. This is how instances a deploy script starts join this way.
        """
        env = os.environ if environ is None else environ
        address = env.get(LOCK_ADDRESS_ENV, "").strip()
        if not address:
            return None
        host, sep, port = address.rpartition(":")
        # A port beyond 65535 would surface only at the join, as a bare OverflowError.
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{LOCK_ADDRESS_ENV} must be host:port, got {address!r}")
        kwargs.setdefault("token", env.get(_TOKEN_ENV) or None)
        for name, option in (
            (INITIAL_PARTITIONS_ENV, "initial_total_partition"),
            (METADATA_MAX_AGE_ENV, "metadata_max_age_ms"),
        ):
            if env.get(name):
                try:
                    kwargs.setdefault(option, int(env[name]))
                except ValueError:
                    raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None
        return cls(bootstrap_servers, master_host=host.strip("[]"), master_port=int(port), **kwargs)

    # ---- configuring clients ------------------------------------------------------------

    def refresh_metadata(self, transport: Any) -> None:
        """Cap the metadata age of a not-yet-started transport (its ``config`` dict)."""
        config = getattr(transport, "config", None)
        if isinstance(config, MutableMapping) and "bootstrap.servers" in config:
            # A confluent transport's config: librdkafka's properties, already translated.
            key = "topic.metadata.refresh.interval.ms"
            if config.get(key) is None or config[key] > self.metadata_max_age_ms:
                config[key] = self.metadata_max_age_ms
        elif isinstance(config, MutableMapping):
            refresh_metadata_often(config, self.metadata_max_age_ms)
        elif _is_raw_aiokafka(transport):
            logger.info(
                "an AIOKafkaConsumer is configured at construction: pass it "
                "metadata_max_age_ms=%d yourself to see new partitions quickly",
                self.metadata_max_age_ms,
            )

    # ---- as a node's plugin --------------------------------------------------------------

    async def on_start(self, node: Any) -> None:
        if getattr(node, "producer", None) is not None:
            self.refresh_metadata(node.producer)

    async def start_consumer(self, node: Any) -> bool:
        topics, group_id = getattr(node, "consumer_topic", None), getattr(node, "group_id", None)
        if node.consumer is None or not topics or not group_id:
            return False
        client_id = getattr(node, "client_id", None) or "consumer"
        await self.start_with_distributed_lock(
            node.consumer, topics, group_id, f"{client_id}-{uuid.uuid4().hex[:8]}"
        )
        return True

    # ---- the join -----------------------------------------------------------------------

    async def start_with_distributed_lock(
        self,
        consumer: Any,
        topic: str | list[str],
        group_id: str,
        consumer_id: str | None = None,
        /,
        retry_attempt: int = 3,
    ) -> JoinResult:
        """Grow ``topic`` for one more member of ``group_id``, then start ``consumer`` in it.

        ``consumer`` is a not-yet-started consumer transport (``Consumer.consumer``) or an
        ``AIOKafkaConsumer`` (subscribed here if it is not yet). Returns once the consumer owns a
        partition (or ``assignment_timeout`` ran out), with the lock released. On any error the
        lock is released, a consumer already started is stopped again, and the error is raised:
        :class:`PartitionAdminError` for Kafka admin failures, the lock client's
        ``LockTimeout``/``LockServiceError``/``LockLost`` for lock failures.
        """
        topics = list(dict.fromkeys(split_topics(topic)))
        if not topics:
            raise ValueError("dynamic partitioning needs at least one topic")
        if not group_id:
            raise ValueError("dynamic partitioning needs a consumer group id")
        consumer_id = consumer_id or f"consumer-{uuid.uuid4().hex[:12]}"
        try:
            return await self._join_locked(consumer, topics, group_id, consumer_id, retry_attempt)
        finally:
            if isinstance(self._admin_source, str):
                # An admin client made here lives for one join only: librdkafka's threads do
                # not linger in a node that joined long ago.
                self._admin_client = None

    async def _join_locked(
        self,
        consumer: Any,
        topics: list[str],
        group_id: str,
        consumer_id: str,
        retry_attempt: int,
    ) -> JoinResult:
        loop = asyncio.get_running_loop()
        began = loop.time()
        self.refresh_metadata(consumer)
        for name in topics:
            await self._ensure_topic(name, group_id, retry_attempt)

        from fogverse.autoscale.lock import LockClient, LockError

        client = LockClient(
            self.master_host, self.master_port, self._token, client_name=consumer_id
        )
        started = False
        result: JoinResult | None = None
        asked = loop.time()
        try:
            async with contextlib.AsyncExitStack() as locks:
                # One lock per topic, always taken in the same order: two joiners of
                # overlapping topic lists cannot each hold what the other waits for.
                for name in sorted({lock_name(t, group_id) for t in topics}):
                    grant = await locks.enter_async_context(
                        client.lock(name, lease=self.lock_lease, timeout=self.lock_timeout)
                    )
                    logger.debug("%s holds %r (fence %d)", consumer_id, name, grant.fence)
                locked = loop.time()
                members = await self._members(group_id, retry_attempt)
                needed = max(self.initial_total_partition, members + 1)
                before: dict[str, int] = {}
                after: dict[str, int] = {}
                for name in topics:
                    before[name], after[name] = await self._grow(
                        name, group_id, needed, retry_attempt
                    )
                logger.info(
                    "%s joins group %r: %d live member(s), partitions %s",
                    consumer_id,
                    group_id,
                    members,
                    ", ".join(
                        f"{t} {before[t]}" + (f"->{after[t]}" if after[t] != before[t] else "")
                        for t in topics
                    ),
                )
                started = True
                assignment = await self._join(consumer, topics, consumer_id)
                result = JoinResult(
                    consumer_id=consumer_id,
                    group_id=group_id,
                    members_before=members,
                    partitions_before=before,
                    partitions=after,
                    assignment=assignment,
                    lock_wait=locked - asked,
                    duration=0.0,
                )
        except BaseException as exc:
            if result is None or not isinstance(exc, LockError):
                await self._stop_quietly(consumer, started)
                raise
            # Only the release went wrong (lease already gone, server unreachable): the join
            # itself is complete, and the server frees the lock at its lease's end anyway.
            logger.warning("%s joined, but releasing the lock failed: %s", consumer_id, exc)
        finally:
            await client.close()
        assert result is not None
        result = dataclasses.replace(result, duration=loop.time() - began)
        logger.info(
            "%s owns %s after %.1f s (%.1f s waiting for the lock)",
            consumer_id,
            sorted(result.assignment) or "no partition yet",
            result.duration,
            result.lock_wait,
        )
        return result

    async def _join(
        self, consumer: Any, topics: list[str], consumer_id: str
    ) -> frozenset[tuple[str, int]]:
        """Start the consumer and wait, within ``assignment_timeout``, for its partitions."""
        loop = asyncio.get_running_loop()
        timeout = self.assignment_timeout
        deadline = None if timeout is None else loop.time() + timeout
        if _is_raw_aiokafka(consumer) and not consumer.subscription():
            consumer.subscribe(topics=topics)
        try:
            # aiokafka's start() already waits for the first rebalance to finish.
            async with asyncio.timeout_at(deadline):
                await consumer.start()
        except TimeoutError:
            raise DynamicPartitionError(
                f"{consumer_id}: the consumer did not start within {timeout:g} s"
            ) from None
        # aiokafka rebalances in its own background task; this only looks. librdkafka serves
        # the group only inside a read: its transport's serve_group() reads and puts back. A
        # member that joined gets nothing while the group's leader still sees the old partition
        # count: it waits for the leader's next metadata refresh and the rebalance that follows.
        serve_group = getattr(consumer, "serve_group", None)
        while not (assignment := _assigned(consumer, topics)):
            if deadline is not None and loop.time() >= deadline:
                logger.warning(
                    "%s has no partition after %.0f s; releasing the lock anyway (it gets one "
                    "at a later rebalance, e.g. once the group's leader sees the new partitions)",
                    consumer_id,
                    timeout,
                )
                return frozenset()
            if serve_group is not None:
                await serve_group(_ASSIGNMENT_POLL)
            else:
                await asyncio.sleep(_ASSIGNMENT_POLL)
        return assignment

    @staticmethod
    async def _stop_quietly(consumer: Any, started: bool) -> None:
        if not started:
            return
        try:
            await consumer.stop()
        except Exception as exc:
            logger.debug("stopping the consumer after a failed join: %r", exc)

    # ---- admin calls, off the event loop -----------------------------------------------

    def _client(self) -> Any:
        if self._admin_client is None:
            source = self._admin_source
            if isinstance(source, str):
                source = admin_client(source, self._admin_config)
            # A KafkaAdmin wraps the confluent client.
            self._admin_client = getattr(source, "client", source)
        return self._admin_client

    async def _call(
        self,
        what: str,
        request: Callable[[], concurrent.futures.Future[Any]],
        retry_attempt: int,
        tolerate: frozenset[int] = frozenset(),
    ) -> Any:
        """Run one admin request; a tolerated Kafka error is returned instead of raised."""
        attempt = 0
        while True:
            try:
                # confluent's admin calls return at once with futures that librdkafka's own
                # thread completes: awaiting them wrapped never blocks the event loop.
                future = asyncio.wrap_future(request())
                return await asyncio.wait_for(future, self.admin_timeout)
            except Exception as exc:
                err = _error_of(exc)
                if err is not None and err.code() in tolerate:
                    return err
                transient = isinstance(exc, TimeoutError) or (err is not None and _transient(err))
                if transient and attempt < retry_attempt:
                    attempt += 1
                    logger.info(
                        "%s failed (%s); retry %d in %g s",
                        what,
                        err or exc,
                        attempt,
                        self.sleep_time,
                    )
                    await asyncio.sleep(self.sleep_time)
                    continue
                detail = err.str() if err is not None else (str(exc) or type(exc).__name__)
                raise PartitionAdminError(
                    f"{what} failed: {detail}", code=err.name() if err is not None else None
                ) from exc

    async def _describe_topic(self, topic: str, group_id: str, retry_attempt: int) -> Any:
        from confluent_kafka import KafkaError, TopicCollection

        client = self._client()
        timeout = self.admin_timeout
        return await self._call(
            f"describing topic {topic!r} (group {group_id!r})",
            lambda: client.describe_topics(TopicCollection([topic]), request_timeout=timeout)[
                topic
            ],
            retry_attempt,
            frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART}),
        )

    async def _partition_count(self, topic: str, group_id: str, retry_attempt: int) -> int | None:
        from confluent_kafka import KafkaError

        description = await self._describe_topic(topic, group_id, retry_attempt)
        if isinstance(description, KafkaError):
            return None
        return len(description.partitions)

    async def _wait_ready(self, topic: str, group_id: str, count: int, retry_attempt: int) -> int:
        """Wait until ``topic`` shows at least ``count`` partitions, each with a leader."""
        from confluent_kafka import KafkaError

        deadline = time.monotonic() + self.admin_timeout
        while True:
            description = await self._describe_topic(topic, group_id, retry_attempt)
            if not isinstance(description, KafkaError):
                parts = description.partitions
                if len(parts) >= count and all(p.leader is not None for p in parts):
                    return len(parts)
            if time.monotonic() >= deadline:
                raise PartitionAdminError(
                    f"topic {topic!r} did not show {count} partitions with leaders within "
                    f"{self.admin_timeout:g} s",
                    code="_TIMED_OUT",
                )
            await asyncio.sleep(_METADATA_POLL)

    async def _ensure_topic(self, topic: str, group_id: str, retry_attempt: int) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic

        if await self._partition_count(topic, group_id, retry_attempt) is not None:
            return
        client = self._client()
        spec = NewTopic(
            topic,
            num_partitions=self.initial_total_partition,
            replication_factor=self.replication_factor,
        )
        timeout = self.admin_timeout
        created = await self._call(
            f"creating topic {topic!r} with {self.initial_total_partition} partition(s)",
            lambda: client.create_topics([spec], operation_timeout=timeout)[topic],
            retry_attempt,
            frozenset({KafkaError.TOPIC_ALREADY_EXISTS}),
        )
        if not isinstance(created, KafkaError):
            logger.info("created topic %r with %d partition(s)", topic, spec.num_partitions)
        # Another joiner may have created it with another count: any count will do.
        await self._wait_ready(topic, group_id, 1, retry_attempt)

    async def _members(self, group_id: str, retry_attempt: int) -> int:
        from confluent_kafka import KafkaError

        client = self._client()
        timeout = self.admin_timeout
        description = await self._call(
            f"describing consumer group {group_id!r}",
            lambda: client.describe_consumer_groups([group_id], request_timeout=timeout)[group_id],
            retry_attempt,
            frozenset({KafkaError.GROUP_ID_NOT_FOUND}),
        )
        if isinstance(description, KafkaError):
            return 0
        return len(description.members)

    async def _grow(
        self, topic: str, group_id: str, needed: int, retry_attempt: int
    ) -> tuple[int, int]:
        """Make ``topic`` have at least ``needed`` partitions; returns (before, after)."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewPartitions

        current = await self._partition_count(topic, group_id, retry_attempt)
        if current is None:
            raise PartitionAdminError(
                f"topic {topic!r} disappeared while group {group_id!r} was joining",
                code="UNKNOWN_TOPIC_OR_PART",
            )
        if current >= needed:
            return current, current
        client = self._client()
        timeout = self.admin_timeout
        # INVALID_PARTITIONS: someone else grew it to this count or beyond meanwhile.
        await self._call(
            f"growing topic {topic!r} from {current} to {needed} partitions for group {group_id!r}",
            lambda: client.create_partitions(
                [NewPartitions(topic, needed)], operation_timeout=timeout
            )[topic],
            retry_attempt,
            frozenset({KafkaError.INVALID_PARTITIONS}),
        )
        return current, await self._wait_ready(topic, group_id, needed, retry_attempt)


def node_plugin(node: Any) -> ConsumerStart | None:
    """The ``fogverse.plugins`` entry point: a :class:`ConsumerStart` from the environment
    (FOGVERSE_DYNAMIC_PARTITIONS) for a Kafka consumer node that has none of its own."""
    servers = getattr(node, "consumer_servers", None)
    if (
        not os.environ.get(LOCK_ADDRESS_ENV)
        or not isinstance(servers, str)
        or servers.startswith(MEMORY_SCHEME)
        or getattr(node, "consumer", None) is None
        or getattr(node, "dynamic_partitions", None) is not None
        or any(isinstance(p, ConsumerStart) for p in getattr(node, "plugins", ()))
    ):
        return None
    return ConsumerStart.from_env(servers)
