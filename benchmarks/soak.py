"""Soak: the video pipeline under steady load with periodic faults, watched over time.

    python -m benchmarks.soak                  # 30 minutes (a human's run)
    python -m benchmarks.soak --minutes 10     # any length
    python -m benchmarks.soak --short          # under 2 minutes (CI: tests/reliability)

Pipeline: a ``Producer`` in this process sends synthetic 640x360 JPEG frames at ``--rate``
frames/s (id, camera and capture time in the headers) -> a ``ParallelConsumer`` node in its own
process decodes, letterboxes to 320 and re-encodes them in ``--processes`` workers -> a sink
``Consumer`` in this process counts every id and measures end-to-end latency.

Faults, one every ``--fault-every`` seconds, in turn: SIGKILL of one worker process of the
node; SIGKILL of the whole node, which is started again; SIGTERM of the node (drain and
commit), started again; and, when the soak runs its own broker, a broker restart (long mode
only). Every ``--sample-every`` seconds a row goes to ``soak.csv``: counts, duplicates, frames
still pending, latency percentiles over the interval, the node's memory (workers included) and
open file descriptors, this process's memory. At the end, after the load stops and the
pipeline drains: ``soak.json`` (summary, machine description) and ``soak.png`` (the plot).
Exit status 0 when no frame was lost (every frame reached the sink or, with its error, the
dead-letter topic; the summary counts both).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_text_atomic
from fogverse import Consumer, ParallelConsumer, Producer, Record, run

__all__ = ["SoakPreprocess", "SoakSettings", "main", "run_soak"]

logger = logging.getLogger("benchmarks.soak")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "soak"
CSV_FIELDS = [
    "t",
    "sent",
    "received",
    "unique",
    "duplicates",
    "pending",
    "dead_lettered",
    "rate_in",
    "rate_out",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_max_ms",
    "node_rss_mb",
    "node_fds",
    "node_procs",
    "soak_rss_mb",
    "faults",
    "last_fault",
]


# ---- the node under test (run as its own process: ``fogverse run benchmarks.soak:...``) ------


def _preprocessor() -> Any:
    from processors import Compose, DecodeImage, EncodeJPEG, Letterbox

    return Compose(DecodeImage(), Letterbox(320), EncodeJPEG(quality=80))


class SoakPreprocess(ParallelConsumer):
    """JPEG decode + letterbox 320 + JPEG encode in worker processes; configured by the
    seed's environment variables (CONSUMER_TOPIC, PRODUCER_TOPIC, GROUP_ID, ...)."""

    process_number = int(os.environ.get("SOAK_PROCESSES", "2"))
    max_running_task = int(os.environ.get("SOAK_WINDOW", "8"))
    dead_letter_topic = os.environ.get("SOAK_DLQ") or None

    def __init__(self) -> None:
        super().__init__()
        self.processor = _preprocessor()


# ---- the source and the sink (in this process) ----------------------------------------------


