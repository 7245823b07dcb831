"""Profiling overhead: a 1 KiB pass-through node's throughput with ``profile=True`` (at one or
more ``profile_sample`` values) over the same node without, in paired interleaved runs.

The suite (``python -m benchmarks``) measures this at the default sample in 7 pairs per
transport; this study takes any sample values and as many pairs as the noise needs:

    .venv/bin/python benchmarks/profiling_overhead.py --transport aiokafka --reps 15
    .venv/bin/python benchmarks/profiling_overhead.py --sample 16 --sample 32 --sample 1

Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts and stops.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import run_async
from benchmarks.kafka import (
    _admin,
    _own_node_settings,
    broker,
    create_topic,
    default_transport,
    delete_topics,
    fill,
    run_node_passthrough,
)
from fogverse.metrics import DEFAULT_SAMPLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", default=default_transport())
    parser.add_argument("--reps", type=int, default=9, help="pairs of runs (default 9)")
    parser.add_argument("--messages", type=int, default=150_000)
    parser.add_argument(
        "--sample",
        type=int,
        action="append",
        help=f"profile_sample values (default: {DEFAULT_SAMPLE})",
    )
    args = parser.parse_args()
    variants: list[tuple[str, int | None]] = [("off", None)]
    variants += [(f"sample {s}", s) for s in args.sample or [DEFAULT_SAMPLE]]
    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    with broker() as bootstrap, _own_node_settings():
        admin = _admin(bootstrap)
        src = create_topic(admin, "ovh-src")
        try:
            fill(bootstrap, src, args.messages, 1024)
            # The first run after the fill is slow (cold caches in broker and client); untimed.
            warm = create_topic(admin, "ovh-out")
            try:
                run_async(
                    lambda: run_node_passthrough(
                        bootstrap, src, warm, args.messages, args.transport
                    )
                )
            finally:
                delete_topics(admin, [warm])
            for rep in range(args.reps):
                # Alternate the order so that drift within a pair favours neither side.
                for name, sample in variants if rep % 2 == 0 else variants[::-1]:
                    out = create_topic(admin, "ovh-out")
                    try:
                        doc = run_async(
                            lambda out=out, sample=sample: run_node_passthrough(
                                bootstrap,
                                src,
                                out,
                                args.messages,
                                args.transport,
                                profile=sample is not None,
                                profile_sample=sample,
                            )
                        )
                    finally:
                        delete_topics(admin, [out])
                    rates[name].append(doc["rate"])
                    cpu[name].append(doc["cpu_us_per_msg"])
        finally:
            delete_topics(admin, [src])
    off = rates["off"]
    print(f"node[{args.transport}], {args.messages} x 1 KiB, {args.reps} pairs")
    for name, xs in rates.items():
        ratios = [x / o for x, o in zip(xs, off, strict=True)]
        print(
            f"{name:>10}: median {statistics.median(xs):8.0f} msg/s, "
            f"over off: paired median {statistics.median(ratios):.3f} "
            f"(runs {min(ratios):.2f}-{max(ratios):.2f}), "
            f"CPU {statistics.median(cpu[name]):.2f} us/msg"
        )


if __name__ == "__main__":
    main()
