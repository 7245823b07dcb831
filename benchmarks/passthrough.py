"""Messages per second of a pass-through Consumer node against a plain confluent-kafka loop.

One topic is filled with N messages (1 KB by default), then repetitions of three variants run
interleaved (the machine may be shared: read the medians and the ratios), each on a fresh
output topic and consumer group, reading the source from its start:

(a) a plain confluent-kafka loop doing the same at-least-once work: consume a batch of 500,
    produce each record (acks=all, idempotent), flush, then commit the batch's offsets;
(b) a FogVerse ``Consumer`` node on the aiokafka transport (the default);
(c) the same node on the confluent-kafka transport (``fogverse.transport.confluent``);
(d) optional (``--variants ...,bare``): the confluent transports driven by a minimal asyncio
    at-least-once loop without a node, i.e. the transport's own ceiling.

Throughput is counted from the first record consumed until the last output is acknowledged
(the output topic's high watermarks reach N); "CPU µs/msg" is this process's CPU time (all
threads) over the same interval divided by N. ``--profile`` adds one run of (c) under cProfile
(event-loop thread only) and prints where FogVerse's own code spends it.

A local Kafka broker is started unless FOGVERSE_BOOTSTRAP names one.

    .venv/bin/python benchmarks/passthrough.py [--messages 50000] [--reps 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import os
import platform
import pstats
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka import Producer as RawProducer
from confluent_kafka.admin import AdminClient, NewTopic

from fogverse import Consumer
from fogverse.broker import LocalKafka
from fogverse.transport.confluent import ConfluentConsumerTransport, ConfluentProducerTransport

VARIANTS = {
    "loop": "(a) confluent-kafka loop",
    "aiokafka": "(b) Consumer node, aiokafka",
    "confluent": "(c) Consumer node, confluent",
    "bare": "(d) confluent transports, no node",
}
BATCH = 500


# ---- topics -------------------------------------------------------------------------------


def create_topic(admin: AdminClient, partitions: int) -> str:
    """A fresh topic whose partitions all have a leader (clients can use it at once)."""
    name = f"pt-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = admin.list_topics(name, timeout=10).topics.get(name)
        if (
            info is not None
            and info.error is None
            and len(info.partitions) == partitions
            and all(p.leader >= 0 for p in info.partitions.values())
        ):
            return name
        time.sleep(0.05)
    raise RuntimeError(f"topic {name} has no leader")


def fill(bootstrap: str, topic: str, n: int, size: int, headers: bool) -> None:
    p = RawProducer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    payload = os.urandom(size)
    for i in range(n):
        h = [("cam", b"cam-1"), ("frame", str(i).encode()), ("ts", b"1.0")] if headers else None
        while True:
            try:
                p.produce(topic, payload, str(i).encode(), headers=h)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("could not fill the source topic")


class Watermarks:
    """Sum of an output topic's high watermarks, polled every few milliseconds in a thread."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, target: int) -> None:
        self.client = RawConsumer({"bootstrap.servers": bootstrap, "group.id": "pt-watch"})
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.target = target
        self.reached: float | None = None
        self.done = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pt-watermarks", daemon=True)

    def _total(self) -> int:
        return sum(self.client.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)

    def _total_or_zero(self) -> int:
        try:
            return self._total()
        except KafkaException:  # a metadata refresh in progress: ask again
            return 0

    def _run(self) -> None:
        while not self.stopped.is_set():
            if self._total_or_zero() >= self.target:
                self.reached = time.perf_counter()
                self.done.set()
                return
            time.sleep(0.005)

    def __enter__(self) -> Watermarks:
        deadline = time.monotonic() + 30
        while True:  # connect and learn the partitions before the clock starts
            try:
                self._total()
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.client.close()


# ---- (a) the plain loop -------------------------------------------------------------------


def plain_loop(bootstrap: str, src: str, out: str, n: int) -> tuple[float, float]:
    c = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"pt-loop-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    p = RawProducer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    c.subscribe([src])
    done = 0
    t0 = cpu0 = 0.0
    offsets: dict[tuple[str, int], int] = {}
    while done < n:
        msgs = c.consume(BATCH, 0.5)
        if not msgs:
            continue
        if not done:
            t0, cpu0 = time.perf_counter(), time.process_time()
        for m in msgs:
            if m.error():
                raise RuntimeError(m.error())
            while True:
                try:
                    p.produce(out, m.value(), m.key(), headers=m.headers())
                    break
                except BufferError:
                    p.poll(0.05)
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        p.poll(0)
        done += len(msgs)
        # At-least-once: the batch's offsets are committed only once its outputs are acked.
        if p.flush(30):
            raise RuntimeError("outputs not acknowledged")
        c.commit(
            offsets=[TopicPartition(t, q, o) for (t, q), o in offsets.items()], asynchronous=True
        )
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.commit(offsets=[TopicPartition(t, q, o) for (t, q), o in offsets.items()], asynchronous=False)
    c.close()
    p.close()
    return n / elapsed, cpu / n * 1e6