def synthetic_frames(count: int = 30, width: int = 640, height: int = 360) -> list[bytes]:
    """``count`` JPEG frames of a moving gradient with a bright box: camera-like content."""
    import cv2

    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(count):
        img = np.stack(
            [(x + 8 * k) % 256, (y + 4 * k) % 256, ((x + y) // 2 + 6 * k) % 256], axis=-1
        ).astype(np.uint8)
        cx = (40 + 17 * k) % (width - 80)
        img[100:180, cx : cx + 80] = 255
        frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    return frames


class FrameSource(Producer):
    """Sends frames at a steady rate until stopped; an id counts as sent once acked."""

    def __init__(self, topic: str, servers: str, rate: float, stats: Stats) -> None:
        super().__init__(topic, servers, producer_conf={"linger_ms": 5})
        self.rate = rate
        self.stats = stats
        self.frames = synthetic_frames()
        self._frame_no = 0
        self._t0: float | None = None

    async def receive(self) -> Record:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        i = self._frame_no
        self._frame_no += 1
        delay = self._t0 + i / self.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        headers = [
            ("id", str(i).encode()),
            ("cam", b"cam-0"),
            ("frame", str(i).encode()),
            ("timestamp", repr(now).encode()),
        ]
        return Record(self.frames[i % len(self.frames)], str(i).encode(), headers)

    async def send(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        ack = await super().send(data, *args, **kwargs)
        i = int(self.message.key)
        sent = self.stats.sent

        def acked(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                sent.add(i)

        ack.add_done_callback(acked)
        return ack


class FrameSink(Consumer):
    """Counts every id that reaches the end of the pipeline and its end-to-end latency."""

    auto_decode = False  # the frames themselves are not looked at

    def __init__(self, topic: str, servers: str, group: str, stats: Stats) -> None:
        super().__init__(topic, servers, group)
        self.stats = stats

    def process(self, data: Any) -> None:
        record = self.message
        headers = dict(record.headers)
        i = int(headers["id"])
        self.stats.received[i] += 1
        sent_at = float(headers["timestamp"])
        self.stats.latencies.append((time.time() - sent_at) * 1000)
        return None


# ---- bookkeeping ------------------------------------------------------------------------------


@dataclass
class Stats:
    sent: set[int] = field(default_factory=set)
    received: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    all_latencies: list[float] = field(default_factory=list)
    dead: int = 0

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.received.values() if c > 1)

    def take_latencies(self) -> list[float]:
        window, self.latencies = self.latencies, []
        self.all_latencies.extend(window)
        return window


@dataclass
class SoakSettings:
    minutes: float = 30.0
    rate: float = 25.0
    processes: int = 2
    window: int = 8
    fault_every: float = 60.0
    sample_every: float = 5.0
    drain_timeout: float = 180.0
    broker_restarts: bool = True
    out: Path = DEFAULT_OUT
    bootstrap: str | None = None
    seed: int = 1

    @classmethod
    def short(cls, **overrides: Any) -> SoakSettings:
        base = cls(
            minutes=0.75,
            rate=20.0,
            fault_every=9.0,
            sample_every=1.0,
            drain_timeout=60.0,
            broker_restarts=False,
        )
        for key, value in overrides.items():
            setattr(base, key, value)
        return base


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _tree_usage(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, processes) of a process and its children."""
    import psutil

    rss = 0
    fds = 0
    procs = _tree(pid)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            fds += p.num_fds()
    return rss / 2**20, fds, len(procs)


def _own_rss(pid: int) -> float:
    """RSS of this process alone, in MB (a broker this soak runs is its child: not counted)."""
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(values, q))


# ---- the node process -----------------------------------------------------------------------


class Node:
    """The ParallelConsumer node's process, started and faulted by the soak."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        log.write_bytes(b"")  # this run's log only; each start appends to it
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._family: set[int] = set()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fogverse", "run", "benchmarks.soak:SoakPreprocess"],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def workers(self) -> list[int]:
        """The pool's worker processes: children of the node's forkserver, i.e. the node's
        grandchildren (its own children are the forkserver and the resource tracker)."""
        import psutil

        pid = self.pid
        if pid is None:
            return []
        family = _tree(pid)[1:]
        self._family.update(p.pid for p in family)
        workers = []
        for p in family:
            with contextlib.suppress(psutil.Error):
                if p.ppid() != pid:
                    workers.append(p.pid)
        return workers

    async def stop(self, sig: int, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        self.workers()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        proc = self.proc
        return await asyncio.to_thread(proc.wait, timeout)

    def cleanup(self) -> None:
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            self.workers()
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive = [p for p in self._family if psutil.pid_exists(p) and _not_zombie(p)]
            if not alive:
                return
            time.sleep(0.1)
        for pid in self._family:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def _not_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- the run --------------------------------------------------------------------------------


async def _create_topics(bootstrap: str, names: dict[str, int]) -> None:
    from fogverse.admin import KafkaAdmin

    admin = KafkaAdmin(bootstrap)
    for name, partitions in names.items():
        await admin.create_topic(name, partitions)
    for name, partitions in names.items():
        deadline = time.monotonic() + 30
        while await admin.partitions(name) < partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} did not appear")
            await asyncio.sleep(0.1)


def _dead_letter_ids(bootstrap: str, topic: str) -> list[int]:
    """The frame ids in the dead-letter topic (its records keep the frames' headers)."""
    from confluent_kafka import Consumer as RdConsumer
    from confluent_kafka import TopicPartition

    consumer = RdConsumer(
        {"bootstrap.servers": bootstrap, "group.id": "soak-dlq", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        tps = [TopicPartition(topic, p, 0) for p in meta.partitions]
        total = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        consumer.assign(tps)
        ids: list[int] = []
        deadline = time.monotonic() + 30
        seen = 0
        while seen < total and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen += 1
            found = dict(msg.headers() or []).get("id")
            if found is not None:
                ids.append(int(found))
        return ids
    finally:
        consumer.close()


async def run_soak(settings: SoakSettings, broker: Any = None) -> dict[str, Any]:
    """Run the soak against ``settings.bootstrap`` (``broker``: a LocalKafka this run owns,
    which the faults may restart). Writes soak.csv, soak.json and soak.png; returns the
    summary."""
    assert settings.bootstrap is not None
    bootstrap = settings.bootstrap
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.seed)
    tag = uuid.uuid4().hex[:8]
    frames_topic, pre_topic, dlq = f"soak-frames-{tag}", f"soak-pre-{tag}", f"soak-dlq-{tag}"
    await _create_topics(bootstrap, {frames_topic: 2, pre_topic: 1, dlq: 1})
    stats = Stats()
    node = Node(
        {
            "CONSUMER_TOPIC": frames_topic,
            "PRODUCER_TOPIC": pre_topic,
            "GROUP_ID": f"soak-pre-{tag}",
            "CONSUMER_SERVERS": bootstrap,
            "PRODUCER_SERVERS": bootstrap,
            "FOGVERSE_BOOTSTRAP": bootstrap,
            "SOAK_PROCESSES": str(settings.processes),
            "SOAK_WINDOW": str(settings.window),
            "SOAK_DLQ": dlq,
        },
        out / "node.log",
    )
    source = FrameSource(frames_topic, bootstrap, settings.rate, stats)
    sink = FrameSink(pre_topic, bootstrap, f"soak-sink-{tag}", stats)
    me = os.getpid()
    faults: list[dict[str, Any]] = []
    kinds = ["worker-kill", "node-kill", "node-term"]
    if broker is not None and settings.broker_restarts:
        kinds.append("broker-restart")
    rows: list[dict[str, Any]] = []
    csv_path = out / "soak.csv"
    began = time.monotonic()

    async def fault(kind: str) -> None:
        at = time.monotonic() - began
        detail = ""
        if kind == "worker-kill":
            workers = node.workers()
            if not workers:
                return
            pid = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            detail = f"worker {pid}"
        elif kind in ("node-kill", "node-term"):
            sig = signal.SIGKILL if kind == "node-kill" else signal.SIGTERM
            code = await node.stop(sig)
            node.start()
            detail = f"exit {code}"
            if kind == "node-term" and code != 0:
                logger.error("the node did not exit cleanly on SIGTERM (%s)", code)
        elif kind == "broker-restart":
            # From this thread: the JVM dies with the thread that started it. The loop
            # (source, sink, sampling) stands still meanwhile, as a camera's would.
            broker.restart()
            detail = "broker back"
        faults.append({"t": round(at, 1), "kind": kind, "detail": detail})
        logger.info("fault at %.0f s: %s (%s)", at, kind, detail)

    async def sample(writer: Any, last: dict[str, float]) -> None:
        t = time.monotonic() - began
        window = stats.take_latencies()
        received = sum(stats.received.values())
        node_rss, node_fds, node_procs = (0.0, 0, 0)
        if node.pid is not None:
            node_rss, node_fds, node_procs = _tree_usage(node.pid)
        soak_rss = _own_rss(me)
        dt = max(t - last["t"], 1e-6)
        row = {
            "t": round(t, 2),
            "sent": len(stats.sent),
            "received": received,
            "unique": len(stats.received),
            "duplicates": stats.duplicates,
            "pending": len(stats.sent - stats.received.keys()),
            "dead_lettered": stats.dead,
            "rate_in": round((len(stats.sent) - last["sent"]) / dt, 2),
            "rate_out": round((received - last["received"]) / dt, 2),
            "latency_p50_ms": round(_pct(window, 50), 1),
            "latency_p95_ms": round(_pct(window, 95), 1),
            "latency_max_ms": round(max(window, default=0.0), 1),
            "node_rss_mb": round(node_rss, 1),
            "node_fds": node_fds,
            "node_procs": node_procs,
            "soak_rss_mb": round(soak_rss, 1),
            "faults": len(faults),
            "last_fault": faults[-1]["kind"] if faults else "",
        }
        last.update(t=t, sent=len(stats.sent), received=received)
        rows.append(row)
        writer.writerow(row)

    source_task = sink_task = None
    node.start()
    try:
        with csv_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            sink_task = asyncio.create_task(sink.run())
            source_task = asyncio.create_task(source.run())
            duration = settings.minutes * 60
            next_fault = settings.fault_every
            next_sample = settings.sample_every
            k = 0
            last = {"t": 0.0, "sent": 0, "received": 0}
            while (elapsed := time.monotonic() - began) < duration:
                for task in (source_task, sink_task):
                    if task.done():
                        task.result()
                        raise RuntimeError("a pipeline stage stopped")
                if elapsed >= next_sample:
                    next_sample += settings.sample_every
                    await sample(writer, last)
                    fh.flush()
                if elapsed >= next_fault:
                    next_fault += settings.fault_every
                    await fault(kinds[k % len(kinds)])
                    k += 1
                await asyncio.sleep(0.05)
            source.stop()
            await source_task
            logger.info("load stopped after %.0f s; draining", time.monotonic() - began)
            drain_deadline = time.monotonic() + settings.drain_timeout
            while stats.sent - stats.received.keys() and time.monotonic() < drain_deadline:
                await asyncio.sleep(0.5)
                if time.monotonic() >= began + next_sample:
                    next_sample += settings.sample_every
                    await sample(writer, last)
                    fh.flush()
            await asyncio.sleep(1.0)  # let late duplicates arrive before the final count
            await sample(writer, last)
    finally:
        if source_task is not None and not source_task.done():
            source.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(source_task, 30)
        sink.stop()
        if sink_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sink_task, 30)
        if node.proc is not None and node.proc.poll() is None:
            await node.stop(signal.SIGTERM)
        node.cleanup()
    dead_ids = await asyncio.to_thread(_dead_letter_ids, bootstrap, dlq)
    stats.dead = len(dead_ids)
    # Lost: neither at the sink nor in the dead-letter topic.
    lost = sorted(stats.sent - stats.received.keys() - set(dead_ids))
    summary = _summary(
        settings, stats, rows, faults, lost, dead_ids, node.starts, time.monotonic() - began
    )
    write_text_atomic(out / "soak.json", json.dumps(summary, indent=1) + "\n")
    _plot(rows, faults, out / "soak.png", summary)
    return summary


def _summary(
    settings: SoakSettings,
    stats: Stats,
    rows: list[dict[str, Any]],
    faults: list[dict[str, Any]],
    lost: list[int],
    dead_ids: list[int],
    starts: int,
    seconds: float,
) -> dict[str, Any]:
    lat = stats.all_latencies + stats.latencies
    # Steady state: the middle half of the load phase, away from start-up and the drain.
    loaded = [r for r in rows if r["t"] <= settings.minutes * 60]
    mid = loaded[len(loaded) // 4 : 3 * len(loaded) // 4] or loaded
    rss = [r["node_rss_mb"] for r in mid if r["node_rss_mb"]]
    fds = [r["node_fds"] for r in mid if r["node_fds"]]
    soak_rss = [r["soak_rss_mb"] for r in loaded]
    try:
        from benchmarks.common import machine_info

        machine = machine_info()
    except Exception as exc:  # the description must never cost the result
        machine = {"error": repr(exc)}
    return {
        "schema": "fogverse-soak/1",
        "settings": {
            k: (_shown(v) if isinstance(v, Path) else v)
            for k, v in settings.__dict__.items()
            if k != "bootstrap"
        },
        "seconds": round(seconds, 1),
        "sent": len(stats.sent),
        "received": sum(stats.received.values()),
        "unique": len(stats.received),
        "lost": len(lost),
        "lost_ids": lost[:50],
        "dead_lettered_ids": dead_ids[:50],
        "duplicates": stats.duplicates,
        "dead_lettered": stats.dead,
        "faults": faults,
        "fault_counts": dict(collections.Counter(f["kind"] for f in faults)),
        "node_starts": starts,
        "latency_ms": {
            "p50": round(_pct(lat, 50), 1),
            "p95": round(_pct(lat, 95), 1),
            "p99": round(_pct(lat, 99), 1),
            "max": round(max(lat, default=0.0), 1),
        },
        "node_rss_mb": {
            "min": min(rss, default=0.0),
            "median": statistics.median(rss) if rss else 0.0,
            "max": max(rss, default=0.0),
        },
        "node_fds": {"min": min(fds, default=0), "max": max(fds, default=0)},
        "soak_rss_mb": {
            "first": soak_rss[0] if soak_rss else 0.0,
            "last": soak_rss[-1] if soak_rss else 0.0,
        },
        "machine": machine,
    }


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (results are committed)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _plot(
    rows: list[dict[str, Any]], faults: list[dict[str, Any]], path: Path, summary: dict[str, Any]
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a bench extra
        logger.warning("matplotlib is not installed: no plot")
        return
    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    panels = [
        (axes[0], [("rate_in", "frames/s in"), ("rate_out", "frames/s out")], "frames/s"),
        (
            axes[1],
            [("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_max_ms", "max")],
            "end-to-end latency (ms)",
        ),
        (
            axes[2],
            [("node_rss_mb", "node + workers"), ("soak_rss_mb", "source + sink")],
            "MB",
        ),
        (axes[3], [("node_fds", "node fds"), ("pending", "frames pending")], "count"),
    ]
    for ax, series, label in panels:
        for key, name in series:
            ax.plot(t, [r[key] for r in rows], label=name, linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        for f in faults:
            ax.axvline(f["t"] / 60, color="grey", alpha=0.35, linewidth=0.8, linestyle="--")
    axes[1].set_yscale("symlog", linthresh=100)
    axes[1].set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes (dashed lines: faults)")
    m = summary.get("machine", {})
    fig.suptitle(
        f"FogVerse soak: {summary['sent']} frames, lost {summary['lost']}, "
        f"duplicated {summary['duplicates']}, {len(faults)} faults "
        f"({', '.join(f'{k} {v}' for k, v in summary['fault_counts'].items())})\n"
        f"{m.get('cpus')} CPUs {m.get('cpu_model', '')}, {m.get('memory_gb')} GB, "
        f"Python {m.get('python')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--short", action="store_true", help="under 2 minutes (the CI version)")
    p.add_argument("--minutes", type=float, help="load duration (default 30; --short: 0.75)")
    p.add_argument("--rate", type=float, help="frames/s from the source (default 25)")
    p.add_argument("--processes", type=int, help="worker processes of the node (default 2)")
    p.add_argument("--fault-every", type=float, help="seconds between faults (default 60)")
    p.add_argument("--sample-every", type=float, help="seconds between CSV rows (default 5)")
    p.add_argument("--no-broker-restarts", action="store_true", help="skip broker restarts")
    p.add_argument(
        "--bootstrap", help="Kafka to use (default FOGVERSE_BOOTSTRAP, else a local one)"
    )
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("aiokafka", "fogverse"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    overrides = {
        key: value
        for key, value in {
            "minutes": args.minutes,
            "rate": args.rate,
            "processes": args.processes,
            "fault_every": args.fault_every,
            "sample_every": args.sample_every,
            "out": args.out,
        }.items()
        if value is not None
    }
    settings = SoakSettings.short(**overrides) if args.short else SoakSettings(**overrides)
    if args.no_broker_restarts:
        settings.broker_restarts = False
    settings.bootstrap = args.bootstrap or os.environ.get("FOGVERSE_BOOTSTRAP") or None
    broker = None
    if settings.bootstrap is None:
        from fogverse.broker import LocalKafka

        # Crash restarts would wait for the old registration to expire (9 s by default).
        broker = LocalKafka(properties={"broker.session.timeout.ms": 3000})
        broker.start()
        settings.bootstrap = broker.bootstrap
    result: dict[str, Any] = {}

    async def soak() -> None:
        result.update(await run_soak(settings, broker))

    try:
        run(soak())  # uvloop, as nodes run
    finally:
        if broker is not None:
            broker.stop()
    logger.info(
        "soak: %d frames sent, %d received (%d unique), lost %d, duplicated %d, "
        "dead-lettered %d; latency p50 %.0f ms p95 %.0f ms; node memory %.0f-%.0f MB; "
        "results in %s",
        (summary := result)["sent"],
        summary["received"],
        summary["unique"],
        summary["lost"],
        summary["duplicates"],
        summary["dead_lettered"],
        summary["latency_ms"]["p50"],
        summary["latency_ms"]["p95"],
        summary["node_rss_mb"]["min"],
        summary["node_rss_mb"]["max"],
        settings.out,
    )
    return 0 if summary["lost"] == 0 and summary["sent"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
