"""Dynamic partitioning: consumers that join grow their topic, so scaling out adds throughput.

    python examples/dynamic_partitions.py                    # local broker, about 25 s
    python examples/dynamic_partitions.py --bootstrap 127.0.0.1:9092 --join-every 10

One consumer starts (and creates the topic with one partition); a producer sends continuously;
then two more consumers join, one after the other, each through ``ConsumerStart`` exactly as in
the seed's README. One consumer cannot keep up with the producer (``--work-ms`` per message), so
a backlog builds until the second one joins and gets a partition of its own. Every second a line
shows the partition count, the backlog, and per consumer its partitions and messages per second.
At the end every produced message is checked off: the script exits 1 if one was lost.

The lock service runs inside this script here; in a deployment it is the auto-scaling Master's
DISTRIBUTED_LOCK_WORKER (or ``python -m fogverse.autoscale.lock.server``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from contextlib import ExitStack
from typing import Any

from confluent_kafka.admin import AdminClient

from fogverse import Consumer, Producer, Record
from fogverse.autoscale.lock import LockServer
from fogverse.partitions import ConsumerStart, refresh_metadata_often

# Short so that the demo moves quickly; the library's default is 5 s.
METADATA_MAX_AGE_MS = 2000


class Worker(Consumer):
    """A consumer that joins through ConsumerStart, as in the seed's "Dynamic Partition Usage"."""

    input_codec = "bytes"

    def __init__(
        self, name: str, topic: str, group: str, servers: str, start: ConsumerStart, work: float
    ):
        self.name = name
        self.work = work
        self.consumer_start = start
        self.counts: collections.Counter[bytes] = collections.Counter()
        self.read = 0
        self.joined = asyncio.Event()
        super().__init__(
            topic,
            servers,
            group,
            client_id=name,
            consumer_conf={"heartbeat_interval_ms": 500, "session_timeout_ms": 10_000},
        )

    async def start_consumer(self) -> None:
        await self.consumer_start.start_with_distributed_lock(
            self.consumer,
            self.consumer_topic,
            self.group_id,
            str(uuid.uuid4()),
        )
        self.joined.set()

    async def process(self, data: bytes) -> None:
        await asyncio.sleep(self.work)  # the per-message work that limits one consumer's rate
        self.counts[data] += 1
        self.read += 1
        return None

    def owned(self) -> list[int]:
        if not self.joined.is_set():
            return []
        return sorted(p for _, p in self.consumer.assignment())


