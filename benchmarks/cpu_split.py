"""Where the CPU of a 1 KiB pass-through goes on this machine: the client's event-loop thread, the
client's other threads (librdkafka's, the consumer thread), and the broker's JVM, for the tuned
confluent-kafka loop, the FogVerse node, and the node with no delivery reports at all.

``python -m benchmarks.cpu_split [--messages 150000] [--rounds 4]``

"node, no reports" produces every output without a delivery callback and counts none of them
(its inputs are never committed: not at-least-once). It is an upper bound: what the node's
rate would be if serving delivery reports cost nothing. Runs interleaved in this process on a
local broker this script starts (it needs the JVM's pid); prints each run and the median of
the paired ratios over the loop. Each run's CPU is counted from its start to its end,
the group join and the node's drain included. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import kafka as k
from fogverse.broker import LocalKafka


def _jvm_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _no_reports() -> Iterator[None]:
    from fogverse.transport.confluent import ConfluentProducerTransport as T

    def send_nowait(self: Any, topic: str, value: Any, key: Any, headers: Any, on_ack: Any) -> bool:
        try:
            self.producer.produce(topic, value, key, -1, None, None, 0, headers or None)
        except BufferError:
            return False
        return True

    saved = T.send_nowait
    T.send_nowait = send_nowait  # type: ignore[method-assign]
    try:
        yield
    finally:
        T.send_nowait = saved  # type: ignore[method-assign]


def _node(bootstrap: str, src: str, out: str, n: int) -> dict[str, Any]:
    return asyncio.run(k.run_node_passthrough(bootstrap, src, out, n, "confluent"))


def _node_no_reports(bootstrap: str, src: str, out: str, n: int) -> dict[str, Any]:
    saved = k._PassThrough.drain_timeout
    k._PassThrough.drain_timeout = 0.1  # nothing will ever be acknowledged: do not wait for it
    try:
        with _no_reports():
            return _node(bootstrap, src, out, n)
    finally:
        k._PassThrough.drain_timeout = saved


VARIANTS: dict[str, Callable[[str, str, str, int], dict[str, Any]]] = {
    "loop": k.plain_loop,
    "node": _node,
    "node, no reports": _node_no_reports,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=150_000)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    n = args.messages
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with LocalKafka() as kafka, k._own_node_settings():
        assert kafka.pid is not None
        bootstrap = kafka.bootstrap
        admin = k._admin(bootstrap)
        src = k.create_topic(admin, "split-src")
        k.fill(bootstrap, src, n, 1024)
        for r in range(args.rounds):
            for name, run in VARIANTS.items():
                out = k.create_topic(admin, "split-out")
                jvm0, thread0, proc0 = (
                    _jvm_seconds(kafka.pid),
                    time.thread_time(),
                    time.process_time(),
                )
                try:
                    m = run(bootstrap, src, out, n)
                finally:
                    jvm = _jvm_seconds(kafka.pid) - jvm0
                    thread = time.thread_time() - thread0
                    proc = time.process_time() - proc0
                    k.delete_topics(admin, [out])
                rates[name].append(m["rate"])
                print(
                    f"round {r} {name:17} {m['rate']:9.0f} msg/s  CPU us/msg: event-loop thread "
                    f"{thread / n * 1e6:5.2f}, "
                    f"other client threads {(proc - thread) / n * 1e6:5.2f}, "
                    f"broker {jvm / n * 1e6:5.2f}",
                    flush=True,
                )
    for name in VARIANTS:
        ratios = [a / b for a, b in zip(rates[name], rates["loop"], strict=True)]
        print(
            f"{name:17} median {statistics.median(rates[name]):9.0f} msg/s, "
            f"{statistics.median(ratios):.3f}x the loop "
            f"(paired; {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
