"""What every benchmark shares: the result schema, the machine description, interleaving,
memory high-water marks, test frames and the event loop.

A result document (one JSON file per benchmark) is::

    {"schema": "fogverse-bench/1", "benchmark": "pool.jpeg", "mode": "full", "description": "...",
     "params": {...}, "metrics": {...}, "baselines": {...}, "machine": {...},
     "started": "2024-01-01T00:00:00+00:00", "duration_s": 12.3}

``metrics`` holds FogVerse's own figures, ``baselines`` those of what it is compared with,
measured in the same run; ``machine`` is :func:`machine_info`. :func:`validate` checks a
document against this shape (see benchmarks/README.md for each benchmark's fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import logging
import math
import operator
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "SCHEMA",
    "DescendantsCpu",
    "Frames",
    "Target",
    "describe_machine",
    "interleaved",
    "machine_info",
    "make_frames",
    "median_ratio",
    "now_iso",
    "peak_rss",
    "proc_cpu_seconds",
    "progress",
    "result",
    "run_async",
    "summarize",
    "thread_cpu_seconds",
    "validate",
    "validate_summary",
    "write_json",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

SCHEMA = "fogverse-bench/1"
T = TypeVar("T")

_PACKAGES = (
    "fogverse",
    "numpy",
    "opencv-python-headless",
    "confluent-kafka",
    "aiokafka",
    "cloudpickle",
    "uvloop",
    "psutil",
    "matplotlib",
    "sentry-arroyo",
)


# ---- the machine --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPUs, memory, OS, Python and the versions of every package the figures depend on."""
    import psutil

    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    try:
        import confluent_kafka

        packages["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:  # pragma: no cover - a dependency of fogverse
        packages["librdkafka"] = None
    try:
        from fogverse.broker import DEFAULT_KAFKA_VERSION

        packages["kafka-broker"] = DEFAULT_KAFKA_VERSION
    except ImportError:  # pragma: no cover
        packages["kafka-broker"] = None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": packages,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def describe_machine(machine: dict[str, Any]) -> str:
    """One line for tables and plot titles."""
    pk = machine.get("packages", {})
    return (
        f"{machine.get('cpus')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gb')} GB, {machine.get('os')}, Python {machine.get('python')}, "
        f"confluent-kafka {pk.get('confluent-kafka')} (librdkafka {pk.get('librdkafka')}), "
        f"aiokafka {pk.get('aiokafka')}, OpenCV {pk.get('opencv-python-headless')}, "
        f"Kafka {pk.get('kafka-broker')}"
    )


# ---- result documents ---------------------------------------------------------------------


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def result(
    benchmark: str,
    *,
    mode: str,
    description: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    baselines: dict[str, Any],
    machine: dict[str, Any],
    started: str,
    duration_s: float,
) -> dict[str, Any]:
    """A result document in the schema above (checked before it is returned)."""
    doc = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "mode": mode,
        "description": description,
        "params": params,
        "metrics": metrics,
        "baselines": baselines,
        "machine": machine,
        "started": started,
        "duration_s": round(duration_s, 2),
    }
    problems = validate(doc)
    if problems:
        raise ValueError(f"malformed result for {benchmark}: {problems}")
    return doc


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "benchmark": str,
    "mode": str,
    "description": str,
    "params": dict,
    "metrics": dict,
    "baselines": dict,
    "machine": dict,
    "started": str,
    "duration_s": (int, float),
}
_MACHINE: dict[str, type | tuple[type, ...]] = {"cpus": int, "python": str, "packages": dict}


def validate(doc: Any) -> list[str]:
    """Problems with a result document (an empty list when it is well formed).

    Beyond the top-level keys and types: the mode is ``quick`` or ``full``, every number
    anywhere in it is finite (NaN and infinity are not JSON), and the machine names its CPUs,
    Python and package versions.
    """
    if not isinstance(doc, dict):
        return [f"a result is a JSON object, not {type(doc).__name__}"]
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in doc:
            problems.append(f"missing {key!r}")
        elif not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            problems.append(f"{key!r} has type {type(doc[key]).__name__}")
    if problems:
        return problems
    if doc["schema"] != SCHEMA:
        problems.append(f"schema is {doc['schema']!r}, expected {SCHEMA!r}")
    if doc["mode"] not in ("quick", "full"):
        problems.append(f"mode is {doc['mode']!r}")
    if not doc["benchmark"]:
        problems.append("empty benchmark name")
    for key, kind in _MACHINE.items():
        value = doc["machine"].get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"machine.{key} missing or of type {type(value).__name__}")
    if isinstance(doc["machine"].get("packages"), dict) and not doc["machine"]["packages"].get(
        "fogverse"
    ):
        problems.append("machine.packages lacks fogverse's version")
    if not doc["metrics"]:
        problems.append("metrics is empty")
    problems.extend(f"non-finite number at {where}" for where in _non_finite(doc, "$"))
    return problems


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}

