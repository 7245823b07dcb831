"""``Runnable.hold()``: a held input is not committed until its hold is released or failed,
and a node that stops (or loses the partition) with holds open leaves them for the next
reader. On the real broker and on the in-memory broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from backends import Backend, ForwardingProducer, produce_kafka
from polling import until

from fogverse import Consumer
from fogverse.node.delivery import Hold
from fogverse.transport.base import AckCallback

ERR = "fogverse.error."


class Joiner(Consumer):
    """Holds every input whose value starts with ``hold`` (when ``holding``) and sends
    nothing for it; ``release`` releases every open hold, ``fail`` fails them; the rest is
    echoed."""

    commit_interval = 0.05
    # A stop or a rebalance that waited for an open hold would outlast the test's timeout.
    drain_timeout = 600.0

    def __init__(self, *args: Any, holding: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = holding
        self.holds: list[Hold] = []
        self.seen: list[bytes] = []
        self.commits: list[dict[Any, int]] = []

    def process(self, data: bytes) -> bytes | None:
        self.seen.append(data)
        if self.holding and data.startswith(b"hold"):
            self.holds.append(self.hold())
            return None
        if data == b"release":
            for hold in self.holds:
                hold.release()
        elif data == b"fail":
            for hold in self.holds:
                hold.fail(ValueError("its partner never came"))
        return data

    async def _commit(self) -> None:
        offsets = self._tracker.committable()
        await super()._commit()
        if offsets:
            self.commits.append(offsets)


def _joiner(servers: str, src: str, out: str, group: str, **kwargs: Any) -> Joiner:
    return Joiner(src, servers, group, producer_topic=out, **kwargs)


async def _produce(backend: Backend, topic: str, values: list[bytes]) -> None:
    await backend.produce(topic, [(None, v, []) for v in values])


def test_a_held_input_is_committed_only_once_released(backend: Backend):
    src, out = backend.topic(), backend.topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[Joiner, list[Any]]:
        await _produce(backend, src, [b"a", b"hold-1", b"b", b"c"])
        node = _joiner(backend.servers, src, out, group)
        task = asyncio.create_task(node.run())
        try:
            # a, b and c are done and acknowledged; only the held input is in flight.
            await until(lambda: len(node.seen) == 4 and node._tracker.in_flight == 1, 60, "a-c")
            await until(lambda: node.commits, 30, "a commit")
            assert node._tracker.committable() == {}
            assert node.commits[-1] == {(src, 0): 1}, "the watermark stops at the held input"
            assert node.holds[0].open and node.holds[0].record.offset == 1
            await _produce(backend, src, [b"release"])
            await until(lambda: node.commits[-1] == {(src, 0): 5}, 60, "the commit past it")
            assert not node.holds[0].open
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return node, await backend.read(out, 4)

    node, got = asyncio.run(main())
    assert backend.committed(group, src) == 5
    assert node.seen == [b"a", b"hold-1", b"b", b"c", b"release"]
    assert [r.value for r in got] == [b"a", b"b", b"c", b"release"]


def test_a_node_stopped_with_an_open_hold_leaves_it_for_the_next_reader(backend: Backend):
    src, out = backend.topic(), backend.topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def run(holding: bool, expect: int) -> Joiner:
        node = _joiner(backend.servers, src, out, group, holding=holding)
        task = asyncio.create_task(node.run())
        try:
            await until(
                lambda: len(node.seen) == expect and node._tracker.in_flight == int(holding),
                60,
                f"{expect} inputs processed",
            )
        finally:
            node.stop()
            # Its drain_timeout is 600 s: a stop that waited for the hold would time out here.
            await asyncio.wait_for(task, 60)
        return node

    async def main() -> tuple[Joiner, int | None, Joiner]:
        await _produce(backend, src, [b"a", b"hold-1", b"b"])
        first = await run(True, 3)
        committed = backend.committed(group, src)
        second = await run(False, 2)
        return first, committed, second

    first, committed, second = asyncio.run(main())
    assert committed == 1, "committed up to the held input, not past it"
    assert not first.holds[0].open
    assert second.seen == [b"hold-1", b"b"], "the held input is read again"
    assert backend.committed(group, src) == 3


def test_a_failed_hold_dead_letters_its_input_then_commits(backend: Backend):
    src, out = backend.topic(), backend.topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main() -> list[Any]:
        await _produce(backend, src, [b"hold-0", b"fail"])
        node = _joiner(backend.servers, src, out, group)
        task = asyncio.create_task(node.run())
        try:
            await until(lambda: node.commits and node.commits[-1] == {(src, 0): 2}, 60, "commit")
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        return await backend.read(f"{src}.dlq", 1)

    dead = asyncio.run(main())
    assert [r.value for r in dead] == [b"hold-0"]
    headers = dict(dead[0].headers)
    assert headers[ERR + "stage"] == b"hold"
    assert headers[ERR + "type"] == b"ValueError"
    assert headers[ERR + "message"] == b"its partner never came"
    assert headers[ERR + "offset"] == b"0"
    assert backend.committed(group, src) == 2


def test_a_rebalance_does_not_wait_for_open_holds_and_the_input_is_read_again(
    kafka_bootstrap, new_topic
):
    src, out = new_topic(partitions=2), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main() -> Joiner:
        # Two held inputs (on one partition or both: the join revokes every partition).
        await produce_kafka(kafka_bootstrap, src, [(b"k0", b"hold-x", []), (b"k1", b"hold-y", [])])
        first = _joiner(kafka_bootstrap, src, out, group)
        tasks = [asyncio.create_task(first.run())]
        second = _joiner(kafka_bootstrap, src, out, group, holding=False)
        try:
            await until(lambda: len(first.holds) == 2, 60, "both inputs held")
            # The second member's join revokes the first's partitions: it must give up its
            # holds rather than wait 600 s for them, and whoever owns a partition next reads
            # its held input again.
            tasks.append(asyncio.create_task(second.run()))
            await until(
                lambda: {b"hold-x", b"hold-y"} <= {*first.seen[2:], *second.seen},
                90,
                "both held inputs read again after the rebalance",
            )
        finally:
            first.stop()
            second.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return first

    first = asyncio.run(main())
    assert not any(h.open for h in first.holds)


class HoldBackAck(ForwardingProducer):
    """The node's producer, except that the node hears of the ack of the output ``value``
    only once ``let_go()`` is called (the record itself goes to the broker at once)."""

    def __init__(self, inner: Any, value: bytes) -> None:
        super().__init__(inner)
        self.value = value
        self.withheld: list[Any] = []

    async def send(self, topic: str, value: Any, key: Any = None, headers: Any = None) -> Any:
        ack = await self.inner.send(topic, value, key, headers)
        if value != self.value:
            return ack
        late = asyncio.get_running_loop().create_future()
        self.withheld.append(lambda: ack.add_done_callback(lambda _: late.set_result(None)))
        return late

    def send_nowait(
        self, topic: str, value: Any, key: Any, headers: Any, on_ack: AckCallback
    ) -> bool:
        if value != self.value:
            return self.inner.send_nowait(topic, value, key, headers, on_ack)
        acked: list[BaseException | None] = []
        if not self.inner.send_nowait(topic, value, key, headers, acked.append):
            return False

        async def later() -> None:
            await until(lambda: bool(acked), 60, "the broker's ack")
            on_ack(acked[0])

        self.withheld.append(lambda: asyncio.ensure_future(later()))
        return True

    def let_go(self) -> None:
        forwards, self.withheld = self.withheld, []
        for forward in forwards:
            forward()


def test_a_held_input_released_by_its_partner_waits_for_the_pairs_ack(backend: Backend):
    # A join over two topics: the frame is held; its detections' process() sends the pair and
    # releases the frame. The pair is acknowledged against the detections only, yet it is the
    # frame's output too: committed before the ack, a crash would lose the frame, the pair
    # with it (the detections alone, read again, have nothing to pair with).
    frames, detections, out = backend.topic(), backend.topic(), backend.topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main() -> Joiner:
        node = Joiner([frames, detections], backend.servers, group, producer_topic=out)
        producer = HoldBackAck(node.producer, b"release")
        node.producer = producer
        task = asyncio.create_task(node.run())
        try:
            await _produce(backend, frames, [b"hold-frame"])
            await until(lambda: node.holds, 60, "the frame held")
            await _produce(backend, detections, [b"release", b"after"])

            # The pair went out, unacknowledged, and the next input was done after it.
            def after_done() -> bool:
                return node._tracker.pending_in([(detections, 0)]) == 1

            await until(lambda: node.seen[-1:] == [b"after"] and producer.withheld, 60, "pair")
            await until(after_done, 60, "the input after the pair done")
            committed = {tp for commit in node.commits for tp in commit}
            assert (frames, 0) not in committed | node._tracker.committable().keys(), (
                "the held frame became committable before its pair was acknowledged"
            )
            producer.let_go()
            await until(
                lambda: node.commits and node.commits[-1].get((frames, 0)) == 1,
                60,
                "the frame committed once the pair was acknowledged",
            )
        finally:
            producer.let_go()  # a stop waits for the ack (drain_timeout)
            node.stop()
            await asyncio.wait_for(task, 60)
        return node

    asyncio.run(main())
    assert backend.committed(group, frames) == 1
    assert backend.committed(group, detections) == 2


def test_hold_outside_an_input_is_an_error():
    node = Joiner("t", "memory://hold-misuse", "g")
    with pytest.raises(RuntimeError, match="call it from process"):
        node.hold()
