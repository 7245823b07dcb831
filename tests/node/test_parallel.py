"""ParallelConsumer on the real broker: context per task, order, faults, window, memory."""

from __future__ import annotations

import asyncio
import collections
import csv
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import psutil
import pytest
from backends import ForwardingProducer, committed_kafka, produce_kafka, read_kafka
from polling import wait_until

from fogverse import MemoryBroker, ParallelConsumer, ParallelProducer, Processor, Record
from fogverse.codec import NDArrayCodec

# Processors defined here travel to workers by value, as a user's script's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NODES = str(Path(__file__).parent.parent / "pipeline_nodes.py")
CODEC = NDArrayCodec()


class Jitter(Processor):
    """Adds one to a frame after a random pause, so completion order differs from input
    order; frames whose first value is 13 raise."""

    def process(self, data):
        time.sleep(random.random() * 0.004)
        if data.flat[0] == 13:
            raise ValueError("unlucky frame")
        return data + 1


def _frames(n: int, cams: int = 2):
    items = []
    for i in range(n):
        cam = i % cams
        frame = np.full((8, 8, 3), i % 250, dtype=np.uint8)
        headers = [
            ("cam", f"cam-{cam}".encode()),
            ("frame", str(i).encode()),
            ("timestamp", str(time.time()).encode()),
        ]
        items.append((f"cam-{cam}".encode(), CODEC.encode(frame), headers))
    return items


async def _run_node(node, pm, mrt, processor, until, timeout=90.0, during=None):
    """Run ``node`` until ``until()`` is true; ``during()``, if given, is polled every few
    milliseconds meanwhile, beside the node on its loop."""
    task = asyncio.create_task(node.run(pm, mrt, processor))

    async def poll_during():
        while not task.done():
            await during()
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(poll_during()) if during is not None else None
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await until():
            if task.done():
                task.result()
            if ticker is not None and ticker.done():
                ticker.result()
            assert asyncio.get_running_loop().time() < deadline, "node did not finish"
    finally:
        if ticker is not None:
            ticker.cancel()
        node.stop()
        await asyncio.wait_for(task, 60)


