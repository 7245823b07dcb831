"""Stand-alone study: where the pipeline's parent process spends its CPU at the top rate.

``python -m benchmarks.pipeline_profile [--frames 600] [--top 12]``

Runs the ``max-rate-1cam`` scenario of :mod:`benchmarks.kafka` (source, ParallelConsumer and
sink in this process, workers in their own), with the reduced decode and with the full-size
one, under cProfile, and groups this process's own CPU time by where the code lives: Kafka
I/O (confluent-kafka's calls into librdkafka, socket writes and reads), FogVerse's
node loop, its pool (slot copies, worker replies), the benchmark's own source and sink, and
the rest (asyncio, uvloop). Prints a JSON list, one entry per decode; per-frame figures are
the profiled run's CPU time over the frames sent (the profiler slows everything, so read the
shares). Starts a local broker unless ``--bootstrap`` or FOGVERSE_BOOTSTRAP names one.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from typing import Any

from benchmarks.common import make_frames, run_async
from benchmarks.kafka import (
    Scenario,
    _own_node_settings,
    _where,
    broker,
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


def profile_pipeline(bootstrap: str, frames: int, reduced_decode: bool, top: int) -> dict[str, Any]:
    settings = settings_for(False)
    video = make_frames(8)
    warm = Scenario("max-rate-1cam", 1, None, 100, reduced_decode)
    run_async(lambda: run_scenario(bootstrap, warm, settings, video))
    scenario = Scenario("max-rate-1cam", 1, None, frames, reduced_decode)
    profiler = cProfile.Profile(time.process_time)
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
    sent = metrics["frames_sent"] or 1
    return {
        "decode": "reduced" if reduced_decode else "full-size",
        "frames": sent,
        "delivered_fps_under_profiler": metrics["delivered_fps"],
        "cpu_ms_per_frame": round(total / sent * 1e3, 3),
        "groups": {
            k: {"ms_per_frame": round(v / sent * 1e3, 3), "share": round(v / total, 3)}
            for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"function": where, "ms_per_frame": round(own / sent * 1e3, 3)}
            for own, where in sorted(rows, reverse=True)[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_profile", description=__doc__)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--bootstrap")
    args = p.parse_args(argv)
    with broker(args.bootstrap) as servers, _own_node_settings():
        docs = [profile_pipeline(servers, args.frames, r, args.top) for r in (True, False)]
    print(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