class Source(Producer):
    """Sends ``m0, m1, ...`` at ``rate`` messages per second, without keys, until stopped."""

    def __init__(self, topic: str, servers: str, rate: float) -> None:
        self.interval = 1.0 / rate
        self.sent = 0
        self.acked: list[bytes] = []
        # Producers of a topic that consumers grow must refresh their metadata often too, or
        # they keep writing to the old partitions only.
        super().__init__(topic, servers, producer_conf=refresh_metadata_often({}, 2000))

    async def receive(self) -> Record:
        if self.stopping:
            raise StopAsyncIteration
        await asyncio.sleep(self.interval)
        value = f"m{self.sent}".encode()
        self.sent += 1
        return Record(value=value)

    async def send(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        ack = await super().send(data, *args, **kwargs)
        ack.add_done_callback(lambda f: f.exception() or self.acked.append(data))
        return ack


async def partition_count(admin: AdminClient, topic: str) -> int:
    meta = await asyncio.to_thread(admin.list_topics, topic, 10)
    info = meta.topics.get(topic)
    return 0 if info is None or info.error is not None else len(info.partitions)


async def monitor(admin: AdminClient, topic: str, source: Source, workers: list[Worker]) -> None:
    started = time.monotonic()
    last = {w.name: 0 for w in workers}
    while True:
        await asyncio.sleep(1.0)
        cells = []
        for w in workers:
            if w.joined.is_set():
                cells.append(f"{w.name} {w.owned()!s:<7} {w.read - last[w.name]:>4}/s")
            last[w.name] = w.read
        partitions = await partition_count(admin, topic)
        backlog = source.sent - sum(w.read for w in workers)
        print(
            f"t={time.monotonic() - started:5.1f}s  partitions {partitions}  "
            f"backlog {backlog:>5}  |  " + "  |  ".join(cells),
            flush=True,
        )


async def _unless_stopped(
    stopped: asyncio.Event, aw: Awaitable[Any], timeout: float | None
) -> bool:
    """Await ``aw`` (TimeoutError after ``timeout`` s); False at once if ``stopped`` is set."""
    waiting, halt = asyncio.ensure_future(aw), asyncio.create_task(stopped.wait())
    try:
        done, _ = await asyncio.wait(
            {waiting, halt}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
        halt.cancel()
    if waiting in done:
        return True
    if halt in done:
        return False
    raise TimeoutError(f"nothing happened in {timeout} s")


async def demo(
    bootstrap: str, join_every: float, run_after: float, rate: float, work_ms: float
) -> int:
    topic = f"dynamic-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-readers"
    # log_level 3: librdkafka's notices (e.g. "partition count changed") stay quiet.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    lock = LockServer("127.0.0.1", 0)
    await lock.start()
    print(f"topic {topic}, group {group}, lock service on 127.0.0.1:{lock.port}")

    def consumer_start() -> ConsumerStart:
        # One per consumer, as one per process in a deployment.
        return ConsumerStart(
            admin,
            sleep_time=3,
            master_host="127.0.0.1",
            master_port=lock.port,
            initial_total_partition=1,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )

    workers = [
        Worker(f"c{i}", topic, group, bootstrap, consumer_start(), work_ms / 1000)
        for i in (1, 2, 3)
    ]
    source = Source(topic, bootstrap, rate)
    tasks: dict[str, asyncio.Task[None]] = {}
    watcher: asyncio.Task[None] | None = None
    # Ctrl-C/SIGTERM stop every running node (FogVerse's handlers), c1 among them: then the
    # demo ends at once instead of starting the next consumers and growing the topic.
    stopped = asyncio.Event()
    running = False
    try:
        tasks["c1"] = asyncio.create_task(workers[0].run())
        tasks["c1"].add_done_callback(lambda _: stopped.set())
        # c1 creates the topic.
        running = await _unless_stopped(stopped, workers[0].joined.wait(), 60)
        if running:
            tasks["source"] = asyncio.create_task(source.run())
            watcher = asyncio.create_task(monitor(admin, topic, source, workers))
        for worker in workers[1:]:
            running = running and await _unless_stopped(stopped, asyncio.sleep(join_every), None)
            if not running:
                break
            print(f"--- {worker.name} joins")
            tasks[worker.name] = asyncio.create_task(worker.run())
            running = await _unless_stopped(stopped, worker.joined.wait(), 120)
        running = running and await _unless_stopped(stopped, asyncio.sleep(run_after), None)
        source.stop()
        if "source" in tasks:
            await asyncio.wait_for(tasks["source"], 60)
        if running:
            print("--- producer stopped; draining the backlog")
            wanted = set(source.acked)
            for _ in range(600):  # at most a minute
                if wanted <= {v for w in workers for v in w.counts}:
                    break
                running = await _unless_stopped(stopped, asyncio.sleep(0.1), None)
                if not running:
                    break
        if not running:
            print("--- interrupted")
    finally:
        if watcher is not None:
            watcher.cancel()
        for worker in workers:
            worker.stop()
        source.stop()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await lock.stop()
        for future in admin.delete_topics([topic], operation_timeout=10).values():
            try:
                await asyncio.to_thread(future.result, 15)
            except Exception as exc:  # best effort: the result does not depend on it
                logging.warning("could not delete %s: %s", topic, exc)

    received = collections.Counter[bytes]()
    for w in workers:
        received.update(w.counts)
    lost = len(set(source.acked) - set(received))
    duplicates = sum(c - 1 for c in received.values())
    print(
        f"\nsent {len(source.acked)}, received {sum(received.values())} "
        f"({', '.join(f'{w.name} {w.read}' for w in workers)}), "
        f"{'lost' if running else 'left unread (interrupted)'} {lost}, duplicates {duplicates}"
    )
    return 1 if lost and running else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        help="Kafka host:port (default: FOGVERSE_BOOTSTRAP, or a local broker started for the run)",
    )
    parser.add_argument(
        "--join-every",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="pause before each further consumer joins (default 6)",
    )
    parser.add_argument(
        "--run-after",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="keep producing this long after the last join (default 6)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s (default 200)")
    parser.add_argument(
        "--work-ms",
        type=float,
        default=8.0,
        help="work per message in a consumer (default 8: ~120 messages/s each)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Members warn of every rebalance; here rebalances are the point.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with ExitStack() as stack:
        bootstrap = args.bootstrap or os.environ.get("FOGVERSE_BOOTSTRAP")
        if bootstrap and bootstrap.startswith("memory://"):
            parser.error("dynamic partitioning needs a real Kafka cluster")
        if not bootstrap:
            from fogverse.broker import LocalKafka

            print("starting a local Kafka broker (pass --bootstrap to use your own)")
            bootstrap = stack.enter_context(LocalKafka()).bootstrap
        return asyncio.run(
            demo(bootstrap, args.join_every, args.run_after, args.rate, args.work_ms)
        )


if __name__ == "__main__":
    raise SystemExit(main())
