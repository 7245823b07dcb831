"""The node loop handles a fetched batch at a time, but commits per input: an input whose
output the broker has not acknowledged holds back the commit of itself and of every later
input of its batch, however many of those were acknowledged. On the real broker, for the
serial loop and for a ParallelConsumer's batch path."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import cloudpickle
from backends import ForwardingProducer, committed_kafka, produce_kafka, read_kafka
from polling import until

from fogverse import Consumer, ParallelConsumer, Processor
from fogverse.transport.base import AckCallback, ProducerTransport

# Processors defined here travel to workers by value, as a user's script's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 20
WITHHELD = 7


class WithholdAck(ForwardingProducer):
    """The node's own producer transport, except that the acknowledgement of the record whose
    value is ``withheld`` never reaches the node (the record itself goes to Kafka)."""

    def __init__(self, inner: ProducerTransport, withheld: bytes) -> None:
        super().__init__(inner)
        self.withheld = withheld
        self.held: list[BaseException | None] = []
        self.forwarded = 0

    async def send(self, topic: str, value: Any, key: Any = None, headers: Any = None) -> Any:
        ack = await self.inner.send(topic, value, key, headers)
        if value != self.withheld:
            ack.add_done_callback(self._forwarded)
            return ack
        ack.add_done_callback(lambda fut: self.held.append(fut.exception()))
        return asyncio.get_running_loop().create_future()  # never resolved

    def _forwarded(self, _: Any) -> None:
        self.forwarded += 1

    def send_nowait(
        self, topic: str, value: Any, key: Any, headers: Any, on_ack: AckCallback
    ) -> bool:
        def forward(exc: BaseException | None) -> None:
            if value == self.withheld:
                self.held.append(exc)
                return
            self.forwarded += 1
            on_ack(exc)

        return self.inner.send_nowait(topic, value, key, headers, forward)


class Echo(Consumer):
    commit_interval = 0.05
    drain_timeout = 1.0  # the withheld ack never comes: stop without waiting long for it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    async def _refill(self) -> None:
        before = len(self._buffer)
        await super()._refill()
        if len(self._buffer) > before:
            self.batches.append(len(self._buffer) - before)


class Identity(Processor):
    def process(self, data: Any) -> Any:
        return data


class ParallelEcho(ParallelConsumer):
    commit_interval = 0.05
    drain_timeout = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.one_at_a_time = 0

    async def _refill(self) -> None:
        before = len(self._buffer)
        await super()._refill()
        if len(self._buffer) > before:
            self.batches.append(len(self._buffer) - before)

    async def _next(self) -> Any:
        self.one_at_a_time += 1  # the per-input path: this test is about the batch path
        return await super()._next()


def _run_withheld(kafka_bootstrap: str, new_topic: Any, parallel: bool) -> Any:
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(
        produce_kafka(kafka_bootstrap, src, [(None, f"m{i}".encode(), []) for i in range(N)])
    )
    kind = ParallelEcho if parallel else Echo
    node = kind(src, kafka_bootstrap, group, producer_topic=out, input_codec="bytes")
    withhold = WithholdAck(node.producer, f"m{WITHHELD}".encode())
    node.producer = withhold

    def committed() -> Any:
        return asyncio.to_thread(committed_kafka, kafka_bootstrap, group, src)

    async def scenario() -> None:
        if parallel:
            task = asyncio.create_task(node.run(2, 4, Identity()))
        else:
            task = asyncio.create_task(node.run())
        try:
            # Every output reached Kafka; every ack but the withheld one reached the node.
            await until(lambda: withhold.forwarded == N - 1 and withhold.held, 60, "the acks")
            assert withhold.held == [None]  # the broker acknowledged it: only the node waits
            got = await read_kafka(kafka_bootstrap, out, N)
            assert sorted(r.value for r in got) == sorted(f"m{i}".encode() for i in range(N))

            async def up_to_withheld() -> bool:
                return await committed() == WITHHELD

            await until(up_to_withheld, 60, "the inputs before the withheld one", interval=0.1)
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)
        # The stop drained (in vain for the withheld ack) and committed what it could.
        assert await committed() == WITHHELD

    asyncio.run(scenario())
    assert sum(node.batches) == N and len(node.batches) < N  # fetched in batches
    return node


def test_unacknowledged_output_holds_back_its_batch_commit(kafka_bootstrap, new_topic):
    _run_withheld(kafka_bootstrap, new_topic, parallel=False)


def test_parallel_unacknowledged_output_holds_back_its_batch_commit(kafka_bootstrap, new_topic):
    node = _run_withheld(kafka_bootstrap, new_topic, parallel=True)
    assert node.one_at_a_time == 0, "the inputs did not take the batch path"
