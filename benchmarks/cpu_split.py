"""Where the CPU of a 1 KiB pass-through goes on this machine: the client's event-loop thread, the
client's other threads (librdkafka's, the consumer thread), and the broker's JVM, for the tuned
confluent-kafka loop, the FogVerse node, and the node with no delivery reports at all.

``python -m benchmarks.cpu_split [--messages 150000] [--rounds 4]``

"node, no reports" produces every output without a delivery callback and counts none of them
(its inputs are never committed: not at-least-once). It is an upper bound: what the node's
rate would be if serving delivery reports cost nothing.

"node, drain acks" is the at-least-once way to that bound, tried as a prototype (patched in
here, not in the transport): the producer runs with ``delivery.report.only.error`` (the client
then builds no report, and calls no Python, for a success), a failure still reaches its input
through its callback, and every other output is acknowledged when the producer's queue is
empty (``len(producer) == 0`` after a poll: nothing of it is queued, in flight or unreported).
A sustained stream never empties the queue on its own, so after ``DRAIN_EVERY`` outputs
``send_nowait`` refuses and ``send`` waits for the queue to drain: stop-and-wait every
``DRAIN_EVERY`` outputs, as the tuned loop does every batch. Runs interleaved in this process on a
local broker this script starts (it needs the JVM's pid); prints each run and the median of
the paired ratios over the loop. Each run's CPU is counted from its start to its end,
the group join and the node's drain included. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import kafka as k
from benchmarks.common import proc_cpu_seconds
from fogverse.broker import LocalKafka


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


DRAIN_EVERY = 5000


@contextmanager
def _drain_acks() -> Iterator[None]:
    from fogverse.transport import confluent as c

    T = c.ConfluentProducerTransport
    saved = (T.send_nowait, T._poll, T.send, dict(c.PRODUCER_DEFAULTS))
    c.PRODUCER_DEFAULTS["delivery.report.only.error"] = True

    def unacked(self: Any) -> list[list[Any]]:
        found: list[list[Any]] = self.__dict__.setdefault("_unacked", [])
        return found

    def poll(self: Any) -> None:
        self.producer.poll(0)  # failures first: their callbacks clear their entries
        if self._solo is not None:
            self._solo.poll(0)
        entries = unacked(self)
        if entries and len(self.producer) == 0:
            self._unacked = []
            for entry in entries:
                if entry[0] is not None:
                    entry[0](None)

    def send_nowait(self: Any, topic: str, value: Any, key: Any, headers: Any, on_ack: Any) -> bool:
        entries = unacked(self)
        if len(entries) >= DRAIN_EVERY:
            return False
        entry = [on_ack]

        def report(err: Any, msg: Any) -> None:  # failures only
            entry[0] = None
            on_ack(c.KafkaDeliveryError(err, msg.topic()))

        try:
            self.producer.produce(topic, value, key, -1, report, None, 0, headers or None)
        except BufferError:
            return False
        entries.append(entry)
        self._wake()
        return True

    async def send(self: Any, topic: str, value: Any, key: Any = None, headers: Any = None) -> Any:
        fut = self._loop.create_future()
        settle = functools.partial(c._settle, fut, None)
        while not send_nowait(self, topic, value, key, headers, settle):  # full: drain first
            poll(self)
            await asyncio.sleep(0.0005)
        return fut

    T.send_nowait, T._poll, T.send = send_nowait, poll, send  # type: ignore[method-assign]
    try:
        yield
    finally:
        T.send_nowait, T._poll, T.send = saved[:3]  # type: ignore[method-assign]
        c.PRODUCER_DEFAULTS.clear()
        c.PRODUCER_DEFAULTS.update(saved[3])


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


def _node_drain_acks(bootstrap: str, src: str, out: str, n: int) -> dict[str, Any]:
    with _drain_acks():
        return _node(bootstrap, src, out, n)


VARIANTS: dict[str, Callable[[str, str, str, int], dict[str, Any]]] = {
    "loop": k.plain_loop,
    "node": _node,
    "node, no reports": _node_no_reports,
    "node, drain acks": _node_drain_acks,
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
                jvm_stat = f"/proc/{kafka.pid}/stat"
                jvm0, thread0, proc0 = (
                    proc_cpu_seconds(jvm_stat),
                    time.thread_time(),
                    time.process_time(),
                )
                try:
                    m = run(bootstrap, src, out, n)
                finally:
                    jvm = proc_cpu_seconds(jvm_stat) - jvm0
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