# ---- (b), (c) the node --------------------------------------------------------------------


def make_node(client: str, bootstrap: str, src: str, out: str) -> Consumer:
    group = f"pt-{client}-{uuid.uuid4().hex[:8]}"
    # ``kafka_client`` is the node setting that selects the transport; where nodes.py does not
    # know it yet, the transports are swapped in by hand (same effect).
    cls = type("PassThrough", (Consumer,), {"kafka_client": client})
    node = cls(src, bootstrap, group, producer_topic=out)
    want = ConfluentConsumerTransport if client == "confluent" else None
    if want is not None and not isinstance(node.consumer, want):
        node.consumer = ConfluentConsumerTransport([src], bootstrap, group)
        node.producer = ConfluentProducerTransport(bootstrap)
    if client == "aiokafka" and isinstance(node.consumer, ConfluentConsumerTransport):
        raise RuntimeError("FOGVERSE_KAFKA_CLIENT forced the confluent transport")
    return node


async def run_node(
    client: str, bootstrap: str, src: str, out: str, partitions: int, n: int
) -> tuple[float, float]:
    node = make_node(client, bootstrap, src, out)
    assert node.consumer is not None
    start: list[float] = []
    getmany = node.consumer.getmany

    async def first_records(timeout: float, max_records: int) -> Any:
        records = await getmany(timeout, max_records)
        if records and not start:
            start.extend((time.perf_counter(), time.process_time()))
        return records

    node.consumer.getmany = first_records  # type: ignore[method-assign]
    with Watermarks(bootstrap, out, partitions, n) as marks:
        task = asyncio.create_task(node.run())
        try:
            while not marks.done.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("the node stopped early")
                await asyncio.sleep(0.02)
        finally:
            cpu1 = time.process_time()
            node.stop()
            await task
    assert marks.reached is not None
    t0, cpu0 = start
    return n / (marks.reached - t0), (cpu1 - cpu0) / n * 1e6


async def run_bare(bootstrap: str, src: str, out: str, n: int) -> tuple[float, float]:
    """The transports alone: receive, send, and commit each batch once all its acks are in."""
    c = ConfluentConsumerTransport([src], bootstrap, f"pt-bare-{uuid.uuid4().hex[:8]}")
    p = ConfluentProducerTransport(bootstrap)
    await p.start()
    await c.start()
    batches: list[list[Any]] = []  # [outputs not yet acked, offsets to commit]
    acked = 0
    all_acked = asyncio.Event()

    def on_ack(batch: list[Any], fut: asyncio.Future[Any]) -> None:
        nonlocal acked
        fut.result()
        batch[0] -= 1
        acked += 1
        if acked >= n:
            all_acked.set()

    async def committer() -> None:
        while True:
            await asyncio.sleep(0.5)
            done: dict[tuple[str, int], int] = {}
            while batches and batches[0][0] == 0:
                done.update(batches.pop(0)[1])
            await c.commit(done)

    commit_task = asyncio.create_task(committer())
    got = 0
    t0 = cpu0 = 0.0
    try:
        while got < n:
            records = await c.getmany(0.2, BATCH)
            if not records:
                continue
            if not got:
                t0, cpu0 = time.perf_counter(), time.process_time()
            batch: list[Any] = [len(records), {}]
            batches.append(batch)
            cb = functools.partial(on_ack, batch)
            for r in records:
                (await p.send(out, r.value, r.key, r.headers)).add_done_callback(cb)
                batch[1][(r.topic, r.partition)] = r.offset + 1
            got += len(records)
        await all_acked.wait()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        commit_task.cancel()
        await c.stop()
        await p.stop()
    return n / elapsed, cpu / n * 1e6


def in_loop(coro_fn: Callable[[], Any]) -> Any:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


# ---- driver -------------------------------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("FOGVERSE_BOOTSTRAP")
    if external:
        yield external
        return
    with LocalKafka() as kafka:
        yield kafka.bootstrap


