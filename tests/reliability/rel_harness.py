"""What the fault-injection tests share: numbered messages, a background reader of the
output that counts every id, node processes, and the scenario table row each test reports.

A row is printed and, when ``FOGVERSE_RELIABILITY_REPORT`` names a file, appended to it as
one JSON line: docs/reliability.md's table is built from those lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polling
import psutil

NODES = str(Path(__file__).with_name("rel_nodes.py"))
REPORT_ENV = "FOGVERSE_RELIABILITY_REPORT"

logger = logging.getLogger(__name__)


def payload(i: int) -> bytes:
    return f"m{i}".encode()


def message(i: int, partitions: int | None = None) -> tuple[bytes, bytes, list]:
    """``(key, value, headers)`` of message ``i``: its id in the payload and in a header."""
    key = None if partitions is None else str(i % partitions).encode()
    return key, payload(i), [("id", str(i).encode())]


def id_of(value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> int | None:
    for k, v in headers:
        if k == "id" and v is not None:
            return int(v)
    if value and value.startswith(b"m") and value[1:].isdigit():
        return int(value[1:])
    return None


@dataclass
class Tally:
    """Every id sent and every id seen on the output (and on the dead-letter topic)."""

    scenario: str
    sent: set[int] = field(default_factory=set)
    out: collections.Counter[int] = field(default_factory=collections.Counter)
    dead: collections.Counter[int] = field(default_factory=collections.Counter)
    notes: str = ""

    @property
    def lost(self) -> set[int]:
        return self.sent - set(self.out)

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.out.values() if c > 1)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "sent": len(self.sent),
            "received": sum(self.out.values()),
            "lost": len(self.lost),
            "duplicated": self.duplicates,
            "dead_lettered": sum(self.dead.values()),
            "notes": self.notes,
        }

    def report(self) -> dict[str, Any]:
        """Print the row (``-s`` shows it) and append it to the report file if one is set."""
        return report_row(self.row())

    def assert_nothing_lost(self) -> None:
        lost = sorted(self.lost)
        assert not lost, f"{self.scenario}: lost {len(lost)} messages, e.g. {lost[:10]}"


def report_row(row: dict[str, Any]) -> dict[str, Any]:
    """Print a scenario's row and append it to ``$FOGVERSE_RELIABILITY_REPORT`` if set."""
    print(
        f"\n[{row['scenario']}] sent {row['sent']}, received {row['received']}, "
        f"lost {row['lost']}, duplicated {row['duplicated']}, "
        f"dead-lettered {row['dead_lettered']}. {row['notes']}"
    )
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({**row, "time": time.time()}) + "\n")
    return row


