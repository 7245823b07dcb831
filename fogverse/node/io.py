"""Kafka-facing nodes: ``Consumer`` reads a topic, ``Producer`` writes one.

Configuration follows the seed: attributes set before ``__init__``, constructor arguments,
and the environment variables CONSUMER_TOPIC, CONSUMER_SERVERS, PRODUCER_TOPIC,
PRODUCER_SERVERS, GROUP_ID and CLIENT_ID, which override both. A server
string ``memory://NAME`` puts the node on the in-process :class:`~fogverse.MemoryBroker`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from fogverse.codec import CONTENT_TYPE_HEADER as CONTENT_TYPE
from fogverse.codec import Codec, CodecName, get_codec
from fogverse.config import default_servers, resolve, split_topics
from fogverse.node.delivery import Delivery, current_delivery
from fogverse.node.loop import Runnable
from fogverse.plugins import Plugin
from fogverse.record import Headers, Record, TopicPartition
from fogverse.transport.base import ConsumerTransport, ProducerTransport
from fogverse.transport.memory import (
    SCHEME,
    MemoryBroker,
    MemoryConsumerTransport,
    MemoryProducerTransport,
)

__all__ = ["Consumer", "Producer"]

logger = logging.getLogger(__name__)


def _producer_transport(
    servers: str, client_id: str | None, conf: dict[str, Any]
) -> ProducerTransport:
    if servers.startswith(SCHEME):
        return MemoryProducerTransport(MemoryBroker.for_servers(servers))
    from fogverse.transport.confluent import ConfluentProducerTransport

    return ConfluentProducerTransport(servers, client_id=client_id, config=conf)


def _consumer_transport(
    servers: str, topics: list[str], group_id: str, client_id: str | None, conf: dict[str, Any]
) -> ConsumerTransport:
    if servers.startswith(SCHEME):
        reset = conf.get("auto_offset_reset", conf.get("auto.offset.reset", "earliest"))
        return MemoryConsumerTransport(
            MemoryBroker.for_servers(servers), topics, group_id, auto_offset_reset=reset
        )
    from fogverse.transport.confluent import ConfluentConsumerTransport

    return ConfluentConsumerTransport(topics, servers, group_id, client_id=client_id, config=conf)


class _Output:
    """The producing half shared by Producer and Consumer: encode with a codec, send with the
    input's own key and headers, tie each ack to its input."""

    producer_topic: str | None = None
    producer: ProducerTransport | None = None
    auto_encode: bool = True
    """Encode results with ``output_codec`` (the seed's flag; ``False`` sends them as is)."""
    auto_decode: bool = True
    """Decode inputs with ``input_codec`` (the seed's flag; ``False`` passes raw bytes)."""
    _output_codec: Codec
    _senders: tuple[Plugin, ...]  # the node's plugins that count outputs (set by Runnable)

    def _setup_output(
        self,
        producer_topic: str | None,
        producer_servers: str | None,
        client_id: str | None,
        producer_conf: dict[str, Any] | None,
        output_codec: CodecName | Codec | None,
    ) -> None:
        self.producer_topic = resolve(self, "producer_topic", producer_topic, env="PRODUCER_TOPIC")
        self.producer_servers = resolve(
            self,
            "producer_servers",
            producer_servers,
            env="PRODUCER_SERVERS",
            default=default_servers(),
        )
        self.client_id = resolve(
            self, "client_id", client_id, env="CLIENT_ID", default=socket.gethostname()
        )
        self.producer_conf = dict(resolve(self, "producer_conf", producer_conf, default={}))
        self._output_codec = get_codec(resolve(self, "output_codec", output_codec, default="auto"))
        self.producer = _producer_transport(
            self.producer_servers, self.client_id, self.producer_conf
        )

    def encode(self, data: Any) -> Any:
        if not self.auto_encode:
            return data
        if isinstance(data, bytes):
            return data
        out, content_type = self._output_codec.encode_tagged(data)
        delivery = current_delivery.get()
        if delivery is not None:
            delivery.content_type = content_type
        return out

    async def send(
        self,
        data: Any,
        topic: str | None = None,
        key: bytes | None = None,
        headers: Headers | None = None,
        callback: Callable[..., Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``data``; returns the future of its acknowledgement.

        Key and headers default to the current input's own, so every output carries its
        input's frame index and ``cam``/``frame``/``timestamp`` headers.
        """
        delivery = current_delivery.get()
        record = delivery.record if delivery is not None else None
        if key is None and record is not None:
            key = record.key
        if headers is None:
            headers = record.headers if record is not None else []
            content_type = delivery.content_type if delivery is not None else None
            if content_type is not None:
                # Our codec re-encoded the payload: its content type replaces the input's.
                headers = [(k, v) for k, v in headers if k != CONTENT_TYPE]
                headers.append((CONTENT_TYPE, content_type.encode()))
        topic = topic or self.producer_topic
        if topic is None:
            raise ValueError("no topic to send to: set producer_topic or PRODUCER_TOPIC")
        if self.producer is None:
            raise RuntimeError("this node has no producer")
        ack = await self.producer.send(topic, data, key, list(headers))
        if delivery is not None:
            delivery.track(ack)
        if self._senders:
            _count_sent(self, topic)
        if callback is not None:
            return asyncio.ensure_future(_call_after(ack, callback))
        return ack

    def _output_sender(self) -> Callable[[Any, Delivery], bool] | None:
        # What send() does for an output of the input being processed, without its coroutine
        # and future: the loop's path unless send is overridden (on the class or the
        # instance) or the transport cannot. Plugins see every output either way.
        if type(self).send is not _Output.send or "send" in vars(self):
            return None
        send_nowait = getattr(self.producer, "send_nowait", None)
        if send_nowait is None:
            return None

        def send_now(data: Any, delivery: Delivery) -> bool:
            topic = self.producer_topic
            if topic is None:
                raise ValueError("no topic to send to: set producer_topic or PRODUCER_TOPIC")
            record = delivery.record
            headers = record.headers
            content_type = delivery.content_type
            if content_type is not None:
                # Our codec re-encoded the payload: its content type replaces the input's.
                headers = [(k, v) for k, v in headers if k != CONTENT_TYPE]
                headers.append((CONTENT_TYPE, content_type.encode()))
            delivery.pending += 1
            try:
                sent = send_nowait(topic, data, record.key, headers, delivery.output_acked)
            except BaseException:
                delivery.pending -= 1
                raise
            if not sent:
                delivery.pending -= 1
                return False
            if self._senders:
                _count_sent(self, topic)
            return True

        return send_now


def _count_sent(node: _Output, topic: str) -> None:
    """Tell the node's plugins that one record for ``topic`` is in the producer's hands. The
    record has left: a plugin that fails here is logged, not taken for the input's failure
    (which would dead-letter an input whose output was sent), and the others still hear of it."""
    for plugin in node._senders:
        try:
            plugin.on_send(node, topic, 1)
        except Exception:
            logger.exception("plugin %r failed in on_send (the record was sent)", plugin)


def _value(record: Record) -> Any:
    return record.value


def _reads_header(codec: Codec) -> bool:
    """Whether ``codec`` is given each input's content-type header: only one without a fixed
    content type (auto) picks a format by it; one of a single format trusts its own check of
    the bytes (Codec.decode). A user's input-only codec may not set the attribute at all."""
    return getattr(codec, "content_type", None) is None


async def _call_after(ack: asyncio.Future[Any], callback: Callable[..., Any]) -> Any:
    result = callback(await ack)
    return (await result) if inspect.isawaitable(result) else result


class Producer(_Output, Runnable):
    """A node whose ``receive()`` you write (a camera, a file, a queue) and whose results go
    to ``producer_topic``. Return a :class:`~fogverse.Record` from ``receive`` to give an
    output its key and headers; raise ``StopAsyncIteration`` to end the stream."""

    def __init__(
        self,
        producer_topic: str | None = None,
        producer_servers: str | None = None,
        *,
        client_id: str | None = None,
        producer_conf: dict[str, Any] | None = None,
        output_codec: CodecName | Codec | None = None,
        loop: Any = None,
    ) -> None:
        self._setup_output(producer_topic, producer_servers, client_id, producer_conf, output_codec)


class Consumer(_Output, Runnable):
    """A node that reads ``consumer_topic`` as part of group ``group_id``.

    With a ``producer_topic`` its results go to Kafka; otherwise override ``send``.
    Each input's offset is committed only after everything sent for it was acknowledged.
    ``always_read_last=True`` is the live-video mode: skip the backlog and keep only the
    newest record of each partition (the skipped ones are committed as skipped).
    """

    always_read_last: bool = False
    max_poll_records: int = 500
    poll_timeout: float = 0.2
    dynamic_partitions: Plugin | None = None
    """A :class:`fogverse.partitions.ConsumerStart`: join by growing the topic's partitions
    under the master's lock; FOGVERSE_DYNAMIC_PARTITIONS=host:port switches it on (through
    the plugin that :mod:`fogverse.partitions` registers)."""

    def __init__(
        self,
        consumer_topic: str | list[str] | None = None,
        consumer_servers: str | None = None,
        group_id: str | None = None,
        *,
        producer_topic: str | None = None,
        producer_servers: str | None = None,
        client_id: str | None = None,
        consumer_conf: dict[str, Any] | None = None,
        producer_conf: dict[str, Any] | None = None,
        always_read_last: bool | None = None,
        input_codec: CodecName | Codec | None = None,
        output_codec: CodecName | Codec | None = None,
        dead_letter_topic: str | None = None,
        dynamic_partitions: Plugin | None = None,
        loop: Any = None,
    ) -> None:
        self.consumer_topic = split_topics(
            resolve(self, "consumer_topic", consumer_topic, env="CONSUMER_TOPIC")
        )
        if not self.consumer_topic:
            raise ValueError("a Consumer needs consumer_topic (or CONSUMER_TOPIC)")
        self.consumer_servers = resolve(
            self,
            "consumer_servers",
            consumer_servers,
            env="CONSUMER_SERVERS",
            default=default_servers(),
        )
        self.group_id = resolve(
            self, "group_id", group_id, env="GROUP_ID", default=type(self).__name__
        )
        self.consumer_conf = dict(resolve(self, "consumer_conf", consumer_conf, default={}))
        self.always_read_last = bool(
            resolve(self, "always_read_last", always_read_last, default=False)
        )
        if dead_letter_topic is not None:
            self.dead_letter_topic = dead_letter_topic
        self._input_codec = get_codec(resolve(self, "input_codec", input_codec, default="auto"))
        # Producer servers default to the consumer's cluster: outputs and dead letters go there.
        self._setup_output(
            producer_topic,
            producer_servers or self._servers_default(),
            client_id,
            producer_conf,
            output_codec,
        )
        self.consumer = _consumer_transport(
            self.consumer_servers,
            self.consumer_topic,
            self.group_id,
            self.client_id,
            self.consumer_conf,
        )
        self._buffer: deque[Record] = deque()
        if dynamic_partitions is not None:
            self.dynamic_partitions = dynamic_partitions

    def _attached_plugins(self) -> list[Plugin]:
        attached = super()._attached_plugins()
        if self.dynamic_partitions is not None:
            attached.append(self.dynamic_partitions)
        return attached

    def _servers_default(self) -> str | None:
        if getattr(self, "producer_servers", None):
            return None
        return self.consumer_servers

    async def receive(self) -> Record | None:
        if not self._buffer:
            await self._refill()
            if not self._buffer:
                return None
        return self._buffer.popleft()

    async def _refill(self) -> None:
        """Fetch the next batch of records into ``_buffer`` (nothing if none came in time)."""
        assert self.consumer is not None
        records = await self.consumer.getmany(self.poll_timeout, self.max_poll_records)
        if self.always_read_last and records:
            records = self._latest_only(records)
        self._buffer.extend(records)

    def _input_batches(self) -> tuple[deque[Record], Callable[[], Awaitable[None]]] | None:
        if type(self).receive is not Consumer.receive or "receive" in vars(self):
            return None  # the user's own receive() decides what an input is
        return self._buffer, self._refill

    def decode(self, data: Any) -> Any:
        if not self.auto_decode or not isinstance(data, bytes | bytearray | memoryview):
            return data
        codec = self._input_codec
        if not _reads_header(codec):
            return codec.decode(data)
        delivery = current_delivery.get()
        content_type = delivery.record.header(CONTENT_TYPE) if delivery is not None else None
        return codec.decode(data, content_type)

    def _input_decoder(self) -> Callable[[Record], Any]:
        if type(self).decode is not Consumer.decode or "decode" in vars(self):
            return super()._input_decoder()
        if not self.auto_decode:
            return _value
        codec = self._input_codec
        codec_decode, buffers = codec.decode, (bytes, bytearray, memoryview)
        if not _reads_header(codec):
            # No scan of every record's headers for a content type the codec ignores.
            def decode_as(record: Record) -> Any:
                value = record.value
                return codec_decode(value) if isinstance(value, buffers) else value

            return decode_as

        def decode(record: Record) -> Any:
            # decode() without looking the record up again through current_delivery.
            value = record.value
            if not isinstance(value, buffers):
                return value
            return codec_decode(value, record.header(CONTENT_TYPE))

        return decode

    def _latest_only(self, records: list[Record]) -> list[Record]:
        newest: dict[TopicPartition | None, Record] = {}
        for r in records:
            newest[r.tp] = r
        keep = {id(r) for r in newest.values()}
        for r in records:
            if id(r) not in keep and r.tp is not None and r.offset is not None:
                # Skipped on purpose: count it as finished so the watermark moves past it.
                self._tracker.done(self._tracker.begin(r.tp, r.offset))
        return [r for r in records if id(r) in keep]

    async def _on_assign(self, tps: set[TopicPartition]) -> None:
        if self.always_read_last and self.consumer is not None:
            await self.consumer.seek_to_end(tps)

    def _drop_buffered(self, tps: set[TopicPartition]) -> None:
        if self._buffer:
            # In place: the batch loop holds this deque.
            kept = [r for r in self._buffer if r.tp not in tps]
            self._buffer.clear()
            self._buffer.extend(kept)