_TARGET_KEYS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "description": str,
    "benchmark": str,
    "op": str,
    "threshold": (int, float),
    "unit": str,
    "met": (bool, type(None)),
}


def validate_summary(doc: Any) -> list[str]:
    """Problems with ``summary.json``: a result document plus ``targets`` and ``results``."""
    problems = validate(doc)
    if problems:
        return problems
    targets = doc.get("targets")
    if not isinstance(targets, list) or not targets:
        return ["summary has no targets list"]
    for i, target in enumerate(targets):
        if not isinstance(target, dict):
            problems.append(f"targets[{i}] is not an object")
            continue
        for key, kind in _TARGET_KEYS.items():
            if key not in target or not isinstance(target[key], kind):
                problems.append(f"targets[{i}].{key} missing or mistyped")
        measured = target.get("measured")
        if measured is not None and not isinstance(measured, int | float):
            problems.append(f"targets[{i}].measured is not a number")
        if target.get("op") not in _OPS:
            problems.append(f"targets[{i}].op is {target.get('op')!r}")
        if (measured is None) != (target.get("met") is None):
            problems.append(f"targets[{i}]: met must be null exactly when measured is")
    if not isinstance(doc.get("results"), list):
        problems.append("summary has no results list")
    return problems


def _non_finite(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, float) and not math.isfinite(value):
        yield where
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


