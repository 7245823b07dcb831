"""What librdkafka's idempotent producer costs while its partition is busy: a bare
confluent-kafka producer sending as fast as it can, per variant of the producer settings, and
optionally the video pipeline's top rate with FogVerse's producer defaults patched.

``python -m benchmarks.idempotence_cost [--rounds 3] [--pipeline-pairs 0]``

librdkafka (2.16, and its main branch when this was written) limits an idempotent
producer's requests per partition by *messages* in flight, not requests:
``rd_kafka_toppar_producer_serve`` allows ``5 - msgs_inflight`` more requests. It computes the
broker thread's next wake-up before that limit, so once five messages of a partition are in
flight while more wait, the thread is told to wake up now, finds it may not send, and polls
its socket with a zero timeout until a response arrives: it spins. A request of 5 or more
records (any batch of small records) reaches the limit on its own, so a busy idempotent
producer keeps one request in flight per partition and spins while it waits for it. Without
idempotence the limit does not apply. ``max.in.flight.requests.per.connection=1`` avoids the
spin only while requests carry fewer than 5 records (it leaves the next request built and
unsendable, which stops the wake-up).

Each variant sends ``--messages`` records of 1 KiB and ``--frames`` 720p JPEGs (~240 KiB)
to a fresh one-partition topic and waits for every acknowledgement; reported: records/s and
the CPU per record of the calling thread and of librdkafka's threads (from
``/proc/self/task``). ``--pipeline-pairs N`` adds N interleaved pairs of the
``max-rate-1cam`` scenario (source, ``ParallelConsumer``, sink in this process) with the
transport's defaults and with ``enable.idempotence`` off. Starts a local broker unless
``--bootstrap`` or FOGVERSE_BOOTSTRAP names one. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import kafka as k
from benchmarks.common import interleaved, make_frames, run_async, thread_cpu_seconds

__all__ = ["VARIANTS", "produce_all"]

VARIANTS: dict[str, dict[str, Any]] = {
    "idempotent (default)": {},
    "idempotent, 1 in flight": {"max.in.flight.requests.per.connection": 1},
    "not idempotent": {"enable.idempotence": False},
    "not idempotent, 1 in flight": {
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 1,
    },
}


def produce_all(
    bootstrap: str, topic: str, values: list[bytes], n: int, conf: dict[str, Any]
) -> dict[str, float]:
    """Send ``n`` records (cycling through ``values``) and wait for every report; records/s
    and CPU microseconds per record of this thread and of librdkafka's threads."""
    from confluent_kafka import Producer

    from fogverse.transport.confluent import PRODUCER_DEFAULTS

    failed: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    producer = Producer(
        {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": 0, **conf}
    )
    producer.produce(topic, b"warm-up", on_delivery=report)
    producer.flush(30)
    before, thread0, t0 = thread_cpu_seconds(), time.thread_time(), time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, values[i % len(values)], on_delivery=report)
                break
            except BufferError:  # queue full: serve reports while it drains
                producer.poll(0.001)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("records still unacknowledged after 60 s")
    wall, thread = time.perf_counter() - t0, time.thread_time() - thread0
    after = thread_cpu_seconds()
    if failed:
        raise RuntimeError(f"{len(failed)} records failed: {failed[0]}")
    client = sum(
        cpu - before.get(tid, (name, 0.0))[1]
        for tid, (name, cpu) in after.items()
        if name.startswith("rdk:")
    )
    return {"rate": n / wall, "thread_us": thread / n * 1e6, "client_us": client / n * 1e6}


@contextmanager
def _producer_defaults(conf: dict[str, Any]) -> Iterator[None]:
    from fogverse.transport import confluent as c

    saved = dict(c.PRODUCER_DEFAULTS)
    c.PRODUCER_DEFAULTS.update(conf)
    try:
        yield
    finally:
        c.PRODUCER_DEFAULTS.clear()
        c.PRODUCER_DEFAULTS.update(saved)


def _pipeline_pairs(bootstrap: str, pairs: int) -> None:
    settings = k.settings_for(False)
    video = make_frames(8)
    variants = {"idempotent (default)": {}, "not idempotent": {"enable.idempotence": False}}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    scenario = k.Scenario("max-rate-1cam", 1, None, 1500, True)
    for r, name in interleaved(list(variants), pairs):
        with _producer_defaults(variants[name]):
            out = run_async(lambda: k.run_scenario(bootstrap, scenario, settings, video))
        rates[name].append(out["delivered_fps"])
        print(f"pipeline round {r} {name:22} {out['delivered_fps']:7.1f} frames/s", flush=True)
    ratios = [
        a / b for a, b in zip(rates["not idempotent"], rates["idempotent (default)"], strict=True)
    ]
    print(
        f"pipeline: not idempotent / idempotent {statistics.median(ratios):.2f}x "
        f"(paired; {min(ratios):.2f}-{max(ratios):.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.idempotence_cost", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=300_000)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--pipeline-pairs", type=int, default=0)
    p.add_argument("--bootstrap")
    args = p.parse_args(argv)
    small = [os.urandom(1024) for _ in range(16)]
    frames = make_frames(8).jpeg
    loads = {"1 KiB": (small, args.messages), "720p JPEG": (frames, args.frames)}
    with k._own_node_settings(), k.broker(args.bootstrap) as bootstrap:
        admin = k._admin(bootstrap)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r, name in interleaved(list(VARIANTS), args.rounds):
            for load, (values, n) in loads.items():
                topic = k.create_topic(admin, "idempotence-cost")
                try:
                    m = produce_all(bootstrap, topic, values, n, VARIANTS[name])
                finally:
                    k.delete_topics(admin, [topic])
                results.setdefault((load, name), []).append(m)
                print(
                    f"round {r} {load:9} {name:28} {m['rate']:9.0f}/s  CPU us per record: "
                    f"caller {m['thread_us']:7.2f}, librdkafka threads {m['client_us']:7.2f}",
                    flush=True,
                )
        for (load, name), runs in results.items():
            print(
                f"{load:9} {name:28} median {statistics.median(m['rate'] for m in runs):9.0f}/s, "
                f"librdkafka threads "
                f"{statistics.median(m['client_us'] for m in runs):7.2f} us per record"
            )
        if args.pipeline_pairs:
            _pipeline_pairs(bootstrap, args.pipeline_pairs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
