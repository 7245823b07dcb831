"""An input that fails in a node with nowhere to dead-letter it (no producer: a sink that
sends its results elsewhere) stops the node with :class:`FatalDeliveryError`, and the input
stays uncommitted, to be read again. Until this was fixed the serial loop committed past the
failed input (it was lost), and a ``ParallelConsumer`` with a full window hung for good: its
emitter died on the error, no slot was freed again, and ``stop()`` could not end it."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import cloudpickle
import pytest
from backends import Backend

from fogverse import Consumer, ParallelConsumer, Processor
from fogverse.node.loop import FatalDeliveryError

# Processors defined here travel to workers by value, as a user's script's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BAD = 7


class FailOnBad(Processor):
    def process(self, data: Any) -> Any:
        if data == str(BAD).encode():
            raise ValueError("this input cannot be processed")
        return data


class Sink(Consumer):
    """Results go to a list, not to Kafka: the node has no producer, so a failed input has
    nowhere to go as a dead letter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.producer = None
        self.got: list[bytes] = []
        self.failer = FailOnBad()

    def process(self, data: Any) -> Any:
        return self.failer.process(data)

    async def send(self, data: Any, *args: Any, **kwargs: Any) -> None:
        self.got.append(data)


class ParallelSink(ParallelConsumer):
    """``Sink`` with the processor in two workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.producer = None
        self.got: list[bytes] = []

    async def send(self, data: Any, *args: Any, **kwargs: Any) -> None:
        self.got.append(data)


# 200 inputs keep a parallel node's window (8) full when the bad one fails; 9 leave the
# failure last.
@pytest.mark.timeout(180)
@pytest.mark.parametrize("n", [9, 200])
@pytest.mark.parametrize("kind", ["Consumer", "ParallelConsumer"])
def test_an_input_with_nowhere_to_go_stops_the_node_and_stays_uncommitted(
    backend: Backend, kind: str, n: int
) -> None:
    src = backend.topic()
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main() -> Sink | ParallelSink:
        await backend.produce(src, [(b"k", str(i).encode(), []) for i in range(n)])
        node: Sink | ParallelSink
        if kind == "Consumer":
            node = Sink(src, backend.servers, group)
            run = node.run()
        else:
            node = ParallelSink(src, backend.servers, group)
            run = node.run(2, 8, FailOnBad())
        with pytest.raises(FatalDeliveryError, match=f"process failed for .*@{BAD}"):
            # Before the fix, the parallel node with a full window never returned.
            await asyncio.wait_for(run, 90)
        return node

    node = asyncio.run(main())
    assert [int(v) for v in node.got[:BAD]] == list(range(BAD)), "those before it went out"
    assert str(BAD).encode() not in node.got
    # Everything before the bad input is committed, and neither it nor anything after it.
    assert backend.committed(group, src) == BAD
