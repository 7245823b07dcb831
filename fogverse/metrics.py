"""Per-message profiling of a node's stages: CSV rows, Prometheus metrics, summaries.

Switched on by one option (``profile=True`` on a node, or FOGVERSE_PROFILE=1). Message and
byte counts are exact. Stage timings are taken for a random sample of one message in
``sample`` (every message when ``sample=1``): stamping a message costs a few microseconds,
which is most of a 1 KiB pass-through's own cost per message, so stamping every one would
slow a fast node by 15 % or more. The sample is random rather than every N-th message so that
periodic traffic (round-robin cameras, alternating keys) cannot alias with it. The per-stage
figures, the CSV rows and the Prometheus histograms are computed from the stamps in batches.
When profiling is off, nothing is counted or stamped.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_SIZED = (bytes, bytearray)  # payloads whose len() is their size in bytes

__all__ = [
    "DEFAULT_SAMPLE",
    "STAGES",
    "ProfileSummary",
    "Profiler",
    "Stamps",
    "format_summary",
]

logger = logging.getLogger(__name__)

STAGES = ("receive_wait", "decode", "queue_wait", "process", "encode", "send", "ack_wait")
"""receive_wait: waiting for the next input; decode; queue_wait: waiting for a slot in the
in-flight window (parallel nodes); process; encode; send: handing the output to the
producer; ack_wait: from handing it over until the broker acknowledged it."""

_BUCKETS = np.array(
    [
        1e-5,
        5e-5,
        1e-4,
        5e-4,
        1e-3,
        2.5e-3,
        5e-3,
        1e-2,
        2.5e-2,
        5e-2,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    ]
)


def _unsized(value: Any) -> int:
    # A memoryview's or an ndarray's len() counts the items of its first dimension (720 for a
    # 720p frame); nbytes is its size. A camera producer's inputs are ndarrays.
    nbytes = getattr(value, "nbytes", 0)
    return nbytes if type(nbytes) is int else 0


class ProfileSummary(dict[str, Any]):
    """:meth:`Profiler.summary`'s figures: a plain dict that prints as a table."""

    def __str__(self) -> str:
        return format_summary(self)


def format_summary(summary: dict[str, Any]) -> str:
    """A profile summary as a few aligned lines: the counts, then one row per stage with its
    p50, p95 and p99 in milliseconds and its share of the summed mean time per timed message.

    This is what a profiled node logs when it ends."""
    stages: dict[str, dict[str, float]] = summary.get("stages", {})
    total = sum(s.get("mean", 0.0) for s in stages.values())
    head = (
        f"{summary.get('node', '?')}: {summary.get('messages', 0):,} messages, "
        f"{summary.get('bytes_in', 0):,} B in, {summary.get('bytes_out', 0):,} B out; "
        f"{summary.get('sampled', 0):,} timed (1 in {summary.get('sample', 1)})"
    )
    rows = []
    for name, s in stages.items():
        share = s.get("mean", 0.0) / total if total > 0 else 0.0
        ms = [f"{s.get(p, 0.0) * 1e3:.3f}" for p in ("p50", "p95", "p99")]
        rows.append((name, *ms, f"{share:.1%}"))
    header = ("stage", "p50 ms", "p95 ms", "p99 ms", "share")
    # Columns as wide as their widest cell: a stage that waited minutes stays aligned too.
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [head]
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


