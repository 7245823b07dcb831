"""The node's extension point: a plugin's hooks run at the node's lifecycle points, and the
add-ons' plugins are found through the ``fogverse.plugins`` entry points."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from polling import until

from fogverse import Consumer, MemoryBroker, ParallelConsumer, Processor
from fogverse.plugins import ENTRY_POINT_GROUP, Plugin, discover


def _broker(n: int) -> tuple[str, MemoryBroker]:
    MemoryBroker.reset()
    servers = f"memory://{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.for_servers(servers)
    for topic in ("in", "out", "side"):
        broker.create_topic(topic)
    for i in range(n):
        broker.append("in", f"m{i}".encode(), None, [])
    return servers, broker


class Journal(Plugin):
    """Writes each hook down in ``events`` (shared with the node's own steps) and counts
    what the node sent."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.events = [] if events is None else events
        self.sent: dict[str, int] = {}

    async def on_start(self, node: Any) -> None:
        self.events.append("plugin: start")

    async def start_consumer(self, node: Any) -> bool:
        self.events.append("plugin: join?")
        return False

    def on_send(self, node: Any, topic: str, count: int) -> None:
        self.sent[topic] = self.sent.get(topic, 0) + count

    async def on_stop(self, node: Any) -> None:
        self.events.append("plugin: stop")


class FanOut(Consumer):
    """Sends each input on, and every third one also to ``side`` by a call of its own; writes
    its start and close steps down in ``events``."""

    events: list[str]

    async def process(self, data: bytes) -> bytes:
        if int(data[1:]) % 3 == 0:
            await self.send(b"extra", topic="side")
        return data

    async def start_producer(self) -> None:
        self.events.append("start_producer")
        await super().start_producer()

    async def start_consumer(self) -> None:
        self.events.append("start_consumer")
        await super().start_consumer()

    async def close_consumer(self) -> None:
        self.events.append("close_consumer")
        await super().close_consumer()

    async def close_producer(self) -> None:
        self.events.append("close_producer")
        await super().close_producer()


def test_hooks_run_at_the_lifecycle_points_and_count_every_record_sent() -> None:
    servers, broker = _broker(30)
    events: list[str] = []
    journal = Journal(events)

    async def scenario() -> None:
        node = FanOut("in", servers, "g", producer_topic="out")
        node.events = events
        node.plugins.append(journal)
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 30, 5, "30 outputs")
        node.stop()
        await task

    asyncio.run(scenario())
    assert events == [
        "plugin: start",
        "start_producer",
        "start_consumer",
        "plugin: join?",
        "close_consumer",
        "plugin: stop",
        "close_producer",
    ]
    assert journal.sent == {"out": 30, "side": 10}


class Joiner(Plugin):
    """Starts the node's consumer itself, as dynamic partitions do."""

    def __init__(self) -> None:
        self.joined = 0

    async def start_consumer(self, node: Any) -> bool:
        self.joined += 1
        await node.consumer.start()
        return True


def test_the_first_plugin_that_joins_starts_the_consumer_and_a_seed_override_still_gets_it() -> (
    None
):
    servers, broker = _broker(5)
    first, second = Joiner(), Joiner()
    overridden: list[str] = []

    class SeedStyle(Consumer):
        async def start_consumer(self) -> None:
            overridden.append("before")
            await super().start_consumer()
            overridden.append("after")

    async def scenario() -> None:
        node = SeedStyle("in", servers, "g", producer_topic="out")
        node.plugins.extend([first, second])
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 5, 5, "5 outputs")
        node.stop()
        await task

    asyncio.run(scenario())
    assert (first.joined, second.joined) == (1, 0)
    assert overridden == ["before", "after"]


def test_a_plugin_failing_on_stop_is_logged_and_the_node_still_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers, broker = _broker(3)

    class Broken(Plugin):
        async def on_stop(self, node: Any) -> None:
            raise RuntimeError("plugin bug")

    events: list[str] = []

    async def scenario() -> None:
        node = FanOut("in", servers, "g", producer_topic="out")
        node.events = events
        node.plugins.append(Broken())
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 3, 5, "3 outputs")
        node.stop()
        await task

    with caplog.at_level(logging.ERROR, logger="fogverse.node.loop"):
        asyncio.run(scenario())
    assert events[-1] == "close_producer", "the producer was closed after the failing plugin"
    assert "plugin bug" in caplog.text


def test_the_parallel_nodes_call_the_hooks_too() -> None:
    servers, broker = _broker(12)
    journal = Journal()

    class Same(Processor):
        def process(self, data: Any) -> Any:
            return data

    async def scenario() -> None:
        node = ParallelConsumer("in", servers, "g", producer_topic="out")
        node.plugins.append(journal)
        task = asyncio.create_task(node.run(process_number=1, processor=Same()))
        await until(lambda: len(broker.records("out")) == 12, 30, "12 outputs")
        node.stop()
        await task

    asyncio.run(scenario())
    assert journal.events == ["plugin: start", "plugin: join?", "plugin: stop"]
    assert journal.sent == {"out": 12}


def test_discovered_factories_see_the_node_and_each_plugin_is_kept_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fogverse.plugins as plugins

    attached = Journal()
    made = Journal()
    seen: list[Any] = []

    def factory(node: Any) -> Plugin | None:
        seen.append(node)
        return made

    monkeypatch.setattr(plugins, "_factories", lambda: (factory, lambda node: None, factory))
    node = Consumer("in", "memory://x", "g")
    assert discover(node, [attached, attached]) == [attached, made]
    assert seen == [node, node]


def test_the_add_ons_register_their_factories() -> None:
    from importlib.metadata import entry_points

    import fogverse.autoscale.observer
    import fogverse.partitions

    found = {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert found["heartbeats"] is fogverse.autoscale.observer.node_plugin
    assert found["dynamic_partitions"] is fogverse.partitions.node_plugin


class _SendsItself(Consumer):
    # send() overridden: outputs take the node's awaited send path, not the loop's fast one.
    async def send(self, data: Any, topic: Any = None, *args: Any, **kwargs: Any) -> Any:
        return await super().send(data, topic, *args, **kwargs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("node_class", [Consumer, _SendsItself])
def test_a_plugin_failing_on_send_neither_dead_letters_a_sent_input_nor_starves_the_next_plugin(
    node_class: type[Consumer], caplog: pytest.LogCaptureFixture
) -> None:
    servers, broker = _broker(5)

    class Broken(Plugin):
        def on_send(self, node: Any, topic: str, count: int) -> None:
            raise RuntimeError("plugin bug")

    class Counts(Plugin):
        sent = 0

        def on_send(self, node: Any, topic: str, count: int) -> None:
            self.sent += count

    counts = Counts()

    async def scenario() -> None:
        node = node_class("in", servers, "g", producer_topic="out")
        node.plugins.extend([Broken(), counts])
        task = asyncio.create_task(node.run())
        await until(lambda: len(broker.records("out")) == 5, 5, "5 outputs")
        # Its inputs are committed once their outputs are acknowledged: all five handled.
        await until(lambda: counts.sent == 5 or task.done(), 5, "5 outputs counted")
        node.stop()
        await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "plugin bug" in caplog.text, "the plugin's failure was not logged"
    assert broker.records("in.dlq") == [], "inputs whose outputs were sent were dead-lettered"
    assert counts.sent == 5, "the plugin after the failing one missed outputs"
