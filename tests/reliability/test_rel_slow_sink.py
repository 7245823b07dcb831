"""A slow sink: the nodes' outputs go to a second broker that is frozen most of the time.

With a large backlog in the input topic, a node that keeps fetching while its producer is
blocked would fill its memory with the backlog. Backpressure stops the fetching instead:
each node's memory (workers included) stays flat while the sink crawls, and once the sink
is fast again every message arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import threading
import uuid
from collections.abc import Iterator

import pytest
from polling import wait_until
from rel_harness import Nodes, Reader, Tally, message, node_env, tree_rss, until

from fogverse.broker import LocalKafka

MIB = 2**20
FRAME = 16 * 1024


@pytest.fixture(scope="module")
def sink_kafka() -> Iterator[LocalKafka]:
    """A second broker for the outputs, so that it can be throttled alone."""
    if os.environ.get("FOGVERSE_BOOTSTRAP"):
        pytest.skip("needs a second local broker; FOGVERSE_BOOTSTRAP names an external one")
    broker = LocalKafka()
    broker.start()
    try:
        yield broker
    finally:
        if broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)  # never leave it frozen for stop()
        broker.stop()


async def _produce_backlog(bootstrap: str, topic: str, n: int, tally: Tally) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        pad = b"\0" * FRAME
        futs = []
        for i in range(n):
            key, value, headers = message(i)
            futs.append(await producer.send(topic, value + b":" + pad, key=key, headers=headers))
        await asyncio.gather(*futs)
        tally.sent.update(range(n))
    finally:
        await producer.stop()


def _create_topics(bootstrap: str, names: list[str]) -> None:
    """Create ``names`` on the sink broker and wait until each has a leader (a topic the
    producer auto-creates could still be electing one when the nodes start)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, num_partitions=1) for n in names]).values():
        future.result(timeout=30)

    def led() -> bool:
        topics = admin.list_topics(timeout=5).topics
        return all(n in topics and topics[n].partitions[0].leader >= 0 for n in names)

    wait_until(led, 30, f"{names} to have a leader on the sink broker", interval=0.1)


@contextlib.contextmanager
def _throttle(pid: int, stopped: float, running: float) -> Iterator[None]:
    """Freeze the broker ``stopped`` seconds out of every ``stopped + running``, on a thread
    of its own: the test's event loop also parses every record the reader gets, and a sleep
    on it could let the broker run for as long as that takes."""
    done = threading.Event()

    def cycle() -> None:
        try:
            while not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                done.wait(stopped)
                os.kill(pid, signal.SIGCONT)
                done.wait(running)
        finally:
            os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=cycle, name="throttle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)


def test_backpressure_holds_memory_flat_while_the_sink_crawls(
    kafka_bootstrap, new_topic, sink_kafka, tmp_path
):
    n = 3000  # 3000 x 16 KB = 48 MB of backlog
    src = new_topic(partitions=2)
    sink = sink_kafka.bootstrap
    out = {"Echo": f"out-{uuid.uuid4().hex[:8]}", "ParallelEcho": f"out-{uuid.uuid4().hex[:8]}"}
    tallies = {
        name: Tally(f"slow sink (output broker frozen 98% of the time): {kind}")
        for name, kind in (("Echo", "Consumer"), ("ParallelEcho", "ParallelConsumer"))
    }
    nodes = Nodes(tmp_path)
    samples: dict[str, list[tuple[int, int]]] = {name: [] for name in out}
    progress: dict[str, int] = {}

    async def scenario() -> None:
        _create_topics(sink, list(out.values()))
        await _produce_backlog(kafka_bootstrap, src, n, tallies["Echo"])
        tallies["ParallelEcho"].sent = set(tallies["Echo"].sent)
        targets = {out[name]: tallies[name].out for name in out}
        async with Reader(sink, targets):
            procs = {}
            # Throttled before the nodes start: on a fast sink, librdkafka drains this whole
            # backlog in about a second, before the slower node has even joined its group.
            with _throttle(sink_kafka.pid, 0.5, 0.01):
                for name in out:
                    env = node_env(kafka_bootstrap, src, out[name], f"g-{uuid.uuid4().hex[:6]}")
                    env.update(PRODUCER_SERVERS=sink, ECHO_DELAY="0")
                    procs[name] = nodes.start(name, env, name)
                await until(
                    lambda: all(t.out for t in tallies.values()),
                    120,
                    "both nodes' first outputs through the throttled sink",
                )
                await asyncio.sleep(3)  # let the nodes fill whatever buffers they have
                for _ in range(48):
                    await asyncio.sleep(0.25)
                    for name, proc in procs.items():
                        assert proc.poll() is None, nodes.log(proc)
                        samples[name].append((len(tallies[name].out), tree_rss(proc.pid)))
                progress.update({name: len(t.out) for name, t in tallies.items()})
            await until(
                lambda: all(t.sent <= t.out.keys() for t in tallies.values()),
                90,
                "every message once the sink is fast again",
            )
            for proc in procs.values():
                assert nodes.kill(proc, signal.SIGTERM) == 0, nodes.log(proc)

    try:
        asyncio.run(scenario())
    finally:
        nodes.cleanup()
    for name, tally in tallies.items():
        rss = [r for _, r in samples[name]]
        first, last = rss[: len(rss) // 3], rss[-len(rss) // 3 :]
        growth = statistics.median(last) - statistics.median(first)
        tally.notes = (
            f"{progress[name]} of {n} x 16 KB through while throttled; memory "
            f"{min(rss) / MIB:.0f}-{max(rss) / MIB:.0f} MiB, median growth "
            f"{growth / MIB:+.1f} MiB"
        )
        tally.report()
        tally.assert_nothing_lost()
        # The sink really was the bottleneck: most of the backlog was still in Kafka...
        assert progress[name] < 0.8 * n, f"{name}: the throttle did not hold the node back"
        # ...and not in the node: memory stayed flat while it waited.
        assert growth < 24 * MIB, f"{name}: memory grew by {growth / MIB:.0f} MiB"
        assert max(rss) - min(rss) < 64 * MIB, f"{name}: memory swung by {max(rss) - min(rss)}"