_NUMBER_LIST = re.compile(r"\[\s+((?:-?[\d.e+-]+|null),?(?:\s+(?:-?[\d.e+-]+|null),?)*)\s+\]")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN slipping through would make the file unreadable for strict parsers.
    text = json.dumps(doc, indent=1, allow_nan=False)
    # Lists of numbers on one line each: time series stay readable and diffs stay short.
    text = _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    write_text_atomic(path, text + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds either its old text or all of ``text``, never a part: a run killed or
    out of disk while writing leaves the previous results readable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Target:
    """A figure the issue asks for, with what this run measured."""

    id: str
    description: str
    benchmark: str
    op: str
    threshold: float
    unit: str
    measured: float | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    missing: str = ""
    """What the figure leaves out (frames lost in the run): the target is then not met,
    whatever the figure of the rest says."""

    def as_dict(self) -> dict[str, Any]:
        met = (
            None
            if self.measured is None
            else not self.missing and _OPS[self.op](self.measured, self.threshold)
        )
        return {
            "id": self.id,
            "description": self.description,
            "benchmark": self.benchmark,
            "op": self.op,
            "threshold": self.threshold,
            "unit": self.unit,
            "measured": None if self.measured is None else round(self.measured, 4),
            "met": met,
            "detail": self.detail,
            **self.extra,
        }


# ---- measuring ----------------------------------------------------------------------------


def interleaved(variants: Sequence[T], reps: int) -> Iterator[tuple[int, T]]:
    """``(rep, variant)`` for every repetition, each round starting one variant later.

    Every round runs all variants back to back, so drift on a shared machine (other jobs
    starting or stopping) hits all of them alike, and no variant always runs first.
    """
    n = len(variants)
    for rep in range(reps):
        shift = rep % n if n else 0
        for variant in [*variants[shift:], *variants[:shift]]:
            yield rep, variant


def summarize(values: Iterable[float], digits: int = 4) -> dict[str, Any]:
    """``{median, min, max, runs}`` of one variant's repetitions."""
    runs = [float(v) for v in values]
    if not runs:
        raise ValueError("no runs to summarize")
    return {
        "median": round(statistics.median(runs), digits),
        "min": round(min(runs), digits),
        "max": round(max(runs), digits),
        "runs": [round(v, digits) for v in runs],
    }


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the per-repetition ratios ``a[i] / b[i]``: runs of one round ran back to
    back, so their ratio is the least disturbed by other load on the machine."""
    if len(a) != len(b) or not a:
        raise ValueError("ratio of unpaired runs")
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def proc_cpu_seconds(stat: str | Path) -> float:
    """User plus system CPU seconds in a ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``
    file (a process's total counts its ended threads too). Raises ``OSError`` once it is gone."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """This process's live threads: id -> (name, CPU seconds so far). From ``schedstat``'s
    nanoseconds: ``stat``'s utime and stime tick only every 10 ms. A thread that has ended is
    absent (the process's own total, ``time.process_time()``, still counts it)."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except OSError:
            continue  # ended meanwhile
        out[int(tid)] = (name, ns / 1e9)
    return out


class DescendantsCpu:
    """CPU seconds this process's descendants spend inside a ``with`` block (a pool's workers
    and their forkserver), ``exclude`` aside (a local broker's JVM, measured on its own).

    A process started inside the block counts from zero (its start-up included), one alive at
    the start from its reading then. A worker's figure leaves ``/proc`` with it when it exits
    at the end of a run, so a thread reads every descendant each ``interval`` seconds and keeps
    its last reading; what one spends after that before it exits is lost (at most ``interval``
    of CPU per process)."""

    def __init__(self, exclude: Iterable[int] = (), interval: float = 0.1) -> None:
        self.exclude = set(exclude)
        self.interval = interval
        self.seconds = 0.0
        self._before: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-descendants", daemon=True)

    def _descendants(self) -> list[int]:
        import psutil

        kids = psutil.Process().children(recursive=True)
        return [c.pid for c in kids if c.pid not in self.exclude]

    def _sample(self) -> None:
        try:
            pids = self._descendants()
        except Exception:  # psutil.Error: a process tree changing under the walk
            return  # the next round reads it
        for pid in pids:
            try:
                cpu = proc_cpu_seconds(f"/proc/{pid}/stat")
            except OSError:
                continue  # exited meanwhile: its last reading stands
            self._last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> DescendantsCpu:
        self._sample()
        self._before = dict(self._last)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(cpu - self._before.get(pid, 0.0) for pid, cpu in self._last.items())


def _hwm_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_hwm(pid: int) -> None:
    # "5" resets the peak-RSS counter (Linux >= 4.0); without it the peak is the process's
    # lifetime peak, which only overstates.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _rss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


@contextlib.contextmanager
def peak_rss(pids: Sequence[int]) -> Iterator[dict[str, float]]:
    """Memory a variant adds over the ``with`` block, in MB, from the kernel's high-water
    marks (nothing samples during the run).

    ``workers``: the peak RSS of the processes ``pids``, summed (shared-memory slots they
    touched included); ``parent_growth``: how far this process's peak rose above its RSS at
    the start (transient buffers: results unpickled from a pipe, a serial run's arrays);
    ``total``: both. Pages shared by several workers (the interpreter, libraries) count once
    per worker: an upper bound, comparable between variants measured the same way.
    """
    me = os.getpid()
    for pid in (me, *pids):
        _reset_hwm(pid)
    base = _rss_kb(me)
    out: dict[str, float] = {}
    try:
        yield out
    finally:
        workers = sum(_hwm_kb(p) for p in pids) / 1024
        growth = max(0, _hwm_kb(me) - base) / 1024
        out.update(
            total=round(workers + growth, 1),
            workers=round(workers, 1),
            parent_growth=round(growth, 1),
        )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar on stderr (``enabled=None``: only on a terminal)."""
    if enabled is False:
        # Not even a disabled tqdm: making one creates a multiprocessing lock, a semaphore in
        # /dev/shm that the process then maps for good (the pool's test of its slots sees it).
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled is None else not enabled)


def checkouts_side_by_side(
    trees: dict[str, Path], rounds: int, measure: Callable[[Path], Any]
) -> dict[str, list[Any]]:
    """``measure(tree)`` for each checkout, ``rounds`` times, the order alternating so that a
    drift in the machine's speed falls on both alike; prints each result as it comes."""
    rows: dict[str, list[Any]] = {name: [] for name in trees}
    for i in range(rounds):
        for name in list(trees) if i % 2 == 0 else list(trees)[::-1]:
            rows[name].append(measure(trees[name]))
            print(name, json.dumps(rows[name][-1]), flush=True)
    return rows


def run_in_checkout(tree: Path, code: str, *args: str, timeout: float = 600) -> Any:
    """Run ``code`` in a new interpreter with checkout ``tree`` first on ``sys.path`` (so an
    older commit is measured with its own code, its worker processes included) and return
    the JSON it prints on its last line. For side-by-side A/B scripts."""
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{tree}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop (what ``fogverse.run`` uses) when installed."""
    factory: Any = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


# ---- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """Camera-like 720p test frames: raw BGR arrays and their JPEG encodings."""

    raw: list[np.ndarray]
    jpeg: list[bytes]

    @property
    def jpeg_kib(self) -> float:
        return round(statistics.mean(len(j) for j in self.jpeg) / 1024, 1)


def make_frames(count: int = 8, quality: int = 90, seed: int = 7) -> Frames:
    """``count`` 1280x720 frames with smooth structure plus sensor noise (so JPEG sizes and
    decode times are camera-like, ~200-250 KiB at quality 90), and their JPEGs."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:720, 0:1280].astype(np.float32)
    raw, jpeg = [], []
    for i in range(count):
        img = np.empty((720, 1280, 3), np.float32)
        img[..., 0] = 128 + 100 * np.sin(x / (40 + 3 * i) + y / 90)
        img[..., 1] = 128 + 100 * np.cos(y / (30 + 2 * i) - x / 150)
        img[..., 2] = (x + y + 37 * i) % 256
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        frame = np.clip(img, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover
            raise RuntimeError("OpenCV could not encode a test frame")
        raw.append(frame)
        jpeg.append(buf.tobytes())
    return Frames(raw, jpeg)
