"""What the example pipelines share besides their nodes: a sink that measures, running a whole
pipeline in one process until every frame arrived, topics, a broker, and the summary.

None of this is needed to deploy a node; it makes a demo start, measure and stop by itself.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fogverse import Consumer, ParallelConsumer, Processor, Producer, Record

__all__ = [
    "LatencyStats",
    "MeasuringSink",
    "ReadyParallelConsumer",
    "Summary",
    "bootstrap_servers",
    "create_topics",
    "delete_topics",
    "new_prefix",
    "percentiles",
    "setup_logging",
    "supervise",
]

logger = logging.getLogger("examples")


# ---- measuring -------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Iterable[int] = (50, 95, 99)) -> dict[str, float]:
    qs = tuple(qs)
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}


@dataclass
class LatencyStats:
    """End-to-end latencies per camera, unique frames and redeliveries seen by a sink."""

    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    seen: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0
    first_out: float | None = None
    last_out: float | None = None

    def add(self, cam: str, frame: int, latency_ms: float, now: float) -> bool:
        """Count one output; ``False`` when this frame was counted before (a redelivery)."""
        if (cam, frame) in self.seen:
            self.duplicates += 1
            return False
        self.seen.add((cam, frame))
        self.latencies_ms.setdefault(cam, []).append(latency_ms)
        if self.first_out is None:
            self.first_out = now
        self.last_out = now
        return True

    @property
    def count(self) -> int:
        return len(self.seen)

    def all_latencies(self) -> list[float]:
        return [v for values in self.latencies_ms.values() for v in values]

    def fps(self) -> float:
        """Output frames per second between the first and the last output."""
        if self.count < 2 or self.first_out is None or self.last_out is None:
            return 0.0
        return (self.count - 1) / max(self.last_out - self.first_out, 1e-9)


class MeasuringSink(Consumer):
    """The last stage: for every frame, the end-to-end latency from its ``timestamp`` header
    (capture time) to now, a CSV row, and a progress line every ``progress_interval`` s.

    Subclasses do their work in :meth:`handle` and return extra CSV cells
    (named by ``extra_columns``). ``done`` is set once :meth:`expect`'s number of unique
    frames arrived; ``assigned`` once the group gave this node its partitions.
    """

    extra_columns: tuple[str, ...] = ()

    def __init__(
        self,
        consumer_topic: str,
        *,
        csv_path: Path | None = None,
        progress_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(consumer_topic, **kwargs)
        self.csv_path = csv_path
        self.progress_interval = progress_interval
        self.stats = LatencyStats()
        self.progress = asyncio.Event()
        self.done = asyncio.Event()
        self.assigned = asyncio.Event()
        self.expected: int | None = None
        self._csv_file: Any = None
        self._csv: Any = None
        self._window: list[float] = []
        self._window_start = time.monotonic()

    def handle(self, data: Any, record: Record) -> Sequence[Any]:
        """The work done on one frame (in a worker thread); returns the ``extra_columns``
        cells for its row."""
        return ()

    def expect(self, frames: int) -> None:
        self.expected = frames
        if self.stats.count >= frames:
            self.done.set()

    async def process(self, data: Any) -> None:
        record = self.message
        # The work runs in a thread: OpenCV releases the GIL, so a detector or video writer
        # uses another core while the event loop keeps serving the other nodes.
        extra = await asyncio.to_thread(self.handle, data, record)
        now = time.time()
        cam = (record.header("cam") or b"?").decode()
        frame = int(record.header("frame") or -1)
        stamp = float(record.header("timestamp") or now)
        latency_ms = (now - stamp) * 1000
        if self.stats.add(cam, frame, latency_ms, now):
            if self._csv is not None:
                self._csv.writerow([frame, cam, f"{stamp:.6f}", f"{latency_ms:.2f}", *extra])
            self._window.append(latency_ms)
        self.progress.set()
        if self.expected is not None and self.stats.count >= self.expected:
            self.done.set()
        self._log_progress()
        return None  # a sink sends nothing on

    def _before_start(self) -> None:
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv_file = self.csv_path.open("w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(["frame", "cam", "timestamp", "latency_ms", *self.extra_columns])

    def _after_close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()

    async def _on_assign(self, tps: Any) -> None:
        await super()._on_assign(tps)
        self.assigned.set()

    def _log_progress(self) -> None:
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < self.progress_interval or not self._window:
            return
        lat = percentiles(self._window, (50, 95))
        total = f"/{self.expected}" if self.expected is not None else ""
        logger.info(
            "%d%s frames out | %5.1f frames/s | latency p50 %4.0f ms  p95 %4.0f ms",
            self.stats.count,
            total,
            len(self._window) / elapsed,
            lat["p50"],
            lat["p95"],
        )
        self._window = []
        self._window_start = now


class ReadyParallelConsumer(ParallelConsumer):
    """A ParallelConsumer whose ``assigned`` event tells when its group has formed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.assigned = asyncio.Event()

    async def _on_assign(self, tps: Any) -> None:
        await super()._on_assign(tps)
        self.assigned.set()