def run_one(variant: str, bootstrap: str, admin: AdminClient, src: str, args: Any) -> Any:
    out = create_topic(admin, args.partitions)
    try:
        if variant == "loop":
            return plain_loop(bootstrap, src, out, args.messages)
        if variant == "bare":
            return in_loop(lambda: run_bare(bootstrap, src, out, args.messages))
        return in_loop(
            lambda: run_node(variant, bootstrap, src, out, args.partitions, args.messages)
        )
    finally:
        admin.delete_topics([out])


def profile_node(bootstrap: str, admin: AdminClient, src: str, args: Any) -> None:
    prof = cProfile.Profile()
    prof.enable()
    rate, _ = run_one("confluent", bootstrap, admin, src, args)
    prof.disable()
    n = args.messages
    # Only what runs once per message or more: a suspended coroutine's idle time can be
    # charged to it by cProfile, which makes once-per-run coroutines look expensive.
    rows = sorted(
        (
            (tottime, ncalls, f"{_short(path)}:{line}({name})")
            for (path, line, name), (_, ncalls, tottime, _c, _) in pstats.Stats(prof).stats.items()  # type: ignore[attr-defined]
            if ncalls >= n // 2
        ),
        reverse=True,
    )
    per_msg = sum(t for t, _, _ in rows)
    print(f"\ncProfile of (c), event-loop thread only ({rate:,.0f} msg/s under the profiler)")
    print("functions called at least once per 2 messages, by own time:")
    print(f"{'µs/msg':>7} {'share':>6} {'calls':>8}  function")
    for tottime, ncalls, where in rows[: args.profile_top]:
        print(f"{tottime / n * 1e6:7.2f} {tottime / per_msg:6.1%} {ncalls:8d}  {where}")
    own = sum(t for t, _, w in rows if w.startswith("fogverse/") and "/transport/" not in w)
    ours = sum(t for t, _, w in rows if "fogverse/transport/" in w)
    print(
        f"per-message total {per_msg / n * 1e6:.1f} µs/msg (profiled): node code "
        f"{own / n * 1e6:.1f}, transport code {ours / n * 1e6:.1f}, rest (asyncio, librdkafka "
        f"calls, builtins) {(per_msg - own - ours) / n * 1e6:.1f}"
    )


def _short(path: str) -> str:
    marker = "/fogverse/"
    i = path.rfind(marker)
    if i >= 0 and "site-packages" not in path:
        return "fogverse/" + path[i + len(marker) :]
    return os.path.basename(path) if path.startswith("/") else path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024, help="payload bytes")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--headers", action="store_true", help="three video-style headers each")
    ap.add_argument("--variants", default="loop,aiokafka,confluent")
    ap.add_argument("--profile", action="store_true", help="profile one extra run of (c)")
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    os.environ.pop("FOGVERSE_KAFKA_CLIENT", None)  # each variant says which client it uses

    version = confluent_kafka.version()
    version = version[0] if isinstance(version, tuple) else version
    print(
        f"Python {platform.python_version()}, confluent-kafka {version} "
        f"(librdkafka {confluent_kafka.libversion()[0]}), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    wall0 = time.perf_counter()
    with broker() as bootstrap:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        src = create_topic(admin, args.partitions)
        fill(bootstrap, src, args.messages, args.size, args.headers)
        # One untimed pass of each: a fresh broker (JIT) and process slow the first runs down.
        for v in variants:
            run_one(v, bootstrap, admin, src, args)
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for rep in range(args.reps):
            line = []
            for v in variants:
                results[v].append(run_one(v, bootstrap, admin, src, args))
                line.append(f"{v} {results[v][-1][0]:,.0f}")
            print(f"rep {rep + 1}: " + ", ".join(line) + " msg/s", flush=True)
        if args.profile:
            profile_node(bootstrap, admin, src, args)
        admin.delete_topics([src])

    print(
        f"\n{args.size} B pass-through, {args.messages:,} messages, {args.partitions} "
        f"partition(s), {args.reps} interleaved repetitions ({time.perf_counter() - wall0:.0f} s)"
    )
    header = f"{'variant':<34} {'median msg/s':>12} {'vs (a)':>6} {'CPU µs/msg':>10}   runs (msg/s)"
    print(header)
    base = results.get("loop")
    for v in variants:
        rates = [r for r, _ in results[v]]
        cpu = statistics.median(c for _, c in results[v])
        ratio = ""
        if base is not None:
            # Median of the per-repetition ratios: each pair ran back to back.
            pairs = zip(results[v], base, strict=True)
            ratio = f"{statistics.median(r / b for (r, _), (b, _) in pairs):.2f}"
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"{VARIANTS[v]:<34} {statistics.median(rates):>12,.0f} {ratio:>6} {cpu:>10.1f}   {runs}"
        )


if __name__ == "__main__":
    main()
