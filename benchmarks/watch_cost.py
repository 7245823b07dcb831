"""What the suite's stopwatch costs the runs it times: the JPEG stage of :mod:`benchmarks.stage`
(the hand-written loop and FogVerse p=2), or the 1 KiB pass-through (the tuned loop and the
node), timed by ``HighWatermark`` as it polls now against the same watcher polling every
5 ms, as it did before, side by side on one broker.

``python -m benchmarks.watch_cost [--workload stage|passthrough] [--records N] [--rounds 4]``

Each round runs every variant under both watchers, in alternating order, each into a fresh
output topic. Prints each run's frames/s and the broker JVM's CPU per frame, then per variant
the paired ratios (now over every 5 ms) and the median broker CPU of each. Kafka: a local
broker it starts (the broker's CPU is read from its process). Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import psutil

from benchmarks import kafka as k
from benchmarks import stage
from benchmarks.common import make_frames

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("stage", "passthrough"), default="stage")
    parser.add_argument("--records", type=int, help="default: 1200 frames, 150000 messages")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    stage_run = args.workload == "stage"
    n = args.records or (1200 if stage_run else 150_000)
    partitions = stage.PARTITIONS if stage_run else 1
    variants = [stage.LOOP, "fogverse p=2"] if stage_run else [k.LOOP, "node[confluent]"]

    def run(bootstrap: str, src: str, out: str, variant: str) -> Any:
        if stage_run:
            return stage._run(bootstrap, src, out, n, variant)
        transport = None if variant == k.LOOP else "confluent"
        return k._passthrough_run(bootstrap, src, out, n, variant, transport, False)

    from fogverse.broker import LocalKafka

    # The watcher as it was is today's with its slowest poll at its fastest: every 5 ms.
    watchers = {"now": k._WATCH_SLOWEST, "every 5 ms": k._WATCH_FASTEST}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        with LocalKafka() as kafka, k._own_node_settings():
            assert kafka.pid is not None
            jvm = psutil.Process(kafka.pid)
            admin = k._admin(kafka.bootstrap)
            src = k.create_topic(admin, "watch-src", partitions)
            if stage_run:
                stage.fill_frames(kafka.bootstrap, src, make_frames(8).jpeg, n)
            else:
                k.fill(kafka.bootstrap, src, n, 1024)
            for i in range(args.rounds):
                for variant in variants:
                    order = list(watchers) if i % 2 == 0 else list(watchers)[::-1]
                    for name in order:
                        k._WATCH_SLOWEST = watchers[name]
                        out = k.create_topic(admin, "watch-out", partitions)
                        before = sum(jvm.cpu_times()[:2])
                        got = run(kafka.bootstrap, src, out, variant)
                        broker_ms = (sum(jvm.cpu_times()[:2]) - before) / n * 1e3
                        k.delete_topics(admin, [out])
                        runs.setdefault((variant, name), []).append((got["rate"], broker_ms))
                        print(
                            f"{variant} [{name}]: {got['rate']:.1f} records/s, "
                            f"broker {broker_ms * 1e3:.1f} µs CPU/record",
                            flush=True,
                        )
    finally:
        k._WATCH_SLOWEST = watchers["now"]
    for variant in variants:
        now, old = runs[(variant, "now")], runs[(variant, "every 5 ms")]
        ratios = [a[0] / b[0] for a, b in zip(now, old, strict=True)]
        print(
            f"{variant}: records/s now over every 5 ms, paired: {[round(r, 3) for r in ratios]} "
            f"(median {statistics.median(ratios):.3f}); broker µs CPU/record, median: "
            f"now {statistics.median(b for _, b in now) * 1e3:.1f}, "
            f"every 5 ms {statistics.median(b for _, b in old) * 1e3:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