@dataclass
class Summary:
    frames_in: int
    frames_out: int
    lost: int
    duplicates: int
    fps: float
    latency_ms: dict[str, float]
    per_cam: dict[str, dict[str, float]]
    settings: dict[str, Any]
    interrupted: bool = False
    """Stopped by a signal: frames not out yet were in flight, not lost."""

    @classmethod
    def of(
        cls,
        frames_in: dict[str, int],
        stats: LatencyStats,
        settings: dict[str, Any],
        interrupted: bool = False,
    ) -> Summary:
        def latency(values: list[float]) -> dict[str, float]:
            lat = percentiles(values)
            lat["max"] = max(values, default=float("nan"))
            lat["mean"] = float(np.mean(values)) if values else float("nan")
            return {k: round(v, 2) for k, v in lat.items()}

        per_cam = {
            cam: {
                "in": frames_in.get(cam, 0),
                "out": len(stats.latencies_ms.get(cam, ())),
                **latency(stats.latencies_ms.get(cam, [])),
            }
            for cam in sorted(set(frames_in) | set(stats.latencies_ms))
        }
        total_in = sum(frames_in.values())
        missing = max(total_in - stats.count, 0)
        return cls(
            total_in,
            stats.count,
            0 if interrupted else missing,
            stats.duplicates,
            round(stats.fps(), 2),
            latency(stats.all_latencies()),
            per_cam,
            settings,
            interrupted,
        )

    def log(self) -> None:
        lat = self.latency_ms
        logger.info("---- summary ----")
        if self.interrupted:
            logger.info(
                "interrupted: %d frames were still in flight (left uncommitted in Kafka)",
                self.frames_in - self.frames_out,
            )
        logger.info(
            "frames in %d | out %d | lost %d | duplicates %d",
            self.frames_in,
            self.frames_out,
            self.lost,
            self.duplicates,
        )
        logger.info("throughput %.1f frames/s", self.fps)
        logger.info(
            "end-to-end latency p50 %.1f ms | p95 %.1f ms | p99 %.1f ms | max %.1f ms",
            lat["p50"],
            lat["p95"],
            lat["p99"],
            lat["max"],
        )
        if len(self.per_cam) > 1:
            for cam, c in self.per_cam.items():
                logger.info(
                    "  %-6s in %4d | out %4d | p50 %5.1f ms | p95 %5.1f ms",
                    cam,
                    c["in"],
                    c["out"],
                    c["p50"],
                    c["p95"],
                )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


# ---- running a whole pipeline in one process -------------------------------------------------