class Reader:
    """Reads topics from their beginning in the background (no group, every partition,
    partitions added later included) and counts the id of every record into a Counter."""

    def __init__(self, bootstrap: str, targets: dict[str, collections.Counter[int]]) -> None:
        self.bootstrap = bootstrap
        self.targets = targets
        self.records = 0
        self.last_value: dict[str, bytes | None] = {}
        self.on_record: Callable[[str, Any], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=1000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _assign(self) -> None:
        from aiokafka import TopicPartition

        wanted = set()
        for topic in self.targets:
            for p in self._consumer.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        current = self._consumer.assignment()
        if wanted - current:
            self._consumer.assign(sorted(wanted | current))
            new = wanted - current
            await self._consumer.seek_to_beginning(*new)

    async def _run(self) -> None:
        last_assign = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - last_assign > 0.5:
                last_assign = loop.time()
                try:
                    with contextlib.suppress(Exception):
                        await self._consumer._client.force_metadata_update()
                    await self._assign()
                except Exception as exc:  # the broker is restarting: try again shortly
                    logger.debug("reader cannot assign yet: %s", exc)
            if not self._consumer.assignment():
                await asyncio.sleep(0.1)
                continue
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except Exception as exc:
                logger.debug("reader getmany failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            for tp, msgs in batch.items():
                counter = self.targets[tp.topic]
                for m in msgs:
                    self.records += 1
                    i = id_of(m.value, m.headers or ())
                    if i is not None:
                        counter[i] += 1
                    if self.on_record is not None:
                        self.on_record(tp.topic, m)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


# polling.until at the scenarios' pace: their conditions scan thousands of ids, a process
# tree or a topic, and looking every 0.1 s leaves the CPU to the nodes under test.
until = functools.partial(polling.until, interval=0.1)


SEND_DEADLINE = 120.0


class Feeder:
    """Sends numbered messages; an id counts as sent once the broker acknowledged it.

    Not idempotent and retrying on its own: it must outlive a broker restart, and a message
    whose acknowledgement was lost may be written twice (the tests count ids, not records).
    If aiokafka's sender task dies (the KeyError of aio-libs/aiokafka#907 during a broker
    crash), every later send fails at once: the feeder replaces the client and goes on.
    """

    def __init__(self, bootstrap: str, topic: str, tally: Tally, partitions: int = 1) -> None:
        """``partitions=0``: let the producer spread messages over whatever partitions the
        topic has (it may grow meanwhile)."""
        self.bootstrap, self.topic, self.tally, self.partitions = (
            bootstrap,
            topic,
            tally,
            partitions,
        )
        self.next_id = 0
        self.replaced = 0
        self._old: list[Any] = []

    async def _client(self) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            request_timeout_ms=10_000,
            retry_backoff_ms=200,
            metadata_max_age_ms=2000,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def __aenter__(self) -> Feeder:
        self._producer = await self._client()
        self._replacing: asyncio.Task[None] | None = None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._replacing is not None:
            with contextlib.suppress(Exception):
                await self._replacing
        for producer in (*self._old, self._producer):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 30)

    async def _replace(self) -> None:
        dead = self._producer
        logger.warning("feeder: aiokafka's sender died; replacing the client")
        self._producer = await self._client()
        self._old.append(dead)
        self.replaced += 1

    async def _live_producer(self) -> Any:
        """The client, replaced first if its sender task has died."""
        if self._producer._sender.sender_task.done():
            # One replacement for every sender waiting on the same dead client.
            if self._replacing is None or self._replacing.done():
                self._replacing = asyncio.create_task(self._replace())
            await asyncio.shield(self._replacing)
        return self._producer

    async def _send_one(self, i: int) -> None:
        key, value, headers = message(i, self.partitions or None)
        partition = i % self.partitions if self.partitions else None
        loop = asyncio.get_running_loop()
        # A broker restart on a loaded machine can take a while: a deadline, not a count.
        deadline = loop.time() + SEND_DEADLINE
        attempt = 0
        while loop.time() < deadline:
            attempt += 1
            try:
                producer = await self._live_producer()
                fut = await producer.send(
                    self.topic, value, key=key, headers=headers, partition=partition
                )
                # A dying sender never settles what it was sending: stop waiting at once.
                # Otherwise wait as long as it takes: aiokafka retries by itself, and sending
                # again meanwhile would only write the message twice.
                sender = producer._sender.sender_task
                await asyncio.wait(
                    {fut, sender},
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not fut.done():
                    raise TimeoutError("no acknowledgement (the sender died, or the deadline)")
                fut.result()
                self.tally.sent.add(i)
                return
            except Exception as exc:  # the broker is away: retry, as a camera would
                logger.debug("feeder: message %d attempt %d failed: %r", i, attempt, exc)
                await asyncio.sleep(0.5)
        raise AssertionError(f"feeder could not deliver message {i} in {SEND_DEADLINE:.0f} s")

    async def send(self, n: int, rate: float | None = None) -> None:
        """Send the next ``n`` ids, ``rate`` per second (``None``: as fast as acks allow)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: list[asyncio.Task[None]] = []
        for k in range(n):
            i = self.next_id
            self.next_id += 1
            if rate is not None:
                delay = start + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(asyncio.create_task(self._send_one(i)))
            if len(pending) >= 512:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


class Nodes:
    """Node processes started through the CLI, each with its stderr in a log file; every one
    of them (and its worker processes) is gone when :meth:`cleanup` returns."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self._family: set[int] = set()

    def start(self, target: str, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}-{len(self.procs)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fogverse", "run", f"{NODES}:{target}"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def remember_children(self, proc: subprocess.Popen[bytes]) -> list[int]:
        with contextlib.suppress(psutil.Error):
            kids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            self._family.update(kids)
            return kids
        return []

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> int:
        self.remember_children(proc)
        proc.send_signal(sig)
        return proc.wait(60)

    def cleanup(self) -> None:
        for proc in self.procs:
            self.remember_children(proc)
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        # Workers notice their parent is gone and exit; make sure of it.
        deadline = time.monotonic() + 20
        left = self._alive(self._family)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._alive(left)
        for pid in left:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        assert not left, f"worker processes outlived their node: {sorted(left)}"

    @staticmethod
    def _alive(pids: Iterable[int]) -> set[int]:
        out = set()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.add(pid)
        return out


def node_env(bootstrap: str, src: str, out: str, group: str, **extra: Any) -> dict[str, str]:
    """The environment of a node process reading ``src`` into ``out`` in ``group``."""
    return {
        "CONSUMER_TOPIC": src,
        "PRODUCER_TOPIC": out,
        "GROUP_ID": group,
        "CONSUMER_SERVERS": bootstrap,
        "PRODUCER_SERVERS": bootstrap,
        "FOGVERSE_BOOTSTRAP": bootstrap,
        **{k: str(v) for k, v in extra.items()},
    }


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


def group_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """``(committed, end)``: the group's committed offset (-1: none) and the end offset of
    every partition of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        return committed, ends
    finally:
        consumer.close()