class Stamps:
    """``perf_counter_ns`` marks of one message; unset marks stay 0."""

    __slots__ = (
        "acked",
        "admitted",
        "decoded",
        "encoded",
        "processed",
        "received",
        "sent",
        "size_in",
        "size_out",
        "start",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.received = self.decoded = self.admitted = self.processed = 0
        self.encoded = self.sent = self.acked = 0
        self.size_in = self.size_out = 0

    def durations(self) -> tuple[float, ...]:
        """Seconds per stage, in :data:`STAGES` order (0 where the stage did not happen)."""
        ns = 1e-9
        decoded = self.decoded or self.received
        admitted = self.admitted or decoded
        processed = self.processed or admitted
        encoded = self.encoded or processed
        sent = self.sent or encoded
        acked = self.acked or sent
        return (
            (self.received - self.start) * ns,
            (decoded - self.received) * ns,
            (admitted - decoded) * ns,
            (processed - admitted) * ns,
            (encoded - processed) * ns,
            (sent - encoded) * ns,
            # From sent, not encoded: the stages partition the message's time, so their
            # means add up (the summary's shares) without counting the send twice.
            (acked - sent) * ns,
        )


DEFAULT_SAMPLE = 32
"""Time one message in 32 by default. A 1 KiB pass-through node (13 µs of CPU a message) loses
about 15 % of its throughput when every message is timed; at 1 in 16 the aiokafka node still
measured 0.94-0.96x in paired runs, at 1 in 32 0.985x. A node at 50,000 messages/s still
times 1,500 of them a second."""


class Profiler:
    """Counts every message of one node and times the stages of a random one in ``sample``.

    ``csv_path`` gets one row per timed message.
    """

    def __init__(
        self, node: str, csv_path: str | Path | None = None, sample: int = DEFAULT_SAMPLE
    ) -> None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ValueError(f"profile sample must be an integer >= 1 (one in N), not {sample!r}")
        self.node = node
        self.csv_path = Path(csv_path) if csv_path else None
        self.sample = sample
        self._rng = random.Random()
        self._log_skip = math.log(1.0 - 1.0 / sample) if sample > 1 else 0.0
        self.messages = 0
        """Messages received so far (all of them)."""
        self._next_timed = self._gap()
        # Exact totals, counted on the event loop's thread for every message.
        self.bytes_in = 0
        self.bytes_out = 0
        self._pending: list[Stamps] = []
        self._lock = threading.Lock()
        self.count = 0
        """Messages timed so far (the sample)."""
        self._sum = np.zeros(len(STAGES))
        self._buckets = np.zeros((len(STAGES), len(_BUCKETS) + 1), dtype=np.int64)
        self._recent: list[np.ndarray] = []
        self._csv: Any = None
        self._csv_file: Any = None

    @staticmethod
    def now() -> int:
        return time.perf_counter_ns()

    def _gap(self) -> int:
        """Messages until the next timed one: geometric, mean ``sample``."""
        if self.sample == 1:
            return 1
        return 1 + int(math.log(1.0 - self._rng.random()) / self._log_skip)

    def pick(self) -> int:
        """Hot path, before each receive: a start stamp if the next message is to be timed,
        else 0. The caller counts the message in ``messages`` once it has one."""
        if self.messages + 1 < self._next_timed:
            return 0
        return time.perf_counter_ns()

    def timed(self, start: int) -> Stamps:
        """The picked message has arrived (and been counted): its stamps; draw the next pick."""
        self._next_timed = self.messages + self._gap()
        return Stamps(start)

    def count_input(self, value: Any) -> int:
        """Count one message in; returns its size in bytes (0 for a value that is not a
        buffer)."""
        size = len(value) if isinstance(value, _SIZED) else _unsized(value)
        self.messages += 1
        self.bytes_in += size
        return size

    def count_output(self, stamps: Stamps | None, out: Any) -> None:
        """Count an encoded output's bytes (the stamps of a timed message note when and how
        much)."""
        size = len(out) if isinstance(out, _SIZED) else _unsized(out)
        self.bytes_out += size
        if stamps is not None:
            stamps.encoded = Profiler.now()
            stamps.size_out += size

    def finish(self, stamps: Stamps) -> None:
        """A timed message is done: keep its stamps. Aggregation happens in :meth:`flush`."""
        if not stamps.acked:
            stamps.acked = time.perf_counter_ns()
        self._pending.append(stamps)
        if len(self._pending) >= 4096:
            self.flush()

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        d = np.array([s.durations() for s in batch])
        with self._lock:
            self.count += len(batch)
            self._sum += d.sum(axis=0)
            for i in range(len(STAGES)):
                idx = np.searchsorted(_BUCKETS, d[:, i], side="left")
                self._buckets[i] += np.bincount(idx, minlength=len(_BUCKETS) + 1)
            self._recent.append(d)
            if sum(len(r) for r in self._recent) > 100_000:
                self._recent.pop(0)
        if self.csv_path is not None:
            self._write_csv(batch, d)

    def _write_csv(self, batch: list[Stamps], d: np.ndarray) -> None:
        if self._csv is None:
            new = not self.csv_path.exists()  # type: ignore[union-attr]
            self._csv_file = open(self.csv_path, "a", newline="")  # type: ignore[arg-type]  # noqa: SIM115
            self._csv = csv.writer(self._csv_file)
            if new:
                self._csv.writerow(
                    ["node", "t_start_ns", *(f"{s}_s" for s in STAGES), "size_in", "size_out"]
                )
        for s, row in zip(batch, d, strict=True):
            self._csv.writerow(
                [self.node, s.start, *(f"{x:.6f}" for x in row), s.size_in, s.size_out]
            )
        self._csv_file.flush()

    def close(self) -> None:
        self.flush()
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv = self._csv_file = None

    def summary(self) -> ProfileSummary:
        """Messages and bytes (exact), and mean/p50/p95/p99 seconds per stage over the recent
        timed messages (``sampled`` of them so far, one in ``sample`` on average).

        A dict; printed (``str()``, ``%s``) it is the table of :func:`format_summary`."""
        self.flush()
        with self._lock:
            recent = np.concatenate(self._recent) if self._recent else np.zeros((0, len(STAGES)))
            out = ProfileSummary(
                {
                    "node": self.node,
                    "messages": self.messages,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "sampled": self.count,
                    "sample": self.sample,
                    "stages": {},
                }
            )
            for i, stage in enumerate(STAGES):
                col = recent[:, i] if len(recent) else np.zeros(1)
                out["stages"][stage] = {
                    "mean": float(self._sum[i] / self.count) if self.count else 0.0,
                    "p50": float(np.percentile(col, 50)),
                    "p95": float(np.percentile(col, 95)),
                    "p99": float(np.percentile(col, 99)),
                }
        return out

    # ---- Prometheus -------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """A prometheus-client custom collector: register with ``REGISTRY.register(profiler)``.

        ``fogverse_messages`` and ``fogverse_bytes`` count every message; the stage histograms
        cover the timed sample (their ``_count`` is its size)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        self.flush()
        with self._lock:
            hist = HistogramMetricFamily(
                "fogverse_stage_seconds",
                "Time per message in each node stage, over a random sample of messages",
                labels=["node", "stage"],
            )
            for i, stage in enumerate(STAGES):
                cum = np.cumsum(self._buckets[i])
                buckets = [(repr(float(b)), int(c)) for b, c in zip(_BUCKETS, cum, strict=False)]
                buckets.append(("+Inf", int(cum[-1])))
                hist.add_metric([self.node, stage], buckets, float(self._sum[i]))
            yield hist
            msgs = CounterMetricFamily("fogverse_messages", "Messages received", labels=["node"])
            msgs.add_metric([self.node], self.messages)
            yield msgs
            size = CounterMetricFamily("fogverse_bytes", "Payload bytes", labels=["node", "dir"])
            size.add_metric([self.node, "in"], self.bytes_in)
            size.add_metric([self.node, "out"], self.bytes_out)
            yield size

    def describe(self) -> list[Any]:
        return []