async def supervise(
    sources: Sequence[Producer],
    preprocess: ReadyParallelConsumer,
    sink: MeasuringSink,
    *,
    processes: int,
    max_running_task: int | None,
    processor: Processor,
    idle_timeout: float = 30.0,
) -> tuple[dict[str, int], bool]:
    """Run the pipeline until the sources end and the sink got every frame (or nothing came
    for ``idle_timeout`` s). Returns the frames sent per camera (each source has a ``cam``
    name and counts the frames it ``sent``) and whether a signal interrupted the run.

    SIGINT/SIGTERM stop every node (FogVerse's own handlers); this then returns early, and
    the frames still in flight stay in Kafka, uncommitted.
    """
    consumers = {
        asyncio.create_task(preprocess.run(processes, max_running_task, processor)),
        asyncio.create_task(sink.run()),
    }
    producers: set[asyncio.Task[None]] = set()
    try:
        # The cameras start once both consumer groups formed: no frame waits for a join.
        ready = [asyncio.create_task(n.assigned.wait()) for n in (preprocess, sink)]
        if not await _until(ready, consumers, "the consumers to join their groups", 60, sink):
            return {}, True
        producers = {asyncio.create_task(s.run()) for s in sources}
        logger.info("pipeline ready: %d camera(s) streaming", len(sources))
        interrupted = not await _until(list(producers), consumers, "the cameras", None, sink)
        sent = {s.cam: s.sent for s in sources}  # type: ignore[attr-defined]
        if interrupted:
            return sent, True
        sink.expect(sum(sent.values()))
        while not sink.done.is_set():
            sink.progress.clear()
            waiters = {
                asyncio.create_task(sink.done.wait()),
                asyncio.create_task(sink.progress.wait()),
            }
            done, _ = await asyncio.wait(
                waiters | consumers, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for w in waiters:
                w.cancel()
            if not done:
                logger.warning(
                    "no frame for %.0f s: %d of %d arrived",
                    idle_timeout,
                    sink.stats.count,
                    sink.expected,
                )
                break
            if done & consumers:
                break
        # Nothing but a signal stops the sink before the ``finally`` below.
        return sent, sink.stopping
    finally:
        for node in (preprocess, sink, *sources):
            node.stop()
        results = await asyncio.gather(*consumers, *producers, return_exceptions=True)
        # A node's own failure explains more than whatever ended the waiting above.
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]


async def _until(
    tasks: Sequence[asyncio.Task[Any]],
    nodes: set[asyncio.Task[Any]],
    what: str,
    timeout: float | None,
    sink: MeasuringSink,
) -> bool:
    """Wait for all ``tasks``: True once they are done, False if a signal stopped the
    pipeline first (every node is then stopping, and which of them ends first is a race).
    A node task that ends first on its own (it crashed), or the timeout, raises."""
    pending = set(tasks)
    try:
        async with asyncio.timeout(timeout):
            while pending:
                done, _ = await asyncio.wait(pending | nodes, return_when=asyncio.FIRST_COMPLETED)
                if done & nodes:
                    if sink.stopping:
                        return False
                    raise RuntimeError(f"a pipeline node stopped while waiting for {what}")
                pending -= done
            return True
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None
    finally:
        for task in pending:
            task.cancel()


# ---- broker and topics -----------------------------------------------------------------------

# librdkafka (under confluent-kafka's AdminClient) prints informational lines to stderr.
_ADMIN_CONF = {"log_level": 3}


def new_prefix(name: str) -> str:
    """A fresh topic and group prefix, so that runs never see each other's frames."""
    return f"fogverse-{name}-{secrets.token_hex(4)}"


async def create_topics(
    bootstrap: str, topics: dict[str, dict[str, str]], partitions: int = 1
) -> None:
    from fogverse.admin import KafkaAdmin

    admin = KafkaAdmin(bootstrap, _ADMIN_CONF)
    for name, config in topics.items():
        await admin.create_topic(name, partitions, config=config)


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from fogverse.admin import KafkaAdmin

    admin = KafkaAdmin(bootstrap, _ADMIN_CONF)
    for name, future in admin.client.delete_topics(topics, operation_timeout=10).items():
        try:
            await asyncio.to_thread(future.result, 15)
        except Exception as exc:  # best effort: the run's results do not depend on it
            logger.warning("could not delete topic %s: %s", name, exc)


def bootstrap_servers(stack: ExitStack, requested: str | None) -> str:
    """``requested``, else FOGVERSE_BOOTSTRAP, else a local broker stopped with ``stack``."""
    bootstrap = requested or os.environ.get("FOGVERSE_BOOTSTRAP")
    if bootstrap:
        return bootstrap
    from fogverse.broker import LocalKafka

    logger.info("starting a local Kafka broker (pass --bootstrap to use your own)")
    kafka = stack.enter_context(LocalKafka())
    return kafka.bootstrap


class _DropCoordinatorRetries(logging.Filter):
    # A fresh broker creates its offsets topic on the first group request; aiokafka logs the
    # retry that follows as an error although nothing is wrong.
    def filter(self, record: logging.LogRecord) -> bool:
        return "GroupCoordinatorNotAvailable" not in record.getMessage()


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # group joins etc. at INFO
    logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_DropCoordinatorRetries())
