"""End-to-end benchmarks on a real Kafka broker.

``pipeline``: a camera-like source (pre-encoded 720p JPEG frames with ``cam``, ``frame`` and
``timestamp`` headers, at a fixed rate per camera or as fast as it can) -> topic ->
``ParallelConsumer`` (JPEG decode, letterbox to 640x640, JPEG re-encode in worker processes:
the example video pipeline's default) -> topic -> a sink that records each frame's
end-to-end latency from its ``timestamp`` header. All three nodes share this process's event
loop, as in ``examples/video_pipeline.py``. The timestamp is the frame's scheduled capture
time, so a source falling behind counts against the latency. Warm-up frames go through first
(group joins, worker start-up) and are not counted. Consumer lag is sampled from the
brokers' committed offsets while it runs; the preprocessing node runs with ``profile=True``
so its per-stage times show where the latency goes.

``passthrough``: 1 KiB messages consumed and produced again, at least once: a plain
confluent-kafka loop (consume a batch, produce each record with acks=all and idempotence,
flush, commit) against a FogVerse ``Consumer`` node on each transport, and the node with
``profile=True`` at its default sample (profiling overhead). Each run reads the same source
topic from its start into a fresh topic and group; the clock runs from the first record
consumed until the output topic holds every record (same criterion for all); runs are
interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.common import (
    Frames,
    interleaved,
    machine_info,
    make_frames,
    median_ratio,
    now_iso,
    progress,
    result,
    run_async,
    summarize,
)
from fogverse import Consumer, Producer, Record
from fogverse.admin import admin_client
from fogverse.node.parallel import ParallelConsumer

__all__ = [
    "TRANSPORTS",
    "KafkaSettings",
    "Scenario",
    "available_transports",
    "bench_passthrough",
    "bench_pipeline",
    "bench_scaling",
    "broker",
    "default_transport",
    "plain_loop",
    "run_node_passthrough",
    "run_scenario",
    "settings_for",
    "use_transport",
]

logger = logging.getLogger(__name__)

TRANSPORTS = ("confluent",)
LOOP = "confluent-kafka loop"
LOOP_UNTUNED = "confluent-kafka loop, librdkafka defaults"
QUIX = "quixstreams"
_MODEL_SIZE = 640
_LATENCY_SAMPLES = 2000


@dataclass(frozen=True)
class Scenario:
    name: str
    cameras: int
    fps: float | None
    """Frames per second per camera; ``None``: as fast as the source can send."""
    frames: int
    """Measured frames, all cameras together."""
    reduced_decode: bool = True
    """Decode each JPEG at the smallest DCT scale covering the letterbox (False: full size,
    the path before reduced decoding, measured beside it)."""
    max_running_task: int | None = None
    """None: the settings' value."""


@dataclass(frozen=True)
class KafkaSettings:
    scenarios: tuple[Scenario, ...]
    processes: int
    max_running_task: int
    pipeline_transport: str
    passthrough_messages: int
    passthrough_reps: int
    passthrough_transports: tuple[str, ...]
    profile_transport: str  # whose per-stage profile and cProfile run are reported
    passthrough_size: int = 1024
    passthrough_sizes: tuple[tuple[int, int], ...] = ((100, 150_000), (100 * 1024, 3_000))
    """(message bytes, messages) of the by-size rows."""
    passthrough_size_reps: int = 3
    lag_interval: float = 0.25
    warmup_frames: int = 4
    drain_timeout: float = 60.0
    jpeg_quality: int = 90
    cprofile_top: int = 15
    max_rate_reps: int = 3
    """Interleaved repetitions of each max-rate pair (reduced decode, full-size decode)."""
    max_rate_cameras: tuple[int, ...] = (1, 4)
    max_rate_frames: int = 600
    scaling_cameras: tuple[int, ...] = (1, 2, 4, 8)
    scaling_seconds: float = 10.0
    """Seconds of 30 frames/s video per camera in each camera-scaling row."""
    scaling_max_running_tasks: tuple[int, ...] = (1, 2, 4, 8, 16)
    scaling_frames: int = 400
    """Frames of each max_running_task row (one camera, as fast as the source can send)."""


def settings_for(quick: bool) -> KafkaSettings:
    cores = os.cpu_count() or 1
    transports = tuple(available_transports())
    profiled = default_transport()
    if quick:
        return KafkaSettings(
            scenarios=(Scenario("30fps-1cam", 1, 30.0, 60),),
            processes=cores,
            max_running_task=4,
            pipeline_transport=default_transport(),
            passthrough_messages=3000,
            passthrough_reps=1,
            passthrough_sizes=((100, 3000), (100 * 1024, 200)),
            passthrough_size_reps=1,
            passthrough_transports=transports,
            profile_transport=profiled,
            lag_interval=0.2,
            warmup_frames=2,
            drain_timeout=30.0,
            max_rate_reps=1,
            max_rate_cameras=(1,),
            max_rate_frames=40,
            scaling_cameras=(2,),
            scaling_seconds=1.0,
            scaling_max_running_tasks=(),  # the same code path as the camera row
            scaling_frames=30,
        )
    return KafkaSettings(
        scenarios=(
            Scenario("30fps-1cam", 1, 30.0, 1800),
            Scenario("30fps-4cam", 4, 30.0, 1800),
        ),
        processes=cores,
        max_running_task=4,
        pipeline_transport=default_transport(),
        passthrough_messages=150_000,
        passthrough_reps=7,
        passthrough_transports=transports,
        profile_transport=profiled,
    )


# ---- broker, topics, transports -----------------------------------------------------------


@contextlib.contextmanager
def broker(bootstrap: str | None = None) -> Iterator[str]:
    """``bootstrap``, else FOGVERSE_BOOTSTRAP, else a local broker started for the run."""
    with broker_process(bootstrap) as (servers, _):
        yield servers


@contextlib.contextmanager
def broker_process(bootstrap: str | None = None) -> Iterator[tuple[str, int | None]]:
    """:func:`broker`, with the local broker's JVM pid (None for an external broker), for a
    study that counts the broker's CPU."""
    external = bootstrap or os.environ.get("FOGVERSE_BOOTSTRAP")
    if external:
        yield external, None
        return
    from fogverse.broker import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap, kafka.pid


