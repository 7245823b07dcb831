"""Stand-alone study: where a ``ParallelConsumer``'s parent spends its CPU per frame on the
JPEG stage of :mod:`benchmarks.stage` (a 2-partition backlog of 720p JPEGs ->
``DecodeImage(fit=640) -> Letterbox(640) -> EncodeJPEG(90)`` in p=2 workers -> a topic).

``python -m benchmarks.stage_profile [--frames 600] [--transport aiokafka confluent] [--top 12]``

For each transport, two runs on the same backlog, each into a fresh topic and group, timed
from the first fetched batch until the output topic holds every frame:

- ``plain``: no profiler; the parent's CPU per frame split by thread (the event loop's
  thread, librdkafka's own threads, other Python threads such as the confluent consumer's);
- ``profiled``: cProfile on the event loop's thread, its CPU grouped by where the code lives
  (Kafka client, FogVerse transport, node, pool, socket calls, the event loop itself). The
  profiler slows what it watches: read its figures as shares of the plain run's
  event-loop CPU, which is what ``ms_per_frame_scaled`` does.

Prints one JSON document. Starts a local broker unless ``--bootstrap`` or FOGVERSE_BOOTSTRAP
names one.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import time
import uuid
from typing import Any

from benchmarks.common import make_frames, run_async, thread_cpu_seconds
from benchmarks.kafka import (
    HighWatermark,
    _admin,
    _own_node_settings,
    _preprocessor,
    _where,
    broker,
    create_topic,
    delete_topics,
    use_transport,
)
from benchmarks.stage import MAX_RUNNING_TASK, PARTITIONS, QUALITY, fill_frames

__all__ = ["profile_stage"]

_THREADS = (
    "event loop thread",
    "librdkafka threads",
    "other threads (confluent consumer thread)",
    "benchmark's watermark client (not the node)",
)

_GROUPS = (
    ("kafka client: aiokafka", ("aiokafka/",)),
    ("kafka client: confluent_kafka", ("cimpl", "confluent_kafka/")),
    ("fogverse: transport", ("fogverse/transport/",)),
    ("fogverse: pool (slots, replies)", ("fogverse/parallel/",)),
    ("fogverse: node (loop, parallel step, delivery, offsets)", ("fogverse/node/",)),
    ("fogverse: other (codec, record, metrics)", ("fogverse/",)),
    ("socket and pipe calls", ("recv", "send", "'read'", "'write'", "select", "poll'")),
    ("benchmark", ("benchmarks/",)),
)


def _group(path: str, name: str) -> str:
    where = f"{path}:{name}"
    for label, needles in _GROUPS:
        if any(n in where for n in needles):
            return label
    return "event loop, asyncio, builtins"


def _thread_cpu(bench: frozenset[int] = frozenset()) -> dict[str, float]:
    """CPU seconds of this process's threads so far, by kind of thread; ``bench`` are the
    benchmark's own threads (the output watermark's client), counted apart."""
    pid = os.getpid()
    out = dict.fromkeys(_THREADS, 0.0)
    for tid, (name, cpu) in thread_cpu_seconds().items():
        if tid == pid:
            out["event loop thread"] += cpu
        elif tid in bench:
            out["benchmark's watermark client (not the node)"] += cpu
        elif name.startswith("rdk:"):
            out["librdkafka threads"] += cpu
        else:
            out["other threads (confluent consumer thread)"] += cpu
    return out


def _threads() -> frozenset[int]:
    pid = os.getpid()
    return frozenset(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)


async def _run(
    bootstrap: str, src: str, out: str, n: int, transport: str, profiler: cProfile.Profile | None
) -> dict[str, Any]:
    from fogverse.node.parallel import ParallelConsumer

    marks: dict[str, Any] = {}

    class Stage(ParallelConsumer):
        async def _refill(self) -> None:
            await super()._refill()
            if self._buffer and "t0" not in marks:
                marks["t0"] = time.perf_counter()
                marks["cpu0"] = time.process_time()
                marks["threads0"] = _thread_cpu(bench)
                if profiler is not None:
                    profiler.enable()

    group = f"bench-sp-{uuid.uuid4().hex[:8]}"
    node = Stage(src, bootstrap, group, producer_topic=out, input_codec="bytes")
    use_transport(node, transport)
    with HighWatermark(bootstrap, out, n, PARTITIONS) as mark:
        bench = _threads()  # before the node makes its clients: the watermark's own
        task = asyncio.create_task(node.run(2, MAX_RUNNING_TASK, _preprocessor(QUALITY)))
        try:
            while not mark.done.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("the stage stopped early")
                await asyncio.sleep(0.01)
            if profiler is not None:
                profiler.disable()
            cpu = time.process_time() - marks["cpu0"]
            threads = _thread_cpu(bench)
        finally:
            node.stop()
            await task
    assert mark.reached is not None
    per_thread = {k: (threads[k] - marks["threads0"][k]) / n * 1e3 for k in threads}
    watcher = per_thread[_THREADS[3]]
    return {
        "rate": round(n / (mark.reached - marks["t0"]), 1),
        # The process's CPU less the benchmark's own watermark client.
        "parent_cpu_ms_per_frame": round(cpu / n * 1e3 - watcher, 3),
        "by_thread_ms_per_frame": {k: round(v, 3) for k, v in per_thread.items()},
    }


def profile_stage(
    bootstrap: str, frames: int, transport: str, top: int, dump: str | None = None
) -> dict[str, Any]:
    admin = _admin(bootstrap)
    src = create_topic(admin, "bench-sp-src", PARTITIONS)
    fill_frames(bootstrap, src, make_frames(8).jpeg, frames)
    runs: dict[str, Any] = {}
    profiler = cProfile.Profile(time.thread_time)
    try:
        for label, prof in (("plain", None), ("profiled", profiler)):
            out = create_topic(admin, "bench-sp-out", PARTITIONS)
            try:
                runs[label] = run_async(
                    lambda prof=prof, out=out: _run(bootstrap, src, out, frames, transport, prof)
                )
            finally:
                delete_topics(admin, [out])
    finally:
        delete_topics(admin, [src])
    if dump:
        profiler.dump_stats(f"{dump}.{transport}.pstats")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    rows = []
    for (path, line, name), (_, _calls, own, _cum, _) in stats.items():
        label = _group(path, name)
        groups[label] = groups.get(label, 0.0) + own
        rows.append((own, _where(path, line, name)))
    total = sum(groups.values()) or 1.0
    # The profiled run's shares applied to the plain run's event-loop CPU per frame.
    loop_ms = runs["plain"]["by_thread_ms_per_frame"]["event loop thread"]
    return {
        "transport": transport,
        "frames": frames,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "plain": runs["plain"],
        "profiled": runs["profiled"],
        "event_loop_thread_by_group": {
            k: {
                "ms_per_frame_profiled": round(v / frames * 1e3, 3),
                "share": round(v / total, 3),
                "ms_per_frame_scaled": round(v / total * loop_ms, 3),
            }
            for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"function": where, "ms_per_frame_profiled": round(own / frames * 1e3, 3)}
            for own, where in sorted(rows, reverse=True)[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage_profile", description=__doc__)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--transport", nargs="+", default=["confluent"])
    p.add_argument("--bootstrap")
    p.add_argument("--dump", metavar="PREFIX", help="also write PREFIX.<transport>.pstats")
    args = p.parse_args(argv)
    with broker(args.bootstrap) as servers, _own_node_settings():
        docs = [profile_stage(servers, args.frames, t, args.top, args.dump) for t in args.transport]
    print(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
