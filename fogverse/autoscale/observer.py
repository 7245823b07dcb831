"""The node side of auto-scaling: heartbeats and auto-scale requests to the master's topic.

``send_heartbeat`` only adds to an in-memory counter (thread-safe, no I/O), so the seed's
one-line call in ``send()`` costs next to nothing. A background task on the node's event loop
sends one aggregated heartbeat per target topic every ``heartbeat_interval`` seconds (also when
the count is zero: that is how the master knows the instance is alive), re-sends the node's
auto-scale requests every ``request_refresh_interval`` seconds (so a restarted master relearns
its stages) and never waits for an acknowledgement; a heartbeat the broker rejected is counted
again in the next one.

The background task starts with :meth:`Observer.start`, or by itself at the first call made
inside a running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from fogverse.autoscale.messages import (
    Announce,
    AutoScaleRequest,
    ControlMessage,
    DeploySpec,
    Heartbeat,
    encode_message,
    now,
    stage_topic,
)
from fogverse.config import default_servers
from fogverse.plugins import Plugin

__all__ = [
    "DEFAULT_CONTROL_TOPIC",
    "INSTANCE_ID_ENV",
    "Observer",
    "ObserverConfig",
    "enable_heartbeats",
    "node_plugin",
]

logger = logging.getLogger(__name__)

DEFAULT_CONTROL_TOPIC = "fogverse-autoscale"
INSTANCE_ID_ENV = "FOGVERSE_INSTANCE_ID"
TOPIC_ENV = "FOGVERSE_OBSERVER_TOPIC"
SERVERS_ENV = "FOGVERSE_OBSERVER_SERVERS"
INTERVAL_ENV = "FOGVERSE_HEARTBEAT_INTERVAL"

_RECONNECT_MAX = 30.0


class ObserverConfig(TypedDict, total=False):
    """``producer_topic`` is the master's ``consumer_topic`` (the control topic)."""

    kafka_server: str
    producer_topic: str
    heartbeat_interval: float
    request_refresh_interval: float
    instance_id: str
    producer_conf: dict[str, Any]


def _first(topics: Any) -> str | None:
    if topics is None:
        return None
    if isinstance(topics, str):
        return topics or None
    topics = list(topics)
    return ",".join(topics) if topics else None