def _shm_entries() -> set[str]:
    """Shared-memory segments that could be ours (other processes on this machine make
    their own, e.g. multiprocessing's semaphores)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {e for e in os.listdir("/dev/shm") if "fogverse" in e or e.startswith("psm_")}


@pytest.mark.parametrize("ordered", [True, False])
def test_every_output_has_its_own_context_and_order_holds(kafka_bootstrap, new_topic, ordered):
    src, out = new_topic(partitions=2), new_topic()
    n = 200
    shm_before = _shm_entries()
    asyncio.run(produce_kafka(kafka_bootstrap, src, _frames(n)))
    node = ParallelConsumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    node.ordered = ordered

    async def until():
        return (
            len(await read_kafka(kafka_bootstrap, out, n - 1, timeout=0.5)) >= n - 1
            and len(await read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=0.5)) >= 1
        )

    asyncio.run(_run_node(node, 2, 8, Jitter(), until))
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n - 1))
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 1))
    assert len(got) == n - 1
    per_cam: dict[bytes, list[int]] = collections.defaultdict(list)
    for r in got:
        h = dict(r.headers)
        i = int(h["frame"])
        assert r.key == h["cam"] == f"cam-{i % 2}".encode()
        assert CODEC.decode(r.value).flat[0] == (i % 250) + 1, "a result took another's context"
        per_cam[r.key].append(i)
    if ordered:
        for frames in per_cam.values():
            assert frames == sorted(frames), "per-partition order broken"
    assert [dict(r.headers)["frame"] for r in dead] == [b"13"]
    h = dict(dead[0].headers)
    assert h["fogverse.error.stage"] == b"process"
    assert b"unlucky frame" in h["fogverse.error.traceback"]
    assert b"in process" in h["fogverse.error.traceback"], "worker traceback missing"
    assert node.pool.max_in_flight_seen <= 8
    assert _shm_entries() <= shm_before, "shared memory left in /dev/shm"


def test_worker_killed_mid_run_loses_nothing_and_node_keeps_going(kafka_bootstrap, new_topic):
    src, out = new_topic(partitions=2), new_topic()
    n = 600
    asyncio.run(produce_kafka(kafka_bootstrap, src, _frames(n)))
    node = ParallelConsumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    kills: list[int] = []

    class Slow(Processor):
        def process(self, data):
            time.sleep(0.01)
            return data

    async def until():
        return len(await read_kafka(kafka_bootstrap, out, n, timeout=0.3)) >= n

    async def during():
        # Kill a busy worker at three points of progress (not of time: however fast the
        # machine, the kills land mid-stream, 150 tasks apart).
        completed = node.pool.stats.get("completed", 0) if node.pool is not None else 0
        if len(kills) < 3 and completed >= 100 + 150 * len(kills) and node.pool.in_flight > 0:
            pid = random.choice(node.pool.worker_pids)
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)

    asyncio.run(_run_node(node, 2, 8, Slow(), until, during=during))
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n))
    frames = collections.Counter(dict(r.headers)["frame"] for r in got)
    assert set(frames) == {str(i).encode() for i in range(n)}
    assert len(kills) == 3
    assert node.pool.stats.get("restarts", 0) >= 3


@pytest.mark.timeout(300)
def test_node_sigkill_and_restart_loses_nothing(kafka_bootstrap, new_topic):
    src, out = new_topic(partitions=2), new_topic()
    n = 1500
    group = f"g-{uuid.uuid4().hex[:6]}"
    shm_before = _shm_entries()
    asyncio.run(produce_kafka(kafka_bootstrap, src, _frames(n)))
    env = {
        **os.environ,
        "CONSUMER_TOPIC": src,
        "PRODUCER_TOPIC": out,
        "GROUP_ID": group,
        "CONSUMER_SERVERS": kafka_bootstrap,
    }
    cmd = [sys.executable, "-m", "fogverse", "run", f"{NODES}:ParallelDouble"]
    node = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        first = asyncio.run(read_kafka(kafka_bootstrap, out, 200, timeout=120))
        assert len(first) >= 200, "the node did not start processing"
        children = [c.pid for c in psutil.Process(node.pid).children(recursive=True)]
        node.kill()
        node.wait(10)

        # Workers notice their parent is gone and exit.
        def exited(pid: int) -> bool:
            return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

        wait_until(
            lambda: all(map(exited, children)),
            20,
            f"the worker processes {children} to exit after their node",
            interval=0.1,
        )
        node = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)

        def everything(records):
            return len({dict(r.headers)["frame"] for r in records}) >= n

        got = asyncio.run(read_kafka(kafka_bootstrap, out, n, timeout=120, done=everything))
    finally:
        node.kill()
        node.wait(10)
    frames = collections.Counter(dict(r.headers)["frame"] for r in got)
    assert set(frames) == {str(i).encode() for i in range(n)}
    for r in got:
        i = int(dict(r.headers)["frame"])
        assert CODEC.decode(r.value).flat[0] == 2 * (i % 250) % 256
    assert _shm_entries() <= shm_before


@pytest.mark.timeout(400)  # 10 000 tasks: a fixed amount of work, slow on a loaded machine
def test_backlog_of_10000_frames_keeps_memory_flat(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic()
    n = 10_000
    frame = CODEC.encode(np.zeros((64, 64, 3), np.uint8))  # 12 KB a frame, 120 MB backlog
    items = [(None, frame, [("frame", str(i).encode())]) for i in range(n)]
    asyncio.run(produce_kafka(kafka_bootstrap, src, items))
    proc = psutil.Process()
    # Memory is sampled by progress, not by the clock: at every 250th result the parent
    # encodes, so both windows have their samples however fast or slow the machine is.
    samples: list[tuple[int, int]] = []

    class Sampling(ParallelConsumer):
        encoded = 0

        def encode(self, data):
            self.encoded += 1
            if self.encoded % 250 == 0:
                samples.append((self.encoded, proc.memory_info().rss))
            return super().encode(data)

    node = Sampling(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)

    class Count(Processor):
        def process(self, data):
            return int(data.shape[0])

    async def until():
        await asyncio.sleep(0.2)
        completed = node.pool.stats.get("completed", 0) if node.pool else 0
        return completed >= n

    asyncio.run(_run_node(node, 2, 16, Count(), until, timeout=330))
    assert node.pool.max_in_flight_seen <= 16
    early = [rss for done, rss in samples if n * 0.2 <= done <= n * 0.4]
    late = [rss for done, rss in samples if done >= n * 0.8]
    assert len(early) >= 4 and len(late) >= 4, samples
    growth = max(late) - min(early)
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over the backlog"


class SometimesFull(ForwardingProducer):
    """The node's producer transport, except that ``send_nowait`` says "no room" for every
    third output: those the node must send through its emitter (``send``) instead."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls = 0
        self.refused = 0
        self.awaited = 0

    async def send(self, topic, value, key=None, headers=None):
        self.awaited += 1
        return await self.inner.send(topic, value, key, headers)

    def send_nowait(self, topic, value, key, headers, on_ack) -> bool:
        self.calls += 1
        if self.calls % 3 == 0:
            self.refused += 1
            return False
        return self.inner.send_nowait(topic, value, key, headers, on_ack)


