"""What the cyclic GC costs a node: the 1 KiB pass-through with CPython's default young-generation
threshold against the threshold nodes raise it to while they run, side by side on one broker.

``python -m benchmarks.gc_threshold [--messages 150000] [--rounds 6]``

Both variants run the node in this process, interleaved, on one source topic; "default" sets
the threshold to 701 (not an interpreter default, so the node leaves it alone: it stands for
the collector as CPython configures it). Prints each run's rate, the event-loop thread's CPU
per message and the time spent in collections (``gc.callbacks``), then the median of the
paired ratios. Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts. Standalone (not in
the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

from benchmarks import kafka as k


def _one(
    bootstrap: str, src: str, n: int, threshold: tuple[int, int, int] | None
) -> dict[str, Any]:
    admin = k._admin(bootstrap)
    out = k.create_topic(admin, "gc-out")
    saved = gc.get_threshold()
    spent = {"s": 0.0, "t0": 0.0}

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            spent["t0"] = time.perf_counter()
        else:
            spent["s"] += time.perf_counter() - spent["t0"]

    if threshold is not None:
        gc.set_threshold(*threshold)
    gc.callbacks.append(timed)
    cpu0 = time.thread_time()
    try:
        with k._own_node_settings():
            result = asyncio.run(k.run_node_passthrough(bootstrap, src, out, n, "confluent"))
    finally:
        gc.callbacks.remove(timed)
        gc.set_threshold(*saved)
        k.delete_topics(admin, [out])
    return {
        **result,
        "thread_us_per_msg": (time.thread_time() - cpu0) / n * 1e6,
        "gc_us_per_msg": spent["s"] / n * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=150_000)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    variants: dict[str, tuple[int, int, int] | None] = {"default": (701, 10, 10), "raised": None}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    with k.broker() as bootstrap:
        admin = k._admin(bootstrap)
        src = k.create_topic(admin, "gc-src")
        k.fill(bootstrap, src, args.messages, 1024)
        try:
            for r in range(args.rounds):
                for name, threshold in variants.items():
                    m = _one(bootstrap, src, args.messages, threshold)
                    rates[name].append(m["rate"])
                    print(
                        f"round {r} {name:8} {m['rate']:9.0f} msg/s  event-loop thread "
                        f"{m['thread_us_per_msg']:.2f} us/msg  in collections "
                        f"{m['gc_us_per_msg']:.2f} us/msg",
                        flush=True,
                    )
        finally:
            k.delete_topics(admin, [src])
    ratios = [a / b for a, b in zip(rates["raised"], rates["default"], strict=True)]
    print(
        f"raised over default: {statistics.median(ratios):.3f} (paired median; "
        f"{min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