class Observer(Plugin):
    """Reports one node instance to the auto-scaling master."""

    def __init__(
        self,
        config: ObserverConfig | None = None,
        *,
        producer_factory: Callable[..., Any] | None = None,
    ) -> None:
        conf: ObserverConfig = config or {}
        self.servers: str = (
            conf.get("kafka_server") or os.environ.get(SERVERS_ENV) or default_servers()
        )
        self.topic: str = (
            conf.get("producer_topic") or os.environ.get(TOPIC_ENV) or DEFAULT_CONTROL_TOPIC
        )
        self.interval = float(conf.get("heartbeat_interval") or os.environ.get(INTERVAL_ENV) or 1.0)
        self.request_refresh_interval = float(conf.get("request_refresh_interval", 30.0))
        if self.interval <= 0 or self.request_refresh_interval <= 0:
            raise ValueError("heartbeat_interval and request_refresh_interval must be positive")
        self.instance_id: str = (
            conf.get("instance_id")
            or os.environ.get(INSTANCE_ID_ENV)
            or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._producer_conf = dict(conf.get("producer_conf") or {})
        self._producer_factory = producer_factory
        self.source_topic: str | None = None
        self.target_topic: str | None = None
        self.group_id: str | None = None
        self._lock = threading.Lock()
        # Counts from the loop's own thread need no lock; other threads' go through one.
        self._counts: dict[str | None, int] = {}
        self._thread_counts: dict[str | None, int] = {}
        self._loop_thread: int | None = None
        self._since: dict[str | None, float] = {}
        # When the latest heartbeat was taken: a topic first counted after it starts there.
        self._last_beat = now()
        self._requests: dict[tuple[str, str], AutoScaleRequest] = {}
        self._requests_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._producer: Any = None
        self._closed = False
        self.sent = 0
        """Control messages handed to the producer (for tests and monitoring)."""

    # ---- the seed's API ------------------------------------------------------------------

    def send_heartbeat(self, target_topic: str | None, total_messages: int = 1) -> None:
        """Count ``total_messages`` sent to ``target_topic``; never blocks, never does I/O.

        Safe from any thread; on the observer's own event loop thread (the usual caller, a
        node's ``send``) it takes no lock, as the flush runs on that same thread.
        """
        if threading.get_ident() == self._loop_thread:
            counts = self._counts
            counts[target_topic] = counts.get(target_topic, 0) + total_messages
            return
        with self._lock:
            counts = self._thread_counts
            counts[target_topic] = counts.get(target_topic, 0) + total_messages
        if self._task is None:
            self._start_soon()

    def send_auto_scale_request(
        self,
        source_topic: str | Sequence[str],
        target_topic: str,
        topic_configs: dict[str, Any],
        *,
        group_id: str | None = None,
    ) -> None:
        """Ask the master to scale the stage ``source_topic`` -> ``target_topic`` with
        ``topic_configs`` (``provider``, ``service_name``, ``max_instance``,
        ``extra_configs``).

        ``source_topic`` may be a node's ``consumer_topic`` as it is: a list of one topic
        stands for that topic. Raises ``ValueError`` at once if it lists several topics
        (naming them) or if ``topic_configs`` is malformed."""
        source_topic = stage_topic(source_topic, "source_topic")
        target_topic = stage_topic(target_topic, "target_topic")
        spec = DeploySpec.from_dict(dict(topic_configs))
        req = AutoScaleRequest(
            self.instance_id, now(), source_topic, target_topic, spec, group_id or self.group_id
        )
        # A node that asks to scale a stage is an instance of it.
        self.source_topic = self.source_topic or source_topic
        self.target_topic = self.target_topic or target_topic
        with self._lock:
            self._requests[req.stage] = req
            self._requests_due = True
        self._nudge()
        if self._task is None:
            self._start_soon()

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender on the running loop (idempotent)."""
        if self._task is None and not self._closed:
            self._begin(asyncio.get_running_loop())

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if not self._thread_counts and not self._counts and not self._since:
                # Nothing counted yet: the first heartbeat's span starts now, not when the
                # observer was made (the seed makes it at import, long before its node runs).
                self._last_beat = now()
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"observer-{self.instance_id}")
        self._loop_thread = threading.get_ident()

    def _start_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop in this thread: counts wait for start() or a call inside a loop
        if self._task is None and not self._closed:
            self._begin(loop)

    async def close(self, timeout: float = 5.0) -> None:
        """Send the final heartbeat (so the master counts this instance out at once), wait up
        to ``timeout`` seconds for it, and stop."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._producer is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._flush(final=True)
                await self._producer.flush()
        except Exception as exc:
            logger.warning("observer %s: final heartbeat not delivered: %s", self.instance_id, exc)
        finally:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Observer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- attaching to a node -------------------------------------------------------------

    def attach(self, node: Any) -> Observer:
        """Report ``node``: count each record it sends as one output message, start with the
        node and send the final heartbeat when it closes (as one of its
        :attr:`~fogverse.Runnable.plugins`). For nodes that do not call ``send_heartbeat``
        themselves (that would count every output twice)."""
        self.source_topic = _first(getattr(node, "consumer_topic", None)) or self.source_topic
        self.target_topic = getattr(node, "producer_topic", None) or self.target_topic
        self.group_id = getattr(node, "group_id", None) or self.group_id
        if all(p is not self for p in node.plugins):
            node.plugins.append(self)
        node.observer = self
        return self

    # ---- the node's plugin hooks ---------------------------------------------------------

    async def on_start(self, node: Any) -> None:
        await self.start()

    def on_send(self, node: Any, topic: str, count: int) -> None:
        self.send_heartbeat(topic, count)

    async def on_stop(self, node: Any) -> None:
        await self.close()

    # ---- the background sender -----------------------------------------------------------

    def _nudge(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _make_producer(self) -> Any:
        if self._producer_factory is not None:
            return self._producer_factory()
        from aiokafka import AIOKafkaProducer

        conf = {
            "bootstrap_servers": self.servers,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,
            "client_id": f"fogverse-observer-{self.instance_id}",
            **self._producer_conf,
        }
        return AIOKafkaProducer(**conf)

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            producer = self._make_producer()
            try:
                await producer.start()
            except asyncio.CancelledError:
                # Stopped while connecting (start() may wait indefinitely): close what the
                # client has opened so far, or its connections and tasks outlive the node.
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                logger.warning(
                    "observer %s cannot reach %s (%s); retrying in %.1f s",
                    self.instance_id,
                    self.servers,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX)
                continue
            self._producer = producer
            return

    async def _run(self) -> None:
        from fogverse.transport.aiokafka_clients import sender_died

        await self._connect()
        await self._send(
            Announce(
                self.instance_id,
                now(),
                self.source_topic,
                self.target_topic,
                self.group_id,
                self.interval,
                socket.gethostname(),
                os.getpid(),
            )
        )
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.interval
        next_requests = loop.time()
        assert self._wake is not None
        while True:
            if sender_died(self._producer):
                # aiokafka's sender task died (aio-libs/aiokafka#907): every heartbeat would
                # fail from now on, and the master would take this instance for dead.
                logger.warning("observer %s: its producer's sender died", self.instance_id)
                dead, self._producer = self._producer, None
                with contextlib.suppress(Exception):
                    await dead.stop()
                await self._connect()
            if self._requests_due or loop.time() >= next_requests:
                await self._send_requests()
                next_requests = loop.time() + self.request_refresh_interval
            if loop.time() >= next_beat:
                await self._flush(final=False)
                next_beat += self.interval
                if next_beat < loop.time():  # the loop was blocked for a while: don't burst
                    next_beat = loop.time() + self.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(next_beat, next_requests) - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def _send_requests(self) -> None:
        with self._lock:
            self._requests_due = False
            requests = list(self._requests.values())
        for req in requests:
            # Re-sent with a fresh timestamp: the newest request is the stage's current spec.
            await self._send(
                AutoScaleRequest(
                    self.instance_id,
                    now(),
                    req.source_topic,
                    req.target_topic,
                    req.topic_configs,
                    req.group_id or self.group_id,
                )
            )

    async def _flush(self, *, final: bool) -> None:
        ts = now()
        # Runs on the loop thread: no lock-free increment can interleave with this swap.
        counts, self._counts = self._counts, {}
        with self._lock:
            for topic, n in self._thread_counts.items():
                counts[topic] = counts.get(topic, 0) + n
            self._thread_counts = {}
            topics = set(counts) | set(self._since)
            if self.target_topic is not None:
                topics.add(self.target_topic)
            if len(topics) > 1:
                topics.discard(None)  # a liveness-only beat is needed only without any topic
            if not topics:
                topics.add(None)
            beats = []
            last_beat, self._last_beat = self._last_beat, ts
            for topic in topics:
                since = self._since.get(topic, last_beat)
                self._since[topic] = ts
                beats.append(
                    Heartbeat(
                        self.instance_id,
                        ts,
                        topic,
                        counts.get(topic, 0),
                        min(since, ts),
                        self.interval,
                        self.source_topic,
                        self.group_id,
                        final,
                    )
                )
        for i, hb in enumerate(beats):
            try:
                await self._send(hb, recount=hb.total_messages)
            except asyncio.CancelledError:
                # Stopped mid-flush (close() cancels the task): keep the unsent counts for
                # the final heartbeat.
                for unsent in beats[i:]:
                    self._recount(unsent, unsent.total_messages)
                raise

    async def _send(self, message: ControlMessage, recount: int = 0) -> None:
        if self._producer is None:
            return
        try:
            ack = await self._producer.send(
                self.topic, encode_message(message), key=self.instance_id.encode()
            )
        except Exception as exc:
            logger.warning(
                "observer %s: could not queue %s: %s", self.instance_id, message.TYPE, exc
            )
            self._recount(message, recount)
            return
        self.sent += 1
        ack.add_done_callback(lambda f: self._acked(f, message, recount))

    def _acked(self, fut: asyncio.Future[Any], message: ControlMessage, recount: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            logger.warning(
                "observer %s: %s not delivered: %s",
                self.instance_id,
                message.TYPE,
                "cancelled" if fut.cancelled() else fut.exception(),
            )
            self._recount(message, recount)

    def _recount(self, message: ControlMessage, recount: int) -> None:
        if not recount or not isinstance(message, Heartbeat):
            return
        with self._lock:
            topic = message.target_topic
            self._thread_counts[topic] = self._thread_counts.get(topic, 0) + recount
            self._since[topic] = min(self._since.get(topic, message.since), message.since)


def enable_heartbeats(
    node: Any, config: ObserverConfig | Observer | bool | None = None
) -> Observer | None:
    """Attach an observer to ``node`` when ``config`` (or ``FOGVERSE_OBSERVER_TOPIC``) says so.

    ``config`` may be an :class:`Observer`, an :class:`ObserverConfig`, ``True`` (configure
    from the environment) or ``None``/``False`` (only if ``FOGVERSE_OBSERVER_TOPIC`` is set).
    Call it before the node's ``run()`` collects its hooks.
    """
    if isinstance(config, Observer):
        return config.attach(node)
    if config is None or config is False:
        if not os.environ.get(TOPIC_ENV):
            return None
        config = None
    observer = Observer(None if config is True else config)
    return observer.attach(node)


def node_plugin(node: Any) -> Observer | None:
    """The ``fogverse.plugins`` entry point: what :func:`enable_heartbeats` attaches to a
    starting node from its ``heartbeats`` setting or the environment, unless the node has an
    ``observer`` already (attached, or the seed's own that its ``send`` calls)."""
    if getattr(node, "observer", None) is not None:
        return None
    return enable_heartbeats(node, getattr(node, "heartbeats", None))