class BatchOnly(ParallelConsumer):
    """Counts inputs taken one at a time (the path with hooks): the batch path takes none."""

    one_at_a_time = 0

    async def _next(self):
        self.one_at_a_time += 1
        return await super()._next()


def test_batch_path_keeps_order_and_window_when_the_producer_is_sometimes_full(
    kafka_bootstrap, new_topic
):
    src, out = new_topic(partitions=2), new_topic()
    n, window = 240, 4
    asyncio.run(produce_kafka(kafka_bootstrap, src, _frames(n)))
    node = BatchOnly(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    node.producer = full = SometimesFull(node.producer)

    async def until():
        got = await read_kafka(kafka_bootstrap, out, n - 1, timeout=0.5)
        return len(got) >= n - 1 and node.pool.stats.get("failed", 0) >= 1

    asyncio.run(_run_node(node, 2, window, Jitter(), until))
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n - 1))
    assert node.one_at_a_time == 0, "the inputs did not take the batch path"
    assert full.refused > 0 and full.awaited >= full.refused  # both ways out were taken
    per_cam: dict[bytes, list[int]] = collections.defaultdict(list)
    for r in got:
        i = int(dict(r.headers)["frame"])
        assert CODEC.decode(r.value).flat[0] == (i % 250) + 1, "a result took another's context"
        per_cam[r.key].append(i)
    assert sorted(i for frames in per_cam.values() for i in frames) == [
        i for i in range(n) if i % 250 != 13
    ]
    for frames in per_cam.values():
        assert frames == sorted(frames), "per-partition order broken"
    # The backlog filled the window, and nothing ever went past it.
    assert node.pool.max_in_flight_seen == window
    assert len(node.pool._slots.slots) == window


class BadDecode(BatchOnly):
    def decode(self, data):
        if data == b"not a frame":
            raise ValueError("undecodable")
        return super().decode(data)


def test_batch_path_dead_letters_a_failed_decode_and_commits_past_it(kafka_bootstrap, new_topic):
    src, out = new_topic(), new_topic()
    n, bad = 60, 17
    items = _frames(n, cams=1)
    items[bad] = (items[bad][0], b"not a frame", items[bad][2])
    asyncio.run(produce_kafka(kafka_bootstrap, src, items))
    group = f"g-{uuid.uuid4().hex[:6]}"
    node = BadDecode(src, kafka_bootstrap, group, producer_topic=out)
    node.commit_interval = 0.05

    class Plus(Processor):
        def process(self, data):
            return data + 1

    async def until():
        committed = await asyncio.to_thread(committed_kafka, kafka_bootstrap, group, src)
        return committed == n

    asyncio.run(_run_node(node, 2, 4, Plus(), until))
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n - 1))
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 1))
    assert node.one_at_a_time == 0, "the inputs did not take the batch path"
    assert [int(dict(r.headers)["frame"]) for r in got] == [i for i in range(n) if i != bad]
    assert [(dict(r.headers)["frame"], r.value) for r in dead] == [
        (str(bad).encode(), b"not a frame")
    ]
    assert dict(dead[0].headers)["fogverse.error.stage"] == b"decode"