# Node settings the environment would impose on every node (topics, groups, profiling): the
# benchmarks choose their own, so these are set aside while they run.
_NODE_ENV = (
    "CONSUMER_TOPIC",
    "CONSUMER_SERVERS",
    "PRODUCER_TOPIC",
    "PRODUCER_SERVERS",
    "GROUP_ID",
    "CLIENT_ID",
    "FOGVERSE_PROFILE",
    "FOGVERSE_PROFILE_CSV",
    "FOGVERSE_DYNAMIC_PARTITIONS",
)


@contextlib.contextmanager
def _own_node_settings() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in _NODE_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _admin(bootstrap: str) -> Any:
    return admin_client(bootstrap)


def create_topic(admin: Any, prefix: str, partitions: int = 1) -> str:
    """A fresh topic whose partitions all have a leader (ready to produce to and read)."""
    from confluent_kafka.admin import NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(30)
    deadline = time.monotonic() + 30
    while True:
        meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
        ):
            return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} has no leader for all {partitions} partitions")
        time.sleep(0.05)


def delete_topics(admin: Any, names: list[str]) -> None:
    for name, fut in admin.delete_topics(names, operation_timeout=10).items():
        try:
            fut.result(15)
        except Exception as exc:
            logger.warning("could not delete benchmark topic %s: %s", name, exc)


def available_transports() -> list[str]:
    """Transports a node can run on (one since issue 26 deleted the aiokafka one)."""
    return list(TRANSPORTS)


def _transport_of(node: Consumer | Producer) -> str:
    transport = node.producer if node.consumer is None else node.consumer  # type: ignore[attr-defined]
    module = type(transport).__module__
    return "confluent" if "confluent" in module else module.rsplit(".", 1)[-1]


def default_transport() -> str:
    """The transport a Consumer node gets without being told."""
    with _own_node_settings():
        node = Consumer("probe", "127.0.0.1:9", "probe")
    return _transport_of(node)


def use_transport(
    node: Consumer | Producer,
    transport: str,
    *,
    consumer_conf: dict[str, Any] | None = None,
    producer_conf: dict[str, Any] | None = None,
) -> None:
    """Put ``node`` on ``transport`` (``"confluent"``), with these client settings, before it
    runs."""
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose from {TRANSPORTS}")
    from fogverse.transport.confluent import ConfluentConsumerTransport as ConsumerTransport
    from fogverse.transport.confluent import ConfluentProducerTransport as ProducerTransport

    client_id = node.client_id
    if isinstance(node, Consumer):
        node.consumer = ConsumerTransport(
            node.consumer_topic,
            node.consumer_servers,
            node.group_id,
            client_id=client_id,
            config=consumer_conf,
        )
    node.producer = ProducerTransport(
        node.producer_servers, client_id=client_id, config=producer_conf
    )


def _low_latency(transport: str) -> dict[str, Any]:
    # The example's LOW_LATENCY (examples/video_pipeline.py), as librdkafka names it: a 1 ms
    # linger, and one request in flight, which stops the idempotent producer's spin
    # (tests/examples/test_examples.py holds the two equal).
    return {"linger.ms": 1, "max.in.flight.requests.per.connection": 1}


# ---- pipeline: nodes ----------------------------------------------------------------------


