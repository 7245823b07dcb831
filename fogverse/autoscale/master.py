"""The Master: reads the control topic, keeps the :class:`ControlState`, feeds its observers.

Restart correctness: the master's state is a function of the recent control messages, so a
starting master reads the control topic from ``lookback`` seconds ago (by timestamp, on every
partition). Reading from the end would skip what was sent before it started (the original's
defect); reading from a committed offset would skip exactly the messages whose effect died
with the previous master. Observers learn whether the master has caught up with what was
already on the topic through :attr:`Master.ready`, so nothing decides on a half-rebuilt state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from fogverse.autoscale.messages import (
    ControlMessage,
    InvalidMessage,
    encode_message,
    now,
    parse_message,
)
from fogverse.autoscale.state import ControlState
from fogverse.config import default_servers
from fogverse.transport.aiokafka_clients import SafeFetch, UnparsedRecord, sender_died

__all__ = ["Master", "MasterObserver", "Service"]

logger = logging.getLogger(__name__)

_INVALID_LOG_FIRST = 20
_INVALID_LOG_EVERY = 1000
_PARTITION_CHECK_SECONDS = 10.0
_MAX_RECORDS = 1000  # per read of the control topic


@runtime_checkable
class MasterObserver(Protocol):
    """Something the master feeds every valid control message (sync or async ``on_message``).

    Optional ``async start(master)`` and ``async stop()`` run with the master.
    """

    def on_message(self, message: ControlMessage) -> Any: ...


@runtime_checkable
class Service(Protocol):
    """A component that runs alongside the master (e.g. the lock server)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Master:
    """``await Master(consumer_topic, consumer_group_id, consumer_servers, observers,
    possible_data_types).run()``.

    ``possible_data_types`` restricts which message classes reach the observers (all by
    default). The master reads every partition of ``consumer_topic`` itself (no group
    assignment: two masters must not split the heartbeats between them);
    ``consumer_group_id`` names it to the broker. ``consumer_topic=None`` runs only the
    ``services`` (a lock-service-only master).
    """

    def __init__(
        self,
        consumer_topic: str | None,
        consumer_group_id: str = "fogverse-master",
        consumer_servers: str | None = None,
        observers: Sequence[MasterObserver] = (),
        possible_data_types: Iterable[type[ControlMessage]] | None = None,
        *,
        services: Sequence[Service] = (),
        lookback_seconds: float = 60.0,
        expiry_factor: float = 3.0,
        create_topic: bool = True,
        control_topic_partitions: int = 1,
        publish: bool = False,
        consumer_conf: dict[str, Any] | None = None,
        producer_conf: dict[str, Any] | None = None,
        admin_conf: dict[str, Any] | None = None,
        clock: Callable[[], float] = now,
    ) -> None:
        self.consumer_topic = consumer_topic
        self.consumer_group_id = consumer_group_id
        # Like every node, the observer and the view: FOGVERSE_BOOTSTRAP, else localhost.
        self.consumer_servers = consumer_servers or default_servers()
        self.observers = list(observers)
        self.possible_data_types = tuple(possible_data_types) if possible_data_types else None
        self.services = list(services)
        self.lookback_seconds = lookback_seconds
        self.create_topic = create_topic
        self.control_topic_partitions = control_topic_partitions
        self.publish_enabled = publish
        self.consumer_conf = dict(consumer_conf or {})
        # Security settings (SASL/SSL) reach every client the master makes: aiokafka keywords
        # for the consumer and producer, librdkafka keys for the admin client.
        self.producer_conf = dict(producer_conf or {})
        self.admin_conf = dict(admin_conf or {})
        self.state = ControlState(
            expiry_factor=expiry_factor, retention=max(600.0, lookback_seconds), clock=clock
        )
        self.invalid_messages = 0
        self.messages = 0
        self.ready = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._consumer: Any = None
        self._fetch: Any = None
        self._producer: Any = None
        self._targets: dict[Any, int] = {}

    # ---- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from signal handlers and callbacks)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; every component started here is stopped on the way out."""
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self.ready.clear()
        started: list[Any] = []
        consume: asyncio.Task[None] | None = None
        try:
            for service in self.services:
                await service.start()
                started.append(service)
            if self.consumer_topic is not None:
                await self._start_kafka()
            else:
                self.ready.set()
            for obs in self.observers:
                start = getattr(obs, "start", None)
                if start is not None:
                    await start(self)
                started.append(obs)
            if self._consumer is not None:
                consume = asyncio.create_task(self._consume(), name="master-consume")
            stop_wait = asyncio.create_task(self._stop.wait())
            waits: set[asyncio.Task[Any]] = {stop_wait} | ({consume} if consume else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if consume is not None and consume in done:
                consume.result()  # a dead consumer loop is fatal: raise its error
        finally:
            if consume is not None:
                consume.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consume
            for component in reversed(started):
                stop = getattr(component, "stop", None)
                if stop is None:
                    continue
                try:
                    result = stop()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("stopping %r failed", component)
            await self._stop_kafka()

    # ---- Kafka ---------------------------------------------------------------------------

    async def _start_kafka(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        assert self.consumer_topic is not None
        servers = self.consumer_servers
        if self.create_topic:
            from fogverse.admin import KafkaAdmin

            admin = KafkaAdmin(servers, self.admin_conf)
            await admin.create_topic(self.consumer_topic, self.control_topic_partitions)
        conf = {
            "bootstrap_servers": servers,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "client_id": self.consumer_group_id,
            "metadata_max_age_ms": 10_000,
            **self.consumer_conf,
        }
        self._consumer = AIOKafkaConsumer(**conf)
        self._fetch = SafeFetch(self._consumer)
        await self._consumer.start()
        if self.publish_enabled:
            self._producer = AIOKafkaProducer(**self._producer_config(servers))
            await self._producer.start()
        await self._assign(initial=True)

    def _producer_config(self, servers: str) -> dict[str, Any]:
        return {
            "bootstrap_servers": servers,
            "acks": "all",
            "client_id": f"{self.consumer_group_id}-master",
            **self.producer_conf,
        }

    async def _partitions(self) -> set[int]:
        assert self._consumer is not None and self.consumer_topic is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            parts = self._consumer.partitions_for_topic(self.consumer_topic)
            if parts:
                return set(parts)
            if loop.time() > deadline:
                raise RuntimeError(f"control topic {self.consumer_topic!r} has no partitions")
            with contextlib.suppress(Exception):
                await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)

    async def _assign(self, *, initial: bool) -> None:
        from aiokafka import TopicPartition

        assert self.consumer_topic is not None
        parts = await self._partitions()
        current = {tp.partition for tp in self._consumer.assignment()}
        new = [TopicPartition(self.consumer_topic, p) for p in sorted(parts - current)]
        if not new:
            return
        self._consumer.assign(
            [TopicPartition(self.consumer_topic, p) for p in sorted(parts | current)]
        )
        if not initial:
            # A partition added while we run only holds messages sent since: read it whole.
            await self._consumer.seek_to_beginning(*new)
            return
        since_ms = int((now() - self.lookback_seconds) * 1000)
        found = await self._consumer.offsets_for_times({tp: since_ms for tp in new})
        ends = await self._consumer.end_offsets(new)
        for tp in new:
            hit = found.get(tp)
            if hit is None:
                self._consumer.seek(tp, ends[tp])
            else:
                self._consumer.seek(tp, hit.offset)
        self._targets = {tp: ends[tp] for tp in new}
        logger.info(
            "master reading %s from %.0f s ago (%d partitions)",
            self.consumer_topic,
            self.lookback_seconds,
            len(new),
        )
        await self._check_ready()

    async def _check_ready(self) -> None:
        if self.ready.is_set():
            return
        for tp, target in self._targets.items():
            if await self._consumer.position(tp) < target:
                return
        live = self.state.live_instances()
        staged = sum(1 for i in live if self.state.stage_of(i) is not None)
        logger.info(
            "master caught up with the control topic: %d live instances (%d in "
            "auto-scaled stages), %d stages",
            len(live),
            staged,
            len(self.state.stages),
        )
        self.ready.set()

    async def _stop_kafka(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        for client in (producer, consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _PARTITION_CHECK_SECONDS
        while True:
            started = self.state.clock()
            batches = await self._fetch.getmany(timeout_ms=200, max_records=_MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    if type(record) is UnparsedRecord:
                        self.invalid_messages += 1
                        continue  # SafeFetch logged it
                    await self.handle_raw(record.value)
            if sum(len(records) for records in batches.values()) < _MAX_RECORDS:
                # Not a full batch: everything sent before the read began is applied now.
                self.state.mark_read(started)
            if not self.ready.is_set():
                await self._check_ready()
            if loop.time() >= next_check:
                next_check = loop.time() + _PARTITION_CHECK_SECONDS
                self.state.prune()
                try:
                    await self._assign(initial=False)
                except Exception as exc:
                    logger.warning("checking the control topic's partitions failed: %s", exc)

    # ---- messages ------------------------------------------------------------------------

    async def handle_raw(self, raw: bytes | None) -> ControlMessage | None:
        """Parse one control-topic value and dispatch it; invalid values are logged, counted
        and skipped."""
        try:
            message = parse_message(raw)
        except InvalidMessage as exc:
            self.invalid_messages += 1
            n = self.invalid_messages
            if n <= _INVALID_LOG_FIRST or n % _INVALID_LOG_EVERY == 0:
                preview = repr(raw[:80]) if raw is not None else "None"
                logger.warning("skipping invalid control message #%d (%s): %s", n, exc, preview)
            return None
        if self.possible_data_types is not None and not isinstance(
            message, self.possible_data_types
        ):
            logger.debug("ignoring %s message: not in possible_data_types", message.TYPE)
            return None
        await self.dispatch(message)
        return message

    async def dispatch(self, message: ControlMessage) -> None:
        self.messages += 1
        self.state.apply(message)
        for obs in self.observers:
            try:
                result = obs.on_message(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One faulty observer must not take the master (or the others) down.
                logger.exception("observer %r failed on a %s message", obs, message.TYPE)

    async def publish(self, message: ControlMessage) -> None:
        """Record a message of the master's own on the control topic (not awaiting the ack)."""
        if self._producer is None or self.consumer_topic is None:
            return
        if sender_died(self._producer):
            # aiokafka's sender task died (aio-libs/aiokafka#907): every send would fail.
            logger.warning("the master's producer lost its sender; starting a new one")
            dead, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await dead.stop()
            from aiokafka import AIOKafkaProducer

            servers = self.consumer_servers
            producer = AIOKafkaProducer(**self._producer_config(servers))
            try:
                await producer.start()
            except Exception as exc:
                logger.warning("could not publish %s: %s", message.TYPE, exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                self._producer = dead  # replaced again at the next publish
                return
            self._producer = producer
        try:
            ack = await self._producer.send(
                self.consumer_topic, encode_message(message), key=message.instance_id.encode()
            )
        except Exception as exc:
            logger.warning("could not publish %s: %s", message.TYPE, exc)
            return
        ack.add_done_callback(_log_failure)


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        logger.warning("a master message was not delivered: %s", fut.exception())
