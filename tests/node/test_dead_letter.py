"""A dead letter refused for its size goes again without its payload, whether the transport
refuses it in ``send()`` or through its ack; any other failure of a dead letter stops the node
without committing past its input. In memory, with a producer that refuses with the errors
librdkafka gives (its own refusals and the broker's); the real-broker counterparts are in
tests/reliability/test_rel_hostile.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError
from polling import until

from fogverse import Consumer
from fogverse.node.loop import FatalDeliveryError
from fogverse.record import Headers
from fogverse.transport.confluent import KafkaDeliveryError
from fogverse.transport.memory import MemoryBroker, MemoryProducerTransport

ERR = "fogverse.error."
BIG = b"x" * 500


def _confluent(code: int) -> Callable[[], BaseException]:
    return lambda: KafkaDeliveryError(KafkaError(code, "refused"), "dlq")


# (what refuses the dead letter, raised by send() rather than failing its ack)
TOO_LARGE = {
    "librdkafka-or-broker": (_confluent(KafkaError.MSG_SIZE_TOO_LARGE), False),
    "broker-batch": (_confluent(KafkaError.RECORD_LIST_TOO_LARGE), False),
    # The confluent transport fails the ack of a record librdkafka refuses; a transport may
    # as well raise it from send(), and the node takes it the same way.
    "raised-by-send": (_confluent(KafkaError.MSG_SIZE_TOO_LARGE), True),
}
NOT_SIZE = {
    "unreachable": _confluent(KafkaError._TRANSPORT),
    "timeout": _confluent(KafkaError._MSG_TIMED_OUT),
}


class Refuse(Consumer):
    """Fails on every input larger than 100 bytes."""

    def process(self, data: Any) -> Any:
        if len(data) > 100:
            raise ValueError("refused: this input is too large")
        return data


class Picky(MemoryProducerTransport):
    """Refuses dead letters whose value is over ``limit`` bytes with ``refusal()``, in the ack
    (or raised from ``send`` with ``in_send``). With ``hold``, the ack of a dead letter it
    takes waits for :meth:`release`."""

    def __init__(
        self,
        broker: MemoryBroker,
        dlq: str,
        refusal: Callable[[], BaseException],
        *,
        in_send: bool = False,
        limit: int = 100,
        hold: bool = False,
    ) -> None:
        super().__init__(broker)
        self.dlq = dlq
        self.refusal = refusal
        self.in_send = in_send
        self.limit = limit
        self.hold = hold
        self.dead_letters: list[bytes] = []
        self.held: tuple[asyncio.Future[Any], Callable[[], Any]] | None = None

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        if topic != self.dlq:
            return await super().send(topic, value, key, headers)
        self.dead_letters.append(value or b"")
        if len(value or b"") > self.limit:
            if self.in_send:
                raise self.refusal()
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_exception(self.refusal())
            return fut
        if not self.hold:
            return await super().send(topic, value, key, headers)
        fut = asyncio.get_running_loop().create_future()
        self.held = (fut, lambda: self.broker.append(topic, value, key, headers))
        return fut

    def release(self) -> None:
        assert self.held is not None
        fut, append = self.held
        fut.set_result(append())


def _node(refusal: Callable[[], BaseException], **picky: Any) -> tuple[Refuse, Picky, str, str]:
    MemoryBroker.reset()
    servers = f"memory://{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.for_servers(servers)
    src, out, group = "src", "out", "g"
    for key, value in ((b"n0", b"ok"), (b"big", BIG), (b"n1", b"ok")):
        broker.append(src, value, key, [("cam", b"c1")])
    node = Refuse(src, servers, group, producer_topic=out)
    node.commit_interval = 0.01
    # An input that can be neither delivered nor dead-lettered must not make the node wait
    # this out when it stops: the fatal tests give the node 30 s in all.
    node.drain_timeout = 300.0
    producer = Picky(broker, f"{src}.dlq", refusal, **picky)
    node.producer = producer
    return node, producer, src, out


def _committed(node: Refuse) -> int:
    broker = MemoryBroker.for_servers(node.consumer_servers)
    return broker.groups[node.group_id].committed.get(("src", 0), 0)


@pytest.mark.parametrize("how", list(TOO_LARGE))
def test_a_dead_letter_too_large_goes_once_more_without_its_payload(how: str) -> None:
    refusal, in_send = TOO_LARGE[how]
    node, producer, src, out = _node(refusal, in_send=in_send, hold=True)
    broker = producer.broker

    async def main() -> None:
        task = asyncio.create_task(node.run())

        def resent() -> bool:
            return task.done() or (len(broker.records(out)) == 2 and producer.held is not None)

        try:
            await until(resent, 20, "the later input's output and the dead letter without payload")
            assert not task.done(), task.exception()
            # The input stays uncommitted until its replacement dead letter is acknowledged.
            await node._commit()
            assert _committed(node) == 1
            producer.release()
            await until(lambda: _committed(node) == 3 or task.done(), 20, "every input committed")
            assert not task.done(), task.exception()
        finally:
            node.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())
    assert producer.dead_letters == [BIG, b""]
    [dead] = broker.records(f"{src}.dlq")
    headers = dict(dead.headers)
    assert dead.key == b"big" and dead.value == b""
    assert headers[ERR + "payload"].startswith(b"dropped: ")
    assert headers[ERR + "stage"] == b"process" and headers[ERR + "type"] == b"ValueError"
    assert b"refused: this input is too large" in headers[ERR + "message"]
    assert headers[ERR + "offset"] == b"1" and headers["cam"] == b"c1"


@pytest.mark.parametrize("in_send", [False, True], ids=["in-ack", "raised-by-send"])
@pytest.mark.parametrize("how", list(NOT_SIZE))
def test_a_dead_letter_failing_for_another_reason_stops_the_node_uncommitted(
    how: str, in_send: bool
) -> None:
    node, producer, src, _ = _node(NOT_SIZE[how], in_send=in_send)

    with pytest.raises(FatalDeliveryError):
        asyncio.run(asyncio.wait_for(node.run(), 30))
    assert producer.dead_letters == [BIG], "sent again without its payload"
    assert producer.broker.records(f"{src}.dlq") == []
    assert _committed(node) <= 1


def test_a_dead_letter_refused_again_without_its_payload_stops_the_node() -> None:
    refusal, _ = TOO_LARGE["librdkafka-or-broker"]
    node, producer, src, _ = _node(refusal, limit=-1)

    with pytest.raises(FatalDeliveryError):
        asyncio.run(asyncio.wait_for(node.run(), 30))
    assert producer.dead_letters == [BIG, b""], "sent once without its payload, no more"
    assert producer.broker.records(f"{src}.dlq") == []
    assert _committed(node) <= 1