class ProfiledEcho(BatchOnly):
    profile = True
    profile_sample = 1


class AddOne(Processor):
    def process(self, data):
        return data + 1


def test_batch_path_times_every_stage_of_every_frame(tmp_path):
    MemoryBroker.reset()
    broker = MemoryBroker.named("par-prof")
    n = 40
    for key, value, headers in _frames(n):
        broker.append("in", value, key, headers)
    node = ProfiledEcho("in", "memory://par-prof", "g", producer_topic="out")
    node.profile_csv = str(tmp_path / "profile.csv")

    async def until():
        await broker.wait_for_change(0.1)
        return len(broker.records("out")) >= n

    asyncio.run(_run_node(node, 2, 4, AddOne(), until))
    assert node.one_at_a_time == 0, "the inputs did not take the batch path"
    summary = node.profiler.summary()
    assert summary["messages"] == summary["sampled"] == n
    rows = list(csv.DictReader((tmp_path / "profile.csv").open()))
    assert len(rows) == n
    # A stage whose mark is missing lasts exactly 0 (nanosecond clocks never give 0 between
    # two marks that were both taken).
    for stage in ("decode", "queue_wait", "process", "encode", "send"):
        assert all(float(r[f"{stage}_s"]) > 0 for r in rows), stage
    # ack_wait starts once the output was handed over, and the in-memory broker acknowledges
    # it at once: below the CSV's microsecond, never negative.
    assert all(float(r["ack_wait_s"]) >= 0 for r in rows)


class Numbers(ParallelProducer):
    """A source whose inputs come one at a time from its own ``receive``."""

    def __init__(self, n: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.left = list(range(n))

    async def receive(self):
        if not self.left:
            await asyncio.sleep(0.01)
            return None
        i = self.left.pop(0)
        return Record(value=np.full((4,), i, np.int64), key=b"k")


def test_a_parallel_producer_sends_every_result_in_order():
    MemoryBroker.reset()
    broker = MemoryBroker.named("par-src")
    n = 50
    node = Numbers(n, producer_topic="out", producer_servers="memory://par-src")

    async def until():
        await broker.wait_for_change(0.1)
        return len(broker.records("out")) >= n - 1

    asyncio.run(_run_node(node, 2, 4, Jitter(), until))
    got = [int(CODEC.decode(r.value)[0]) for r in broker.records("out")]
    assert got == [i + 1 for i in range(n) if i != 13]  # 13 fails in the worker: dead-lettered
    assert node.pool.max_in_flight_seen <= 4


class StuckOn(Processor):
    """Never returns for the input ``stuck`` (a worker hung in native code); echoes the rest."""

    def process(self, data):
        if data == b"stuck":
            time.sleep(3600)
        return data


@pytest.mark.timeout(180)
@pytest.mark.parametrize("window", [1, 4])
def test_a_stop_gives_up_a_task_that_never_finishes_after_drain_timeout(
    kafka_bootstrap, new_topic, window
):
    # Window 1: the admission of b waits for the stuck task's slot; window 4: b is admitted
    # and its result waits behind the stuck one (input order), so only the drain waits.
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:6]}"
    values = (b"a", b"stuck", b"b")
    asyncio.run(produce_kafka(kafka_bootstrap, src, [(None, v, []) for v in values]))
    node = ParallelConsumer(src, kafka_bootstrap, group, producer_topic=out, input_codec="bytes")
    node.drain_timeout = 1.0

    async def scenario():
        task = asyncio.create_task(node.run(1, window, StuckOn()))
        try:
            await read_kafka(kafka_bootstrap, out, 1, timeout=60)
            await asyncio.to_thread(
                wait_until, lambda: node._tracker.in_flight == 2, 60, "stuck and b in flight"
            )
        finally:
            node.stop()
            # The stuck worker is killed when the pool closes (its teardown grace is 30 s);
            # a stop that waited for the task would never end.
            await asyncio.wait_for(task, 120)

    asyncio.run(scenario())
    assert [r.value for r in asyncio.run(read_kafka(kafka_bootstrap, out, 1))] == [b"a"]
    assert committed_kafka(kafka_bootstrap, group, src) == 1, "the stuck input was committed"
