"""Stand-alone study: where the pipeline's parent process spends its CPU at the top rate.

``python -m benchmarks.pipeline_profile [--frames 600] [--top 12]``

Runs the ``max-rate-1cam`` scenario of :mod:`benchmarks.kafka` (source, ParallelConsumer and
sink in this process, workers in their own), with the reduced decode and with the full-size
one, twice each:

- ``plain``: no profiler; this process's CPU per frame split between the event loop's thread
  and its other threads (librdkafka's, the confluent consumer threads, the benchmark's lag
  sampler), which the process's total counts after they end; beside them what the pool's
  workers (and their forkserver) and the local broker's JVM spent per frame, so the run says
  how the machine's CPU divides between the parent, the workers and the broker (everything
  the run costs, start-up included, over the frames sent; no JVM figure with an external
  broker);
- ``profiled``: cProfile on the event loop's thread only, its CPU grouped by where the code
  lives: Kafka I/O (confluent-kafka's calls into librdkafka, socket writes and reads),
  FogVerse's node loop, its pool (slot copies, worker replies), the benchmark's own source
  and sink, and the rest (asyncio, uvloop). The profiler slows what it watches: its shares
  are applied to the plain run's event-loop CPU (``ms_per_frame_scaled``).

Until 2026-12-07 the profiler's clock was the process's CPU time, so a function's own time
counted what librdkafka's threads burnt while it ran (0.34 ms per frame "in" the producer's
close, which waits for those threads). Prints a JSON list, one entry per decode. Starts a
local broker unless ``--bootstrap`` or FOGVERSE_BOOTSTRAP names one.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from typing import Any

from benchmarks.common import DescendantsCpu, make_frames, proc_cpu_seconds, run_async
from benchmarks.kafka import (
    Scenario,
    _own_node_settings,
    _where,
    broker_process,
    run_scenario,
    settings_for,
)

__all__ = ["profile_pipeline"]

_GROUPS = (
    ("kafka: producer", ("cimpl.Producer", "'produce'", "'poll'", "'flush'")),
    ("kafka: consumer", ("cimpl.Consumer", "'consume'", "'commit'")),
    ("kafka: client (other)", ("cimpl", "confluent_kafka/", "aiokafka/")),
    ("socket writes", ("method 'send'", "streams.py", "'write'", "sendall")),
    ("socket reads", ("recv", "readexactly")),
    ("fogverse: pool (slots, replies)", ("fogverse/parallel/",)),
    ("fogverse: transport", ("fogverse/transport/",)),
    ("fogverse: node loop, codecs, offsets, profiler", ("fogverse/",)),
    ("benchmark source and sink", ("benchmarks/",)),
)


def _group(path: str, name: str) -> str:
    where = f"{path}:{name}"
    for label, needles in _GROUPS:
        if any(n in where for n in needles):
            return label
    return "other (asyncio, uvloop, builtins)"


def _cpu_seconds(pid: int | None) -> float:
    return 0.0 if pid is None else proc_cpu_seconds(f"/proc/{pid}/stat")


def profile_pipeline(
    bootstrap: str, frames: int, reduced_decode: bool, top: int, jvm_pid: int | None = None
) -> dict[str, Any]:
    settings = settings_for(False)
    video = make_frames(8)
    warm = Scenario("max-rate-1cam", 1, None, 100, reduced_decode)
    run_async(lambda: run_scenario(bootstrap, warm, settings, video))
    scenario = Scenario("max-rate-1cam", 1, None, frames, reduced_decode)
    jvm0 = _cpu_seconds(jvm_pid)
    with DescendantsCpu(exclude=[] if jvm_pid is None else [jvm_pid]) as workers:
        loop0, process0 = time.thread_time(), time.process_time()
        plain = run_async(lambda: run_scenario(bootstrap, scenario, settings, video))
        loop_s = time.thread_time() - loop0
        other_s = time.process_time() - process0 - loop_s
    jvm_s = _cpu_seconds(jvm_pid) - jvm0
    sent = plain["frames_sent"] or 1
    loop_ms = loop_s / sent * 1e3
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        metrics = run_async(lambda: run_scenario(bootstrap, scenario, settings, video))
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    rows = []
    for (path, line, name), (_, _calls, own, _cum, _) in stats.items():
        label = _group(path, name)
        groups[label] = groups.get(label, 0.0) + own
        rows.append((own, _where(path, line, name)))
    total = sum(groups.values()) or 1.0
    profiled_sent = metrics["frames_sent"] or 1
    return {
        "decode": "reduced" if reduced_decode else "full-size",
        "frames": sent,
        "plain": {
            "delivered_fps": plain["delivered_fps"],
            "ms_per_frame": {
                "event loop thread": round(loop_ms, 3),
                "other threads (librdkafka, consumer threads, lag sampler)": round(
                    other_s / sent * 1e3, 3
                ),
                "pool workers": round(workers.seconds / sent * 1e3, 3),
                "broker JVM": None if jvm_pid is None else round(jvm_s / sent * 1e3, 3),
            },
        },
        "delivered_fps_under_profiler": metrics["delivered_fps"],
        "event_loop_thread_by_group": {
            k: {
                "ms_per_frame_profiled": round(v / profiled_sent * 1e3, 3),
                "share": round(v / total, 3),
                "ms_per_frame_scaled": round(v / total * loop_ms, 3),
            }
            for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"function": where, "ms_per_frame_profiled": round(own / profiled_sent * 1e3, 3)}
            for own, where in sorted(rows, reverse=True)[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_profile", description=__doc__)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--bootstrap")
    args = p.parse_args(argv)
    with broker_process(args.bootstrap) as (servers, jvm_pid), _own_node_settings():
        docs = [profile_pipeline(servers, args.frames, r, args.top, jvm_pid) for r in (True, False)]
    print(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
