"""The JPEG stage draining a backlog: FogVerse's pool against what a user would run instead.

A 2-partition topic holds a backlog of 720p camera JPEGs (~240 KiB each); every variant
reads all of it from the start, runs the example pipeline's stage on each frame
(``DecodeImage(fit=640) -> Letterbox(640) -> EncodeJPEG(90)``: a 640x640 JPEG out) and
writes the result to a fresh topic, at least once. Variants, interleaved in rounds:

- ``loop``: a hand-written confluent-kafka loop in one process (consume a batch, process and
  produce each frame, flush, commit: the pass-through's tuned loop with the stage in it);
- ``loop x2 (one group)``: two copies of that loop in two processes in one consumer group,
  a partition each: Kafka's own parallelism, which needs no framework;
- ``quixstreams``: Quix Streams running the stage in ``sdf.apply``, one process (as its users
  run it: it has no process pool);
- ``fogverse p=1``, ``fogverse p=2``: a ``ParallelConsumer`` on its default transport with
  ``process_number`` workers and ``max_running_task=8``;
- ``fogverse p=2 [other]``: the same p=2 node on the other transport this machine has, so
  that the choice of the default is measured on this workload in the same run.

The clock runs from the first frame a variant consumed until the output topic holds every
frame (the same criterion for all). Each run uses a fresh output topic and group.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

from benchmarks.common import (
    interleaved,
    machine_info,
    make_frames,
    median_ratio,
    now_iso,
    progress,
    result,
    run_async,
    summarize,
)
from benchmarks.kafka import (
    TUNED_LOOP_CONSUMER,
    HighWatermark,
    _admin,
    _own_node_settings,
    _preprocessor,
    available_transports,
    check_delivered,
    create_topic,
    default_transport,
    delete_topics,
    fill_values,
    loop_producer,
    quix_available,
    use_transport,
)

__all__ = ["bench_stage"]

LOOP, LOOP2, QUIX = "loop", "loop x2 (one group)", "quixstreams"
PARTITIONS = 2
MAX_RUNNING_TASK = 8
QUALITY = 90


def fill_frames(bootstrap: str, topic: str, frames: list[bytes], n: int) -> None:
    """``n`` records, ``frames`` over and over."""
    fill_values(bootstrap, topic, itertools.islice(itertools.cycle(frames), n))


def stage_loop(bootstrap: str, src: str, out: str, group: str, stop: Any, first: Any) -> None:
    """The hand-written loop (in its own process): runs until ``stop`` is set; puts the
    ``perf_counter`` of its first frame and its CPU seconds on ``first``."""
    import cv2
    from confluent_kafka import Consumer as RawConsumer
    from confluent_kafka import TopicPartition

    cv2.setNumThreads(1)
    stage = _preprocessor(QUALITY)
    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **TUNED_LOOP_CONSUMER,
        }
    )
    producer, failures = loop_producer(bootstrap)
    consumer.subscribe([src])
    t0 = None
    cpu0 = time.process_time()
    while not stop.is_set():
        msgs = consumer.consume(64, 0.1)
        if not msgs:
            continue
        if t0 is None:
            t0, cpu0 = time.perf_counter(), time.process_time()
        offsets = {}
        for m in msgs:
            if m.error():
                raise RuntimeError(m.error())
            producer.produce(out, stage.process(m.value()), m.key(), headers=m.headers())
            producer.poll(0)
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        check_delivered(producer, failures, 60)
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True
        )
    consumer.close()
    first.put((t0, time.process_time() - cpu0))


def run_loops(bootstrap: str, src: str, out: str, n: int, copies: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    stop, first = ctx.Event(), ctx.Queue()
    group = f"bench-stage-loop-{uuid.uuid4().hex[:8]}"
    with HighWatermark(bootstrap, out, n, PARTITIONS) as mark:
        procs = [
            ctx.Process(target=stage_loop, args=(bootstrap, src, out, group, stop, first))
            for _ in range(copies)
        ]
        for p in procs:
            p.start()
        try:
            if not mark.done.wait(600):
                raise RuntimeError("the loops never wrote every frame")
        finally:
            stop.set()
            got = [first.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
    starts = [t for t, _ in got if t is not None]
    assert mark.reached is not None and starts
    return {"rate": n / (mark.reached - min(starts)), "cpu_ms_per_frame": _cpu(got, n)}


def _cpu(got: list[tuple[Any, float]], n: int) -> float:
    return sum(c for _, c in got) / n * 1e3


def run_quix(bootstrap: str, src: str, out: str, n: int) -> dict[str, Any]:
    """Quix Streams, one process, the stage in ``sdf.apply``."""
    import threading

    import cv2
    from quixstreams import Application

    cv2.setNumThreads(1)
    stage = _preprocessor(QUALITY)
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-stage-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        loglevel="WARNING",
        use_changelog_topics=False,
    )
    first: list[float] = []

    def process(value: bytes) -> bytes:
        if not first:
            first.append(time.perf_counter())
        return stage.process(value)

    src_topic = app.topic(src, value_deserializer="bytes", key_deserializer="bytes")
    out_topic = app.topic(out, value_serializer="bytes", key_serializer="bytes")
    app.dataframe(src_topic).apply(process).to_topic(out_topic)
    with HighWatermark(bootstrap, out, n, PARTITIONS) as mark:
        stopper = threading.Thread(target=lambda: (mark.done.wait(600), app.stop()), daemon=True)
        stopper.start()
        cpu0 = time.process_time()
        app.run()
        cpu = time.process_time() - cpu0
    if mark.reached is None or not first:
        raise RuntimeError("Quix Streams never wrote every frame")
    return {"rate": n / (mark.reached - first[0]), "cpu_ms_per_frame": cpu / n * 1e3}


async def run_fogverse(
    bootstrap: str, src: str, out: str, n: int, p: int, transport: str | None = None
) -> dict[str, Any]:
    from fogverse.node.parallel import ParallelConsumer

    class Stage(ParallelConsumer):
        first: float | None = None

        async def _refill(self) -> None:
            await super()._refill()
            if self._buffer and self.first is None:
                self.first = time.perf_counter()

    node = Stage(
        src,
        bootstrap,
        f"bench-stage-fv-{uuid.uuid4().hex[:8]}",
        producer_topic=out,
        input_codec="bytes",
    )
    if transport is not None:
        use_transport(node, transport)
    with HighWatermark(bootstrap, out, n, PARTITIONS) as mark:
        cpu0 = time.process_time()
        task = asyncio.create_task(node.run(p, MAX_RUNNING_TASK, _preprocessor(QUALITY)))
        try:
            while not mark.done.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("the FogVerse stage stopped early")
                await asyncio.sleep(0.01)
        finally:
            cpu = time.process_time() - cpu0
            node.stop()
            await task
    assert mark.reached is not None and node.first is not None
    return {"rate": n / (mark.reached - node.first), "cpu_ms_per_frame": cpu / n * 1e3}


def _variants() -> list[str]:
    out = [LOOP, LOOP2]
    if quix_available():
        out.append(QUIX)
    default = default_transport()
    other = [f"fogverse p=2 [{t}]" for t in available_transports() if t != default]
    return [*out, "fogverse p=1", "fogverse p=2", *other]


def _run(bootstrap: str, src: str, out: str, n: int, label: str) -> dict[str, Any]:
    if label == LOOP:
        return run_loops(bootstrap, src, out, n, 1)
    if label == LOOP2:
        return run_loops(bootstrap, src, out, n, 2)
    if label == QUIX:
        return run_quix(bootstrap, src, out, n)
    # "fogverse p=<n>" or "fogverse p=<n> [<transport>]"
    spec, _, transport = label.removeprefix("fogverse p=").partition(" [")
    return run_async(
        lambda: run_fogverse(bootstrap, src, out, n, int(spec), transport.rstrip("]") or None)
    )


def bench_stage(
    bootstrap: str, quick: bool, *, show_progress: bool | None = None
) -> dict[str, Any]:
    started, t0 = now_iso(), time.perf_counter()
    load_before = os.getloadavg()
    n, reps = (60, 1) if quick else (1200, 3)
    admin = _admin(bootstrap)
    src = create_topic(admin, "bench-stage-src", PARTITIONS)
    fill_frames(bootstrap, src, make_frames(8).jpeg, n)
    variants = _variants()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    loads: list[float] = []
    bar = progress(len(variants) * reps, "kafka JPEG stage", show_progress)
    with _own_node_settings(), contextlib.closing(bar):
        try:
            for _, label in interleaved(variants, reps):
                out = create_topic(admin, "bench-stage-out", PARTITIONS)
                try:
                    runs[label].append(_run(bootstrap, src, out, n, label))
                finally:
                    delete_topics(admin, [out])
                loads.append(round(os.getloadavg()[0], 2))
                bar.update()
        finally:
            delete_topics(admin, [src])
    rates = {v: [r["rate"] for r in rs] for v, rs in runs.items()}
    entries = {
        v: {
            "rate": summarize(rates[v], 1),
            "cpu_ms_per_frame": round(statistics.median(r["cpu_ms_per_frame"] for r in rs), 2),
            "vs_loop": round(median_ratio(rates[v], rates[LOOP]), 3),
            "vs_loop_x2": round(median_ratio(rates[v], rates[LOOP2]), 3),
            **({"vs_quix": round(median_ratio(rates[v], rates[QUIX]), 3)} if QUIX in rates else {}),
        }
        for v, rs in runs.items()
    }
    return result(
        "kafka.stage",
        mode="quick" if quick else "full",
        description="720p JPEG stage (DecodeImage(fit=640) -> Letterbox(640) -> EncodeJPEG(90)) "
        "draining a backlog on a 2-partition topic: FogVerse's pool vs a hand-written "
        "confluent-kafka loop, two copies of it in one group, and Quix Streams",
        params={
            "frames": n,
            "partitions": PARTITIONS,
            "reps": reps,
            "max_running_task": MAX_RUNNING_TASK,
            "default_transport": default_transport(),
            "unit": "frames/s",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "load_average_1min_per_run": loads,
        },
        metrics={v: e for v, e in entries.items() if v.startswith("fogverse")},
        baselines={v: e for v, e in entries.items() if not v.startswith("fogverse")},
        machine=machine_info(),
        started=started,
        duration_s=time.perf_counter() - t0,
    )