class FrameSource(Producer):
    """Sends pre-encoded JPEG frames, round-robin over cameras, keyed and partitioned by
    camera, paced at ``fps`` per camera (``None``: unpaced). Warm-up frames go first; the
    measured ones start once ``warm_done`` is set."""

    def __init__(
        self,
        jpegs: list[bytes],
        *,
        cameras: int,
        fps: float | None,
        frames: int,
        warmup: int,
        warm_done: asyncio.Event,
        warm_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(output_codec="bytes", **kwargs)
        self.jpegs, self.cameras, self.fps, self.frames = jpegs, cameras, fps, frames
        self.warmup, self.warm_done, self.warm_timeout = warmup, warm_done, warm_timeout
        self.sent = 0
        self.measured = 0
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.started = asyncio.Event()
        self.finished_at = 0.0

    async def receive(self) -> Record:
        if self.sent < self.warmup:
            return self._record(self.sent, time.time(), warmup=True)
        if self.sent == self.warmup and not self.started.is_set():
            await asyncio.wait_for(self.warm_done.wait(), self.warm_timeout)
            self.t0, self.t0_wall = time.perf_counter(), time.time()
            self.started.set()
        i = self.measured
        if i >= self.frames:
            self.finished_at = time.perf_counter()
            raise StopAsyncIteration
        if self.fps:
            offset = i / (self.fps * self.cameras)
            delay = self.t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = self.t0_wall + offset  # the camera's capture time, late or not
        else:
            stamp = time.time()
        self.measured += 1
        return self._record(i, stamp, warmup=False)

    def _record(self, i: int, stamp: float, *, warmup: bool) -> Record:
        self.sent += 1
        cam = f"cam{i % self.cameras}"
        headers = [
            ("cam", cam.encode()),
            ("frame", str(i).encode()),
            ("timestamp", f"{stamp:.6f}".encode()),
        ]
        if warmup:
            headers.append(("warmup", b"1"))
        return Record(self.jpegs[i % len(self.jpegs)], key=cam.encode(), headers=headers)


class LatencySink(Consumer):
    """Records each measured frame's latency (now - its ``timestamp`` header); sends nothing."""

    def __init__(self, *args: Any, warmup: int, expected: int, **kwargs: Any) -> None:
        super().__init__(*args, input_codec="bytes", **kwargs)
        self.warmup, self.expected = warmup, expected
        self.warm_seen = 0
        self.warm_done = asyncio.Event()
        self.all_done = asyncio.Event()
        self.seen: set[tuple[bytes, bytes]] = set()
        self.duplicates = 0
        self.latencies: list[tuple[float, float]] = []  # (capture time, latency), seconds

    def process(self, data: Any) -> None:
        now = time.time()
        record: Record = self.message
        if record.header("warmup"):
            self.warm_seen += 1
            if self.warm_seen >= self.warmup:
                self.warm_done.set()
            return None
        ident = (record.header("cam") or b"", record.header("frame") or b"")
        if ident in self.seen:
            self.duplicates += 1
            return None
        self.seen.add(ident)
        stamp = float(record.header("timestamp") or b"nan")
        self.latencies.append((stamp, now - stamp))
        if len(self.seen) >= self.expected:
            self.all_done.set()
        return None


class LagMonitor:
    """Samples, every ``interval`` seconds in a thread, each group's lag on its topic from
    the broker's committed offsets, plus in-process counters."""

    def __init__(
        self,
        bootstrap: str,
        groups: dict[str, tuple[str, str, int]],
        counters: Callable[[], dict[str, int]],
        interval: float,
    ) -> None:
        from confluent_kafka import Consumer as RawConsumer
        from confluent_kafka import TopicPartition

        self.interval = interval
        self.counters = counters
        self.samples: list[dict[str, float]] = []
        self._watch = []
        for label, (group, topic, partitions) in groups.items():
            client = RawConsumer(
                {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
            )
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            self._watch.append((label, client, tps))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lag", daemon=True)
        self._t0 = 0.0

    def _lag(self, client: Any, tps: list[Any]) -> int:
        committed = client.committed(tps, timeout=5)
        lag = 0
        for tp, c in zip(tps, committed, strict=True):
            low, high = client.get_watermark_offsets(tp, timeout=5, cached=False)
            lag += high - (c.offset if c.offset >= 0 else low)
        return lag

    def _run(self) -> None:
        while not self._stop.is_set():
            sample: dict[str, float] = {"t": round(time.perf_counter() - self._t0, 3)}
            for label, client, tps in self._watch:
                try:
                    sample[label] = self._lag(client, tps)
                except Exception as exc:  # a slow broker: skip this sample
                    logger.debug("lag sample failed: %s", exc)
            sample.update(self.counters())
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for _, client, _ in self._watch:
            client.close()


def _rss_mb(node: ParallelConsumer) -> dict[str, float]:
    """Resident memory now: this process (all three nodes) and the pool's workers."""
    import psutil

    workers = 0
    for pid in node.pool.worker_pids if node.pool is not None else ():
        with contextlib.suppress(psutil.Error):
            workers += psutil.Process(pid).memory_info().rss
    parent = psutil.Process().memory_info().rss
    return {"rss_parent_mb": round(parent / 2**20, 1), "rss_workers_mb": round(workers / 2**20, 1)}


def _preprocessor(quality: int, reduced_decode: bool = True) -> Any:
    from processors import Compose, DecodeImage, EncodeJPEG, Letterbox

    decode = DecodeImage(fit=_MODEL_SIZE) if reduced_decode else DecodeImage()
    return Compose(decode, Letterbox(_MODEL_SIZE), EncodeJPEG(quality))


# ---- pipeline: one scenario ---------------------------------------------------------------


async def run_scenario(
    bootstrap: str, scenario: Scenario, settings: KafkaSettings, frames: Frames
) -> dict[str, Any]:
    """Run one pipeline scenario; returns its metrics."""
    admin = _admin(bootstrap)
    prefix = f"bench-{scenario.name}"
    src = create_topic(admin, f"{prefix}-frames", scenario.cameras)
    out = create_topic(admin, f"{prefix}-pre", scenario.cameras)
    groups = {"pre": f"{src}-pre", "sink": f"{src}-sink"}
    transport = settings.pipeline_transport
    warmup = settings.warmup_frames * scenario.cameras
    sink = LatencySink(out, bootstrap, groups["sink"], warmup=warmup, expected=scenario.frames)
    pre = ParallelConsumer(src, bootstrap, groups["pre"], producer_topic=out, input_codec="bytes")
    pre.profile = True
    # A frame costs milliseconds, a stamp microseconds: time every frame, not a sample.
    pre.profile_sample = 1
    source = FrameSource(
        frames.jpeg,
        cameras=scenario.cameras,
        fps=scenario.fps,
        frames=scenario.frames,
        warmup=warmup,
        warm_done=sink.warm_done,
        warm_timeout=settings.drain_timeout,
        producer_topic=src,
        producer_servers=bootstrap,
    )
    use_transport(source, transport, producer_conf=_low_latency(transport))
    use_transport(pre, transport, producer_conf=_low_latency(transport))
    use_transport(sink, transport)
    monitor = LagMonitor(
        bootstrap,
        {
            "lag_pre": (groups["pre"], src, scenario.cameras),
            "lag_sink": (groups["sink"], out, scenario.cameras),
        },
        lambda: {"sent": source.measured, "arrived": len(sink.seen), **_rss_mb(pre)},
        settings.lag_interval,
    )
    tasks = [
        asyncio.create_task(sink.run(), name="sink"),
        asyncio.create_task(
            pre.run(
                settings.processes,
                scenario.max_running_task or settings.max_running_task,
                _preprocessor(settings.jpeg_quality, scenario.reduced_decode),
            ),
            name="preprocess",
        ),
        asyncio.create_task(source.run(), name="source"),
    ]
    expected_s = scenario.frames / (scenario.fps * scenario.cameras) if scenario.fps else 0.0
    try:
        await _wait(source.started, tasks, settings.drain_timeout + 30)
        monitor.start(source.t0)
        await _wait(sink.all_done, tasks, expected_s + settings.drain_timeout)
    except TimeoutError:
        logger.warning(
            "%s: %d of %d frames arrived before the deadline",
            scenario.name,
            len(sink.seen),
            scenario.frames,
        )
    finally:
        end = time.perf_counter()
        monitor.close()
        for node in (source, pre, sink):
            node.stop()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        delete_topics(admin, [src, out])
    for task, outcome in zip(tasks, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise RuntimeError(f"pipeline node {task.get_name()} failed") from outcome
    return _scenario_metrics(scenario, source, sink, pre, monitor, end)


async def _wait(event: asyncio.Event, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Wait for ``event``; fail early if a node fails or stops (the source may finish), or
    with ``TimeoutError`` after ``timeout`` seconds."""
    waiter = asyncio.ensure_future(event.wait())
    pending = {t for t in tasks if not t.done()}
    try:
        async with asyncio.timeout(timeout):
            while not waiter.done():
                done, _ = await asyncio.wait(
                    [waiter, *pending], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {waiter}:
                    pending.discard(task)
                    task.result()  # re-raises a node's failure
                    if task.get_name() != "source":
                        raise RuntimeError(f"node {task.get_name()} stopped early")
    finally:
        waiter.cancel()


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "max": round(float(arr.max()), 2),
        "mean": round(float(arr.mean()), 2),
    }


def _scenario_metrics(
    scenario: Scenario,
    source: FrameSource,
    sink: LatencySink,
    pre: ParallelConsumer,
    monitor: LagMonitor,
    end: float,
) -> dict[str, Any]:
    lat = sorted(sink.latencies)
    arrived = len(lat)
    first_capture = lat[0][0] if lat else 0.0
    last_arrival = max((c + d for c, d in lat), default=0.0)
    span = last_arrival - source.t0_wall if lat else 0.0
    send_span = (source.finished_at or end) - source.t0
    step = max(1, arrived // _LATENCY_SAMPLES)
    samples = [[round(c - first_capture, 3), round(d * 1000, 1)] for c, d in lat[::step]]
    profile = pre.profiler.summary() if pre.profiler is not None else None
    return {
        "offered_fps": (scenario.fps * scenario.cameras) if scenario.fps else None,
        "source_fps": round(source.measured / send_span, 2) if send_span > 0 else 0.0,
        "delivered_fps": round(arrived / span, 2) if span > 0 else 0.0,
        "frames_sent": source.measured,
        "frames_arrived": arrived,
        "lost": source.measured - arrived,
        "duplicates": sink.duplicates,
        "latency_ms": _percentiles_ms([d for _, d in lat]),
        "latency_samples": {"columns": ["capture_s", "latency_ms"], "every": step, "rows": samples},
        "lag": {
            "interval_s": monitor.interval,
            "columns": ["t", "lag_pre", "lag_sink", "sent", "arrived"],
            "rows": [
                [s.get(k, -1) for k in ("t", "lag_pre", "lag_sink", "sent", "arrived")]
                for s in monitor.samples
            ],
            "max_lag_pre": max((s.get("lag_pre", 0) for s in monitor.samples), default=0),
        },
        "memory_mb": {
            key: max((s.get(f"rss_{key}_mb", 0.0) for s in monitor.samples), default=0.0)
            for key in ("parent", "workers")
        },
        "preprocess_profile": _profile_ms(profile) if profile else None,
    }


def _profile_ms(summary: dict[str, Any]) -> dict[str, Any]:
    """The Profiler's summary with seconds turned into milliseconds."""
    return {
        "messages": summary["messages"],
        "sampled": summary["sampled"],
        "bytes_in": summary["bytes_in"],
        "bytes_out": summary["bytes_out"],
        "stages_ms": {
            stage: {k: round(v * 1000, 3) for k, v in figures.items()}
            for stage, figures in summary["stages"].items()
        },
    }


def _run(
    bootstrap: str, scenario: Scenario, settings: KafkaSettings, frames: Frames
) -> dict[str, Any]:
    return {
        "scenario": asdict(scenario),
        **run_async(lambda: run_scenario(bootstrap, scenario, settings, frames)),
    }


def _max_rate_pairs(settings: KafkaSettings) -> list[tuple[Scenario, Scenario]]:
    """``(reduced decode, full-size decode)`` scenarios at the top rate, per camera count."""
    return [
        (
            Scenario(f"max-rate-{n}cam", n, None, settings.max_rate_frames),
            Scenario(f"max-rate-{n}cam-fullsize", n, None, settings.max_rate_frames, False),
        )
        for n in settings.max_rate_cameras
    ]


def bench_scaling(
    bootstrap: str,
    quick: bool,
    *,
    settings: KafkaSettings | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """How cost grows: 1, 2, 4, 8 cameras at 30 frames/s each into one ParallelConsumer, and
    the top rate of one camera against max_running_task."""
    settings = settings or settings_for(quick)
    started, t0 = now_iso(), time.perf_counter()
    frames = make_frames(4 if quick else 8, settings.jpeg_quality)
    load_before = os.getloadavg()
    bar = progress(
        len(settings.scaling_cameras) + len(settings.scaling_max_running_tasks),
        "kafka scaling",
        show_progress,
    )

    def row(m: dict[str, Any]) -> dict[str, Any]:
        lat = m["latency_ms"] or {}
        return {
            "offered_fps": m["offered_fps"],
            "delivered_fps": m["delivered_fps"],
            "frames_sent": m["frames_sent"],
            "lost": m["lost"],
            "latency_ms": {k: lat.get(k) for k in ("p50", "p99", "max")},
            "max_lag_pre": m["lag"]["max_lag_pre"],
            "memory_mb": m["memory_mb"],
        }

    cameras, tasks = [], []
    with _own_node_settings(), contextlib.closing(bar):
        for n in settings.scaling_cameras:
            frames_n = max(1, round(30 * n * settings.scaling_seconds))
            scenario = Scenario(f"scale-{n}cam", n, 30.0, frames_n)
            cameras.append({"cameras": n, **row(_run(bootstrap, scenario, settings, frames))})
            bar.update()
        for m in settings.scaling_max_running_tasks:
            scenario = Scenario(f"max-rate-m{m}", 1, None, settings.scaling_frames, True, m)
            measured = _run(bootstrap, scenario, settings, frames)
            tasks.append({"max_running_task": m, **row(measured)})
            bar.update()
    params = {
        "processor": "Compose(DecodeImage(fit=640), Letterbox(640), EncodeJPEG(90))",
        "processes": settings.processes,
        "max_running_task": settings.max_running_task,
        "transport": settings.pipeline_transport,
        "cameras_fps_each": 30.0,
        "seconds_of_video": settings.scaling_seconds,
        "max_running_task_frames": settings.scaling_frames,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    return result(
        "kafka.scaling",
        mode="quick" if quick else "full",
        description="how cost grows: cameras at 30 frames/s each into one ParallelConsumer "
        "(frames/s, latency, memory), and one camera's top rate against max_running_task",
        params=params,
        metrics={"cameras": cameras, "max_running_task": tasks},
        baselines={},
        machine=machine_info(),
        started=started,
        duration_s=time.perf_counter() - t0,
    )


def bench_pipeline(
    bootstrap: str,
    quick: bool,
    *,
    settings: KafkaSettings | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Every pipeline scenario, in one result document."""
    settings = settings or settings_for(quick)
    started, t0 = now_iso(), time.perf_counter()
    frames = make_frames(4 if quick else 8, settings.jpeg_quality)
    load_before = os.getloadavg()
    scenarios: dict[str, Any] = {}
    pairs = _max_rate_pairs(settings)
    bar = progress(
        len(settings.scenarios) + 2 * len(pairs) * settings.max_rate_reps,
        "kafka pipeline",
        show_progress,
    )
    runs: dict[str, list[float]] = {}
    lost: dict[str, int] = {}
    with _own_node_settings(), contextlib.closing(bar):
        for scenario in settings.scenarios:
            logger.info("pipeline scenario %s", scenario.name)
            scenarios[scenario.name] = _run(bootstrap, scenario, settings, frames)
            bar.update()
        # Reduced vs full-size decode at the top rate: interleaved pairs, paired ratios.
        for rep in range(settings.max_rate_reps):
            for pair in pairs:
                for scenario in pair if rep % 2 == 0 else pair[::-1]:
                    logger.info("pipeline scenario %s (%d)", scenario.name, rep + 1)
                    m = _run(bootstrap, scenario, settings, frames)
                    runs.setdefault(scenario.name, []).append(m["delivered_fps"])
                    lost[scenario.name] = lost.get(scenario.name, 0) + m["lost"]
                    m["delivered_fps_runs"] = runs[scenario.name]
                    scenarios[scenario.name] = m  # the last run's details
                    bar.update()
    serial_cost = _serial_cost(settings, frames, quick) if pairs else None
    max_rate = {
        reduced.name: {
            "fullsize": full.name,
            "serial_cost": serial_cost,
            "delivered_fps": summarize(runs[reduced.name], 2),
            "fullsize_delivered_fps": summarize(runs[full.name], 2),
            "lost": lost[reduced.name] + lost[full.name],
            "vs_fullsize": round(median_ratio(runs[reduced.name], runs[full.name]), 3),
            "vs_fullsize_runs": [
                round(a / b, 3) for a, b in zip(runs[reduced.name], runs[full.name], strict=True)
            ],
        }
        for reduced, full in pairs
    }
    params = {
        "processor": "Compose(DecodeImage(fit=640), Letterbox(640), EncodeJPEG(90)); "
        "*-fullsize scenarios: DecodeImage() (full-size decode)",
        "processes": settings.processes,
        "max_running_task": settings.max_running_task,
        "transport": settings.pipeline_transport,
        "frame": {"shape": list(frames.raw[0].shape), "jpeg_kib_mean": frames.jpeg_kib},
        "warmup_frames_per_camera": settings.warmup_frames,
        "lag_interval_s": settings.lag_interval,
        "scenarios": [asdict(s) for s in settings.scenarios]
        + [asdict(s) for pair in pairs for s in pair],
        "max_rate_reps": settings.max_rate_reps,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    return result(
        "kafka.pipeline",
        mode="quick" if quick else "full",
        description="source -> topic -> ParallelConsumer (decode, letterbox, re-encode) -> "
        "topic -> sink, on a real broker: frames/s, end-to-end latency, consumer lag",
        params=params,
        metrics={"scenarios": scenarios, "max_rate": max_rate},
        baselines={},
        machine=machine_info(),
        started=started,
        duration_s=time.perf_counter() - t0,
    )


def _serial_cost(settings: KafkaSettings, frames: Frames, quick: bool) -> dict[str, float]:
    """What the reduced decode saves per frame: the two preprocessors' serial CPU per frame,
    measured here, interleaved. The top rate's gain follows it: the Kafka clients and the
    broker, which both paths pay alike, only dilute it, so a gain far beyond this ratio
    cannot come from the decode."""
    import cv2

    cv2.setNumThreads(1)  # as in the workers
    steps = {
        "reduced": _preprocessor(settings.jpeg_quality, True),
        "fullsize": _preprocessor(settings.jpeg_quality, False),
    }
    n = 8 if quick else 40
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _, name in interleaved(list(steps), 3 if quick else 5):
        t0 = time.process_time()
        for i in range(n):
            steps[name].process(frames.jpeg[i % len(frames.jpeg)])
        times[name].append((time.process_time() - t0) / n * 1e3)
    reduced, full = (statistics.median(times[k]) for k in ("reduced", "fullsize"))
    return {
        "reduced_ms_per_frame": round(reduced, 3),
        "fullsize_ms_per_frame": round(full, 3),
        "ratio": round(full / reduced, 3),
    }


# ---- pass-through -------------------------------------------------------------------------


def fill(bootstrap: str, topic: str, n: int, size: int) -> None:
    """``n`` records of ``size`` random bytes."""
    fill_values(bootstrap, topic, itertools.repeat(os.urandom(size), n))


def fill_values(bootstrap: str, topic: str, values: Iterable[bytes]) -> None:
    """Writes ``values`` to ``topic``, each keyed by its index; raises unless every one of
    them is acknowledged."""
    producer, failures = loop_producer(bootstrap)
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value, str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    check_delivered(producer, failures, 120)


_WATCH_FASTEST, _WATCH_SLOWEST = 0.005, 0.05


class HighWatermark:
    """Watches, in a thread, until an output topic holds ``target`` records; ``reached``
    is the ``perf_counter`` time it first saw them all."""

    def __init__(self, bootstrap: str, topic: str, target: int, partitions: int = 1) -> None:
        from confluent_kafka import Consumer as RawConsumer
        from confluent_kafka import TopicPartition

        self.client = RawConsumer({"bootstrap.servers": bootstrap, "group.id": "bench-watch"})
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.target = target
        self.reached: float | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watermark", daemon=True)

    def _total(self) -> int:
        return sum(
            self.client.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.tps
        )

    def _run(self) -> None:
        # Each poll asks the broker for every partition's end offset. Polled every 5 ms, that
        # cost the broker 28-50 % of a core (benchmarks/README.md): CPU taken from the variants
        # being measured, and most from those that use the whole machine. So poll every
        # 50 ms, and as the end nears, after a quarter of the time the rest should take at the
        # rate seen so far, down to every 5 ms: while the rate holds (or rises less than
        # fourfold) the clock still stops within 5 ms of the last record.
        first: tuple[float, int] | None = None
        while not self._stop.is_set():
            total = self._total()
            now = time.perf_counter()
            if total >= self.target:
                self.reached = now
                self.done.set()
                return
            wait = _WATCH_SLOWEST
            if first is None:
                if total:
                    first = (now, total)
            elif total > first[1]:
                rate = (total - first[1]) / (now - first[0])
                wait = min(_WATCH_SLOWEST, max(_WATCH_FASTEST, (self.target - total) / rate / 4))
            self._stop.wait(wait)

    def __enter__(self) -> HighWatermark:
        from confluent_kafka import KafkaException

        # Connect before the clock starts; a new topic's leaders may not be known here yet.
        deadline = time.monotonic() + 30
        while True:
            try:
                self._total()
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            # The variant has stopped and flushed: more records than inputs are duplicates,
            # which reached the target early and would overstate its rate.
            total = self._total() if exc_type is None and self.reached is not None else None
        finally:
            self.client.close()
        if total is not None and total != self.target:
            raise RuntimeError(
                f"the output topic holds {total} records for {self.target} inputs: "
                f"{total - self.target} duplicated, no rate reported"
            )


# What a careful librdkafka user sets on a consumer that reads a sustained stream. librdkafka's
# default fetch.queue.backoff.ms (1000) makes the fetcher wait a second whenever its local
# queue holds queued.min.messages: a loop that drains the queue quickly then waits in
# consume(). It capped the untuned loop at ~80 k msg/s of 1 KiB (issue 26), a third of
# what the same loop reaches at 100 ms (Quix Streams' setting).
TUNED_LOOP_CONSUMER: dict[str, Any] = {"fetch.queue.backoff.ms": 100}


def loop_producer(bootstrap: str) -> tuple[Any, list[Any]]:
    """The hand-written loops' producer and the list of its failed deliveries. With
    ``delivery.report.only.error`` a success calls no Python, so the loops stay as cheap as
    with no callback at all; without a callback a refused output would leave the queue
    unnoticed and ``flush()`` would return 0 as if it were acknowledged."""
    from confluent_kafka import Producer as RawProducer

    failures: list[Any] = []

    def failed(err: Any, msg: Any) -> None:
        failures.append(err)

    producer = RawProducer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "delivery.report.only.error": True,
            "on_delivery": failed,
        }
    )
    return producer, failures


def check_delivered(producer: Any, failures: list[Any], timeout: float) -> None:
    """At least once: called before a loop commits, it raises unless every output produced
    so far is acknowledged."""
    if producer.flush(timeout) or failures:
        raise RuntimeError(f"outputs not delivered: {failures[:3]}")


def plain_loop(
    bootstrap: str,
    src: str,
    out: str,
    n: int,
    batch: int = 500,
    consumer_conf: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The baseline: confluent-kafka doing the same at-least-once work without FogVerse,
    its consumer tuned (``TUNED_LOOP_CONSUMER``) unless ``consumer_conf`` says otherwise."""
    from confluent_kafka import Consumer as RawConsumer
    from confluent_kafka import TopicPartition

    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-loop-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **(TUNED_LOOP_CONSUMER if consumer_conf is None else consumer_conf),
        }
    )
    producer, failures = loop_producer(bootstrap)
    consumer.subscribe([src])
    done = 0
    t0 = cpu0 = 0.0
    offsets: dict[tuple[str, int], int] = {}
    with HighWatermark(bootstrap, out, n) as mark:
        while done < n:
            msgs = consumer.consume(batch, 0.5)
            if not msgs:
                continue
            if not done:
                t0, cpu0 = time.perf_counter(), time.process_time()
            for m in msgs:
                if m.error():
                    raise RuntimeError(m.error())
                while True:
                    try:
                        producer.produce(out, m.value(), m.key(), headers=m.headers())
                        break
                    except BufferError:
                        producer.poll(0.05)
                offsets[(m.topic(), m.partition())] = m.offset() + 1
            producer.poll(0)
            done += len(msgs)
            # At least once: a batch's offsets are committed once all its outputs are acked.
            check_delivered(producer, failures, 30)
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )
        mark.done.wait(30)
        cpu = time.process_time() - cpu0
        reached = mark.reached
    consumer.close()
    if reached is None:
        raise RuntimeError("the output topic never held every record")
    return {"rate": n / (reached - t0), "cpu_us_per_msg": cpu / n * 1e6}


def quix_available() -> bool:
    """Whether Quix Streams (the ``bench`` extra) is importable here."""
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        return False
    return True


def quix_passthrough(bootstrap: str, src: str, out: str, n: int) -> dict[str, float]:
    """Quix Streams doing the same at-least-once pass-through with its defaults (which set
    fetch.queue.backoff.ms=100), one process, as its users run it."""
    from quixstreams import Application

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        loglevel="WARNING",
        use_changelog_topics=False,
    )
    first: list[tuple[float, float]] = []

    def mark_first(value: bytes) -> bytes:
        if not first:
            first.append((time.perf_counter(), time.process_time()))
        return value

    src_topic = app.topic(src, value_deserializer="bytes", key_deserializer="bytes")
    out_topic = app.topic(out, value_serializer="bytes", key_serializer="bytes")
    app.dataframe(src_topic).apply(mark_first).to_topic(out_topic)
    with HighWatermark(bootstrap, out, n) as mark:

        def stop_when_done() -> None:
            mark.done.wait(600)
            app.stop()

        threading.Thread(target=stop_when_done, name="bench-quix-stop", daemon=True).start()
        app.run()
        cpu1 = time.process_time()
    if mark.reached is None or not first:
        raise RuntimeError("Quix Streams never wrote every record")
    t0, cpu0 = first[0]
    return {"rate": n / (mark.reached - t0), "cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6}


class _PassThrough(Consumer):
    """Sends every input on unchanged; notes when the first one arrived."""

    first: tuple[float, float] | None = None

    def process(self, data: bytes) -> bytes:
        if self.first is None:
            self.first = (time.perf_counter(), time.process_time())
        return data


async def run_node_passthrough(
    bootstrap: str,
    src: str,
    out: str,
    n: int,
    transport: str,
    *,
    profile: bool = False,
    profile_sample: int | None = None,
) -> dict[str, Any]:
    """A FogVerse ``Consumer`` node forwarding ``src`` to ``out`` on ``transport``."""
    node = _PassThrough(
        src,
        bootstrap,
        f"bench-node-{uuid.uuid4().hex[:8]}",
        producer_topic=out,
        input_codec="bytes",
        output_codec="bytes",
    )
    use_transport(node, transport)
    node.profile = profile
    if profile_sample is not None:
        node.profile_sample = profile_sample
    with HighWatermark(bootstrap, out, n) as mark:
        task = asyncio.create_task(node.run())
        try:
            while not mark.done.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("the pass-through node stopped early")
                await asyncio.sleep(0.01)
        finally:
            cpu1 = time.process_time()
            node.stop()
            await task
        reached = mark.reached
    assert reached is not None and node.first is not None
    t0, cpu0 = node.first
    out_doc: dict[str, Any] = {
        "rate": n / (reached - t0),
        "cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6,
    }
    if node.profiler is not None:
        summary = node.profiler.summary()
        out_doc["profile"] = {
            "messages": summary["messages"],
            "sampled": summary["sampled"],
            "sample": summary["sample"],
            "stages_us": {
                stage: {k: round(v * 1e6, 2) for k, v in figures.items()}
                for stage, figures in summary["stages"].items()
            },
        }
    return out_doc


async def run_transport_passthrough(
    bootstrap: str, src: str, out: str, n: int, transport: str
) -> dict[str, Any]:
    """The floor under a node on ``transport``: FogVerse's own transport in a bare loop.

    The plain loop's at-least-once work on the node's own clients and settings: a fetched
    batch is sent, its acks awaited, its offsets committed (not waited for, as the plain loop
    commits asynchronously), with no decode, process, encode, hooks or per-input tracking.
    A node on this transport pays all of this CPU per message and more; its rate is no bound,
    since a node overlaps the acks this loop waits for.
    """
    node = _PassThrough(
        src,
        bootstrap,
        f"bench-transport-{uuid.uuid4().hex[:8]}",
        producer_topic=out,
        input_codec="bytes",
        output_codec="bytes",
    )
    use_transport(node, transport)
    consumer, producer = node.consumer, node.producer
    assert consumer is not None and producer is not None
    loop = asyncio.get_running_loop()
    await producer.start()
    await consumer.start()
    done = 0
    t0 = cpu0 = 0.0
    committing: asyncio.Future[None] | None = None
    try:
        with HighWatermark(bootstrap, out, n) as mark:
            while done < n:
                records = await consumer.getmany(0.5, 500)
                if not records:
                    continue
                if not done:
                    t0, cpu0 = time.perf_counter(), time.process_time()
                acked = loop.create_future()
                left = len(records)

                def on_ack(fut: asyncio.Future[Any], acked: asyncio.Future[None] = acked) -> None:
                    nonlocal left
                    if acked.done():
                        return
                    if fut.exception() is not None:
                        acked.set_exception(fut.exception())  # type: ignore[arg-type]
                        return
                    left -= 1
                    if left == 0:
                        acked.set_result(None)

                offsets: dict[Any, int] = {}
                for r in records:
                    ack = await producer.send(out, r.value, r.key, r.headers)
                    ack.add_done_callback(on_ack)
                    offsets[r.tp] = r.offset + 1  # type: ignore[operator]
                done += len(records)
                await acked
                if committing is not None:
                    await committing
                committing = asyncio.ensure_future(consumer.commit(offsets))
            if committing is not None:
                await committing
            await asyncio.to_thread(mark.done.wait, 30)
            cpu = time.process_time() - cpu0
            reached = mark.reached
    finally:
        try:
            await consumer.stop()
        finally:
            await producer.stop()
    assert reached is not None
    return {"rate": n / (reached - t0), "cpu_us_per_msg": cpu / n * 1e6}


def _variants(settings: KafkaSettings) -> list[tuple[str, str | None, bool]]:
    """``(label, transport, profile)``; transport ``None`` is a baseline (a plain loop, Quix)."""
    out: list[tuple[str, str | None, bool]] = [(LOOP, None, False), (LOOP_UNTUNED, None, False)]
    if quix_available():
        out.append((QUIX, None, False))
    for t in settings.passthrough_transports:  # side by side: their ratio is a paired one
        out += [(f"node[{t}]", t, False), (f"node[{t}]+profile", t, True)]
        out.append((f"transport[{t}]", t, False))
    return out


def _passthrough_run(
    bootstrap: str, src: str, out: str, n: int, label: str, transport: str | None, profile: bool
) -> dict[str, Any]:
    if label == LOOP:
        return plain_loop(bootstrap, src, out, n)
    if label == LOOP_UNTUNED:
        return plain_loop(bootstrap, src, out, n, consumer_conf={})
    if label == QUIX:
        return quix_passthrough(bootstrap, src, out, n)
    assert transport is not None
    if label.startswith("transport["):
        return run_async(lambda: run_transport_passthrough(bootstrap, src, out, n, transport))
    return run_async(
        lambda: run_node_passthrough(bootstrap, src, out, n, transport, profile=profile)
    )


def bench_passthrough(
    bootstrap: str,
    quick: bool,
    *,
    settings: KafkaSettings | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """1 KiB pass-through: the plain loop, the node on each transport, and the node profiled."""
    settings = settings or settings_for(quick)
    started, t0 = now_iso(), time.perf_counter()
    load_before = os.getloadavg()
    admin = _admin(bootstrap)
    n = settings.passthrough_messages
    src = create_topic(admin, "bench-pt-src")
    fill(bootstrap, src, n, settings.passthrough_size)
    variants = _variants(settings)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    total = len(variants) * settings.passthrough_reps
    total += len(settings.passthrough_sizes) * settings.passthrough_size_reps * 3
    bar = progress(total, "kafka pass-through", show_progress)
    with _own_node_settings(), contextlib.closing(bar):
        try:
            for _, (label, transport, profile) in interleaved(variants, settings.passthrough_reps):
                out = create_topic(admin, "bench-pt-out")
                try:
                    runs[label].append(
                        _passthrough_run(bootstrap, src, out, n, label, transport, profile)
                    )
                finally:
                    delete_topics(admin, [out])
                bar.update()
            sizes = _by_size(bootstrap, admin, settings, bar)
            out = create_topic(admin, "bench-pt-out")
            try:
                cpu_profile = cpu_profile_node(
                    bootstrap, src, out, n, settings.profile_transport, settings.cprofile_top
                )
            finally:
                delete_topics(admin, [out])
        finally:
            delete_topics(admin, [src])
    doc = _passthrough_doc(settings, runs, variants, quick, started, t0, load_before)
    doc["metrics"]["cpu_profile"] = cpu_profile
    doc["metrics"]["sizes"] = sizes
    return doc


def _by_size(bootstrap: str, admin: Any, settings: KafkaSettings, bar: Any) -> dict[str, Any]:
    """How the cost grows with the message size: the tuned loop, Quix Streams and the node on
    its default transport, interleaved, per size."""
    node = f"node[{default_transport()}]"
    labels = [LOOP, *([QUIX] if quix_available() else []), node]
    out: dict[str, Any] = {}
    for size, n in settings.passthrough_sizes:
        src = create_topic(admin, "bench-pt-size")
        try:
            fill(bootstrap, src, n, size)
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            for _, label in interleaved(labels, settings.passthrough_size_reps):
                dst = create_topic(admin, "bench-pt-out")
                try:
                    transport = default_transport() if label == node else None
                    runs[label].append(
                        _passthrough_run(bootstrap, src, dst, n, label, transport, False)
                    )
                finally:
                    delete_topics(admin, [dst])
                bar.update()
        finally:
            delete_topics(admin, [src])
        loop_rates = [r["rate"] for r in runs[LOOP]]
        out[str(size)] = {
            "messages": n,
            "load_average_after": round(os.getloadavg()[0], 2),
            **{
                label: {
                    "rate": summarize([r["rate"] for r in rs], 1),
                    "cpu_us_per_msg": round(statistics.median(r["cpu_us_per_msg"] for r in rs), 2),
                    "vs_loop": round(median_ratio([r["rate"] for r in rs], loop_rates), 3),
                    **(
                        {
                            "vs_quix": round(
                                median_ratio(
                                    [r["rate"] for r in rs], [r["rate"] for r in runs[QUIX]]
                                ),
                                3,
                            )
                        }
                        if QUIX in runs
                        else {}
                    ),
                }
                for label, rs in runs.items()
            },
        }
    return out


def cpu_profile_node(
    bootstrap: str, src: str, out: str, n: int, transport: str, top: int
) -> dict[str, Any]:
    """One more run of the node under cProfile (event-loop thread): the functions that run
    once per message or more, by their own time per message. Slower than unprofiled runs;
    the shares are what to read."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        rate = run_async(lambda: run_node_passthrough(bootstrap, src, out, n, transport))["rate"]
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    # Once-per-run coroutines can be charged their idle time; per-message code is what counts.
    rows = sorted(
        (
            (own, calls, _where(path, line, name))
            for (path, line, name), (_, calls, own, _cum, _) in stats.items()
            if calls >= n // 2
        ),
        reverse=True,
    )
    total = sum(own for own, _, _ in rows) or 1.0
    return {
        "transport": transport,
        "rate_under_profiler": round(rate, 1),
        "us_per_msg": round(total / n * 1e6, 2),
        "fogverse_us_per_msg": round(
            sum(own for own, _, w in rows if w.startswith("fogverse/")) / n * 1e6, 2
        ),
        "top": [
            {
                "function": where,
                "calls_per_msg": round(calls / n, 2),
                "own_us_per_msg": round(own / n * 1e6, 3),
                "share": round(own / total, 4),
            }
            for own, calls, where in rows[:top]
        ],
    }


def _where(path: str, line: int, name: str) -> str:
    marker = "/fogverse/"
    at = path.rfind(marker)
    if at >= 0 and "site-packages" not in path:
        return f"fogverse/{path[at + len(marker) :]}:{line}({name})"
    short = os.path.basename(path) if path.startswith("/") else path
    return f"{short}:{line}({name})"


def _passthrough_doc(
    settings: KafkaSettings,
    runs: dict[str, list[dict[str, Any]]],
    variants: list[tuple[str, str | None, bool]],
    quick: bool,
    started: str,
    t0: float,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    loop_rates = [r["rate"] for r in runs[LOOP]]

    def entry(label: str) -> dict[str, Any]:
        rates = [r["rate"] for r in runs[label]]
        out = {
            "rate": summarize(rates, 1),
            "cpu_us_per_msg": round(statistics.median(r["cpu_us_per_msg"] for r in runs[label]), 2),
            "vs_loop": round(median_ratio(rates, loop_rates), 3),
            "vs_loop_runs": [round(a / b, 3) for a, b in zip(rates, loop_rates, strict=True)],
        }
        for name, key in ((LOOP_UNTUNED, "vs_loop_untuned"), (QUIX, "vs_quix")):
            if name in runs and name != label:
                other = [r["rate"] for r in runs[name]]
                out[key] = round(median_ratio(rates, other), 3)
                out[key + "_runs"] = [round(a / b, 3) for a, b in zip(rates, other, strict=True)]
        return out

    nodes = {label: entry(label) for label, _, _ in variants if label.startswith("node[")}
    transports = {label: entry(label) for label, _, _ in variants if label.startswith("transport[")}
    by_transport = {
        t: round(
            median_ratio(
                [r["rate"] for r in runs[f"node[{t}]+profile"]],
                [r["rate"] for r in runs[f"node[{t}]"]],
            ),
            3,
        )
        for t in settings.passthrough_transports
    }
    worst = min(by_transport, key=by_transport.__getitem__)
    overhead = {"transport": worst, "on_vs_off": by_transport[worst], "by_transport": by_transport}
    profile = runs[f"node[{settings.profile_transport}]+profile"][-1].get("profile")
    if profile is not None:
        profile["transport"] = settings.profile_transport
    params = {
        "messages": settings.passthrough_messages,
        "message_bytes": settings.passthrough_size,
        "partitions": 1,
        "reps": settings.passthrough_reps,
        "transports": list(settings.passthrough_transports),
        "default_transport": default_transport(),
        "loop": "consume(500) -> produce each (acks=all, idempotent, linger 5 ms) -> flush -> "
        f"commit; consumer tuned with {TUNED_LOOP_CONSUMER} (the untuned loop: librdkafka's "
        "defaults, as this suite ran it before)",
        "unit": "messages/s",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    return result(
        "kafka.passthrough",
        mode="quick" if quick else "full",
        description="1 KiB pass-through at least once: FogVerse Consumer node vs a plain "
        "confluent-kafka consume -> produce -> commit loop; profiling overhead",
        params=params,
        metrics={
            "nodes": nodes,
            "transports": transports,
            "profiling_overhead": overhead,
            "profile": profile,
        },
        baselines={
            LOOP: {
                "rate": summarize(loop_rates, 1),
                "cpu_us_per_msg": round(
                    statistics.median(r["cpu_us_per_msg"] for r in runs[LOOP]), 2
                ),
            },
            **{name: entry(name) for name in (LOOP_UNTUNED, QUIX) if name in runs},
        },
        machine=machine_info(),
        started=started,
        duration_s=time.perf_counter() - t0,
    )
