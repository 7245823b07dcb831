"""Heartbeat overhead: a pass-through node's throughput with an observer attached vs without.

Runs on the real broker (FOGVERSE_BOOTSTRAP, or a local one it starts), interleaving the two
variants (off, on, off, on, ...) so that drift on a shared machine hits both alike, and prints
the median throughput of each and their ratio. The target is >= 95 %.

    FOGVERSE_BOOTSTRAP=host:port .venv/bin/python benchmarks/heartbeat_overhead.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fogverse import Consumer
from fogverse.admin import admin_client
from fogverse.autoscale import Observer


class PassThrough(Consumer):
    """Forwards every message and stops after ``n``. Timed from message ``n/5`` on, so that
    start-up (group join, the observer's connection) stays out of the steady-state figure;
    both wall-clock and process CPU time are taken (the latter barely moves when other
    processes compete for the cores)."""

    def __init__(self, src: str, out: str, servers: str, n: int) -> None:
        super().__init__(
            src,
            servers,
            f"bench-{uuid.uuid4().hex[:8]}",
            producer_topic=out,
            input_codec="bytes",
            output_codec="bytes",
        )
        self.n = n
        self.first = n // 5
        self.count = 0
        self.t0 = self.t1 = self.c0 = self.c1 = 0.0

    def process(self, data: bytes) -> bytes:
        self.count += 1
        if self.count == self.first:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        elif self.count == self.n:
            self.t1, self.c1 = time.perf_counter(), time.process_time()
            self.stop()
        return data


async def _produce(servers: str, topic: str, n: int, size: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        payload = b"x" * size
        futures = [await producer.send(topic, payload) for _ in range(n)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _one_run(
    servers: str, src: str, out: str, control: str, n: int, heartbeats: bool
) -> tuple[float, float]:
    """(messages per wall-clock second, messages per CPU second)."""
    node = PassThrough(src, out, servers, n)
    if heartbeats:
        Observer(
            {"kafka_server": servers, "producer_topic": control, "heartbeat_interval": 1.0}
        ).attach(node)
    await node.run()
    timed = n - node.first
    return timed / (node.t1 - node.t0), timed / max(1e-9, node.c1 - node.c0)


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    servers = os.environ.get("FOGVERSE_BOOTSTRAP")
    if servers:
        yield servers
        return
    from fogverse.broker import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap


def _topics(servers: str, names: list[str], delete: bool = False) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(servers)
    if delete:
        futures = admin.delete_topics(names)
    else:
        futures = admin.create_topics([NewTopic(n, num_partitions=1) for n in names])
    for f in futures.values():
        with contextlib.suppress(Exception):
            f.result(30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with _broker() as servers:
        tag = uuid.uuid4().hex[:6]
        src, out, control = f"hb-src-{tag}", f"hb-out-{tag}", f"hb-ctl-{tag}"
        _topics(servers, [src, out, control])
        try:
            asyncio.run(_produce(servers, src, args.messages, args.size))
            rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for i in range(args.repeats * 2):
                heartbeats = bool(i % 2)
                wall, cpu = asyncio.run(
                    _one_run(servers, src, out, control, args.messages, heartbeats)
                )
                rates[heartbeats].append((wall, cpu))
                print(
                    f"run {i + 1:2d} heartbeats {'on ' if heartbeats else 'off'}: "
                    f"{wall:9.0f} msg/s wall-clock, {cpu:9.0f} msg/CPU-s",
                    flush=True,
                )
        finally:
            _topics(servers, [src, out, control], delete=True)
    result: dict[str, Any] = {}
    for k, label in ((0, "wall-clock"), (1, "CPU time")):
        off = statistics.median(r[k] for r in rates[False])
        on = statistics.median(r[k] for r in rates[True])
        result[label] = on / off
        print(
            f"{label:>10}: median {off:9.0f} without heartbeats, {on:9.0f} with: "
            f"ratio {on / off:.3f} ({'meets' if on / off >= 0.95 else 'misses'} 0.95)"
        )
    return result


if __name__ == "__main__":
    main()
