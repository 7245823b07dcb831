"""Frames per second of ``WorkerPool`` against one process and the standard library's pools.

For each workload, every variant runs the same function on the same inputs:

* ``serial``: the function called in this process, one input after another;
* ``serial (full-size decode)`` (``jpeg`` only): the same with the JPEG decoded at full size
  (``YoloPreprocess(decode=True, reduced_decode=False)``), the path before reduced decoding;
* ``Pool.imap``: ``multiprocessing.Pool(p).imap(fn, inputs)`` (chunksize 1);
* ``ProcessPoolExecutor.map``: ``concurrent.futures.ProcessPoolExecutor(p).map(fn, inputs)``;
* ``arroyo.RunTaskWithMultiprocessing`` (only when ``sentry-arroyo`` is installed): the
  closest peer's multiprocessing step, fed message by message with its batches of
  ``ARROYO_BATCH`` inputs (at most 50 ms of waiting), prefetching, shared-memory blocks
  sized for its batches, and its own spawn pool of ``p`` processes;
* ``fogverse``: ``WorkerPool(processor, p, m)``, inputs submitted as slots free up, each
  result read and its slot released in a done-callback;
* ``serial, one per process`` (``jpeg`` only, ``p`` >= 2): no pool either. ``p`` processes
  each hold their own copy of the inputs and run the function on their share of them at the
  same time; only the share's size goes to them. Their rate over serial is how this machine
  scales the work itself to ``p`` processes, which a ``p``-process pool can at best match
  (in one noisy run it may land a little above);
* ``bare round trip`` (``trivial`` only): no pool at all. The parent keeps ``m`` 8-byte tasks
  in flight over ``p`` processes on socketpairs, sends each worker its share in one write
  (as the pool batches short tasks), and the workers echo each read in one write. It is what
  moving a task to another process and back costs on this machine before any bookkeeping:
  the floor under every pool's per-task figure at that ``m``;
* ``minimal Python pool`` (``trivial`` only): the same, with each input pickled into a
  length-prefixed frame, unpickled, run and pickled back by the worker, and the result
  unpickled by the parent: the least a pool written in Python does per task (no shared
  memory, handles, retries or crash handling);

for ``p`` in ``process_numbers`` and ``m`` in ``max_running_tasks``. All pools of a workload
are started up front and kept alive, and the repetitions are interleaved (every round runs
every variant once, starting one variant later each round), so load from other jobs on a
shared machine hits all variants alike. Ratios are medians of per-round ratios.

Workloads: ``jpeg`` (720p JPEG bytes -> ``YoloPreprocess(decode=True)``), ``raw`` (720p BGR
ndarray -> ``YoloPreprocess()``), ``trivial`` (identity on a small int: the per-task cost).
Every process uses one OpenCV thread (WorkerPool's default; the baselines set it in their
initializer and the serial run in this process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.util
import logging
import multiprocessing
import os
import pickle
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from benchmarks.common import (
    Frames,
    interleaved,
    machine_info,
    make_frames,
    median_ratio,
    now_iso,
    peak_rss,
    progress,
    result,
    summarize,
)
from fogverse.parallel import TaskHandle, WorkerPool
from fogverse.processor import Processor

__all__ = ["WORKLOADS", "PoolSettings", "bench_pool", "bench_workload", "settings_for"]

logger = logging.getLogger(__name__)

SERIAL = "serial"
SERIAL_FULL = "serial (full-size decode)"
IMAP = "Pool.imap"
EXECUTOR = "ProcessPoolExecutor.map"
FOGVERSE = "fogverse"
ECHO = "bare round trip (socketpair echo, no pool)"
MINIMAL = "minimal Python pool (pickle over socketpairs)"
_SOCKETPAIRS = (ECHO, MINIMAL)
SPLIT = "serial, one per process (no pool)"
ARROYO = "arroyo.RunTaskWithMultiprocessing"

WORKLOADS = {
    "jpeg": "720p JPEG bytes -> YoloPreprocess(640, decode=True): decode, letterbox, RGB, "
    "CHW, float32/255 (3x640x640 float32 result)",
    "raw": "720p BGR uint8 ndarray -> YoloPreprocess(640): letterbox, RGB, CHW, float32/255 "
    "(3x640x640 float32 result)",
    "trivial": "identity on a small int: the per-task cost of each pool",
}


@dataclass(frozen=True)
class PoolSettings:
    """Sizes of one pool benchmark run."""

    reps: int
    run_seconds: float
    """Each variant's runs are sized from its warm-up rate to last about this long, so fast
    variants are timed over enough inputs and slow ones do not take all the time."""
    min_inputs: int
    """At least this many inputs per run (frame workloads; 20x for the trivial one)."""
    max_running_tasks: tuple[int, ...]
    process_numbers: tuple[int, ...]
    workloads: tuple[str, ...] = ("jpeg", "raw", "trivial")
    start_method: str = "forkserver"
    warmup: int = 16
    """Inputs per variant (at least 2 x max_running_task) run once before the measured rounds:
    worker start, slot growth, caches, and the rate that sizes the runs."""
    arroyo: bool = True
    """Add Arroyo's RunTaskWithMultiprocessing as a baseline when sentry-arroyo is installed."""


def settings_for(quick: bool) -> PoolSettings:
    cores = os.cpu_count() or 1
    if quick:
        return PoolSettings(
            reps=2,
            run_seconds=0.05,
            min_inputs=8,
            max_running_tasks=(1, 8),
            process_numbers=(cores,),
            warmup=8,
        )
    return PoolSettings(
        reps=7,
        run_seconds=0.6,
        min_inputs=40,
        max_running_tasks=(1, 2, 4, 8, 16, 32),
        process_numbers=tuple(range(1, cores + 1)),
    )


# ---- the functions every variant runs -----------------------------------------------------


def identity(x: Any) -> Any:
    return x


class Call(Processor):
    """A Processor around a plain function, so every variant runs exactly ``fn``."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process(self, data: Any) -> Any:
        return self.fn(data)


def arroyo_available() -> bool:
    return importlib.util.find_spec("arroyo") is not None


ARROYO_BATCH = {"jpeg": 4, "raw": 4, "trivial": 64}


def _arroyo_apply(fn: Callable[[Any], Any], message: Any) -> Any:
    return fn(message.payload)


class _ArroyoSink:
    """Arroyo's next step: reads each result, as the other variants do."""

    def submit(self, message: Any) -> None:
        _touch(message.payload)

    def poll(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass


def _arroyo_strategy(v: Variant, fn: Callable[[Any], Any], inputs: Sequence[Any]) -> Any:
    from arroyo.processing.strategies import RunTaskWithMultiprocessing

    batch = v.arroyo_batch
    biggest = max(_nbytes(x) for x in inputs)
    return RunTaskWithMultiprocessing(
        functools.partial(_arroyo_apply, fn),
        _ArroyoSink(),  # type: ignore[arg-type]
        max_batch_size=batch,
        max_batch_time=0.05,
        pool=v.pool,
        # Room for a batch of inputs, and of 3x640x640 float32 results.
        input_block_size=batch * biggest * 2 + (1 << 20),
        output_block_size=batch * 3 * 640 * 640 * 4 + (1 << 20),
        prefetch_batches=True,
    )


def _run_arroyo(strategy: Any, inputs: Sequence[Any], n: int) -> None:
    from arroyo.processing.strategies import MessageRejected
    from arroyo.types import Message, Partition, Topic, Value

    partition = Partition(Topic("bench"), 0)
    for i in range(n):
        message = Message(Value(inputs[i % len(inputs)], {partition: i + 1}))
        while True:
            try:
                strategy.submit(message)
                break
            except MessageRejected:  # its backpressure: collect results, then retry
                strategy.poll()
        strategy.poll()
    strategy.close()
    strategy.join(timeout=300)


_TASK = struct.Struct("<q")
_LEN = struct.Struct("<I")


def _frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole length-prefixed frames in ``data``, and the partial one after them."""
    out, pos, end = [], 0, len(data)
    while end - pos >= _LEN.size:
        (size,) = _LEN.unpack_from(data, pos)
        if end - pos - _LEN.size < size:
            break
        out.append(data[pos + _LEN.size : pos + _LEN.size + size])
        pos += _LEN.size + size
    return out, data[pos:]


def _framed(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def _pair_worker(sock: socket.socket, fn: Callable[[Any], Any] | None) -> None:
    """Without ``fn``, send back whatever arrives, one write per read. With it, run ``fn`` on
    each pickled input and send the pickled results of one read in one write. Until the
    parent hangs up."""
    with sock:
        partial = b""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            if fn is None:
                sock.sendall(data)
                continue
            frames, partial = _frames(partial + data)
            if frames:
                sock.sendall(
                    b"".join(_framed(pickle.dumps(fn(pickle.loads(f)), 5)) for f in frames)
                )


class SocketPairPool:
    """No pool library at all: ``max_running_task`` tasks in flight over ``process_number``
    processes on socketpairs, read with ``loop.add_reader`` as ``WorkerPool`` reads.

    Without ``fn`` it is the bare round trip (8-byte tasks echoed back). With ``fn`` it is the
    least a Python pool does: each input pickled into a length-prefixed frame, unpickled, run
    and pickled back by the worker, the result unpickled and read by the parent; no shared
    memory, handles, retries or crash handling. Each worker gets its share of the window in
    one write; every task that comes back is replaced at once, the replacements for one read
    going out in one write.
    """

    def __init__(
        self,
        process_number: int,
        max_running_task: int,
        ctx: Any,
        fn: Callable[[Any], Any] | None = None,
        inputs: Sequence[Any] = (),
    ) -> None:
        self._p = process_number
        self._m = max_running_task
        self._ctx = ctx
        self._fn = fn
        self._inputs = inputs
        self._socks: list[socket.socket] = []
        self._procs: list[Any] = []

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    async def start(self) -> None:
        for _ in range(self._p):
            parent, child = socket.socketpair()
            proc = self._ctx.Process(target=_pair_worker, args=(child, self._fn), daemon=True)
            proc.start()
            child.close()
            parent.setblocking(False)
            self._socks.append(parent)
            self._procs.append(proc)

    async def run(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        sent = returned = 0
        partial = dict.fromkeys(self._socks, b"")
        inputs, bare = self._inputs, self._fn is None

        def task(i: int) -> bytes:
            if bare:
                return _TASK.pack(i)
            return _framed(pickle.dumps(inputs[i % len(inputs)], 5))

        def send(sock: socket.socket, count: int) -> None:
            nonlocal sent
            sock.send(b"".join(task(sent + i) for i in range(count)))
            sent += count

        def on_readable(sock: socket.socket) -> None:
            nonlocal returned
            try:
                data = partial[sock] + sock.recv(1 << 16)
            except BlockingIOError:
                return
            if bare:
                whole = len(data) - len(data) % _TASK.size
                partial[sock] = data[whole:]
                back = whole // _TASK.size
            else:
                frames, partial[sock] = _frames(data)
                for frame in frames:
                    _touch(pickle.loads(frame))
                back = len(frames)
            returned += back
            more = min(back, n - sent)
            if more > 0:
                send(sock, more)
            if returned == n and not finished.done():
                finished.set_result(None)

        shares = [self._m // self._p + (i < self._m % self._p) for i in range(self._p)]
        try:
            for sock, share in zip(self._socks, shares, strict=True):
                loop.add_reader(sock.fileno(), on_readable, sock)
                if min(share, n - sent) > 0:
                    send(sock, min(share, n - sent))
            await finished
        finally:
            for sock in self._socks:
                loop.remove_reader(sock.fileno())

    async def close(self) -> None:
        for sock in self._socks:
            sock.close()
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._socks.clear()
        self._procs.clear()


_held: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def _hold(fn: Callable[[Any], Any], inputs: Sequence[Any]) -> None:
    global _held
    _one_cv_thread()
    _held = (fn, inputs)


def _run_held(count: int) -> None:
    assert _held is not None
    fn, inputs = _held
    for i in range(count):
        _touch(fn(inputs[i % len(inputs)]))


def _nbytes(x: Any) -> int:
    return int(getattr(x, "nbytes", None) or (len(x) if isinstance(x, bytes) else 64))


def _one_cv_thread() -> None:
    import cv2

    cv2.setNumThreads(1)


def _workload(name: str, frames: Frames) -> tuple[Callable[[Any], Any], list[Any]]:
    from processors import YoloPreprocess

    if name == "jpeg":
        return YoloPreprocess(640, decode=True).process, list(frames.jpeg)
    if name == "raw":
        return YoloPreprocess(640).process, list(frames.raw)
    if name == "trivial":
        return identity, list(range(64))
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def _fullsize_jpeg() -> Callable[[Any], Any]:
    from processors import YoloPreprocess

    return YoloPreprocess(640, decode=True, reduced_decode=False).process


def _touch(value: Any) -> None:
    # Read the result, as a consumer of it would; a lazy variant gains nothing.
    flat = getattr(value, "flat", None)
    if flat is not None:
        flat[0]


# ---- variants -----------------------------------------------------------------------------


@dataclass
class Variant:
    kind: str
    process_number: int
    max_running_task: int | None = None
    pool: Any = None
    seconds: list[float] = field(default_factory=list)
    parent_cpu: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    arroyo_batch: int = 1
    inputs_per_run: int = 0

    @property
    def label(self) -> str:
        if self.kind in (SERIAL, SERIAL_FULL):
            return self.kind
        if self.kind in (FOGVERSE, *_SOCKETPAIRS):
            name = {FOGVERSE: "fogverse", ECHO: "echo", MINIMAL: "minimal"}[self.kind]
            return f"{name} p={self.process_number} m={self.max_running_task}"
        return f"{self.kind} p={self.process_number}"

    def pids(self) -> list[int]:
        if self.kind in (FOGVERSE, *_SOCKETPAIRS):
            return list(self.pool.worker_pids)
        if self.kind in (IMAP, SPLIT):
            return [p.pid for p in self.pool._pool if p.pid is not None]
        if self.kind == EXECUTOR:
            return [p.pid for p in (self.pool._processes or {}).values() if p.pid is not None]
        if self.kind == ARROYO:
            inner = getattr(self.pool, "_MultiprocessingPool__pool", None)
            return [p.pid for p in getattr(inner, "_pool", []) if p.pid is not None]
        return []


async def _start(
    variants: list[Variant], fn: Callable[[Any], Any], inputs: Sequence[Any], start_method: str
) -> None:
    ctx = multiprocessing.get_context(start_method)
    for v in variants:
        if v.kind == IMAP:
            v.pool = ctx.Pool(v.process_number, initializer=_one_cv_thread)
        elif v.kind == EXECUTOR:
            v.pool = concurrent.futures.ProcessPoolExecutor(
                v.process_number, mp_context=ctx, initializer=_one_cv_thread
            )
        elif v.kind == ARROYO:
            from arroyo.processing.strategies.run_task_with_multiprocessing import (
                MultiprocessingPool,
            )

            v.pool = MultiprocessingPool(v.process_number, _one_cv_thread)
        elif v.kind in _SOCKETPAIRS:
            assert v.max_running_task is not None
            minimal = v.kind == MINIMAL
            v.pool = SocketPairPool(
                v.process_number,
                v.max_running_task,
                ctx,
                fn if minimal else None,
                inputs if minimal else (),
            )
        elif v.kind == SPLIT:
            v.pool = ctx.Pool(v.process_number, initializer=_hold, initargs=(fn, inputs))
        elif v.kind == FOGVERSE:
            assert v.max_running_task is not None
            v.pool = WorkerPool(
                Call(fn),
                v.process_number,
                v.max_running_task,
                start_method=start_method,  # type: ignore[arg-type]
            )
    await asyncio.gather(*(v.pool.start() for v in variants if v.kind in (FOGVERSE, *_SOCKETPAIRS)))


async def _stop(variants: list[Variant]) -> None:
    for v in variants:
        if v.pool is None:
            continue
        try:
            if v.kind in (FOGVERSE, *_SOCKETPAIRS):
                await v.pool.close()
            elif v.kind in (IMAP, SPLIT):
                v.pool.close()
                v.pool.join()
            elif v.kind == EXECUTOR:
                v.pool.shutdown()
            elif v.kind == ARROYO:
                v.pool.close()
        except Exception:
            logger.exception("could not close %s", v.label)


async def _run_fogverse(pool: WorkerPool, inputs: Sequence[Any], n: int) -> None:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    remaining = n

    def on_done(handle: TaskHandle) -> None:
        nonlocal remaining
        _touch(handle.result())
        handle.release()
        remaining -= 1
        if remaining == 0:
            finished.set_result(None)

    for i in range(n):
        handle = await pool.submit(inputs[i % len(inputs)])
        handle.add_done_callback(on_done)
    await finished


async def _run_once(v: Variant, fn: Callable[[Any], Any], inputs: Sequence[Any], n: int) -> float:
    def cycle() -> Any:
        return (inputs[i % len(inputs)] for i in range(n))

    strategy = _arroyo_strategy(v, fn, inputs) if v.kind == ARROYO else None
    start = time.perf_counter()
    if strategy is not None:
        _run_arroyo(strategy, inputs, n)
    elif v.kind in (SERIAL, SERIAL_FULL):
        call = _fullsize_jpeg() if v.kind == SERIAL_FULL else fn
        for i in range(n):
            _touch(call(inputs[i % len(inputs)]))
    elif v.kind == IMAP:
        for value in v.pool.imap(fn, cycle(), chunksize=1):
            _touch(value)
    elif v.kind == EXECUTOR:
        for value in v.pool.map(fn, cycle()):
            _touch(value)
    elif v.kind in _SOCKETPAIRS:
        await v.pool.run(n)
    elif v.kind == SPLIT:
        p = v.process_number
        v.pool.map(_run_held, [n // p + (i < n % p) for i in range(p)], chunksize=1)
    else:
        await _run_fogverse(v.pool, inputs, n)
    return time.perf_counter() - start


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


async def _measure(v: Variant, fn: Callable[[Any], Any], inputs: Sequence[Any]) -> None:
    n = v.inputs_per_run
    pids = v.pids()
    worker0, parent0 = _cpu(pids), time.process_time()
    with peak_rss(pids) as mem:
        seconds = await _run_once(v, fn, inputs, n)
    v.parent_cpu.append((time.process_time() - parent0) / n)
    v.worker_cpu.append((_cpu(pids) - worker0) / n)
    v.seconds.append(seconds)
    if mem["total"] >= v.memory.get("total", -1.0):
        v.memory = mem


# ---- one workload -------------------------------------------------------------------------


async def bench_workload(
    workload: str,
    settings: PoolSettings,
    frames: Frames,
    *,
    mode: str,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run one workload's interleaved grid; returns its result document."""
    import cv2

    started, t0 = now_iso(), time.perf_counter()
    load_before = os.getloadavg()
    cv2.setNumThreads(1)  # the serial run, like each worker
    fn, inputs = _workload(workload, frames)
    scale = 20 if workload == "trivial" else 1
    variants = [Variant(SERIAL, 1)]
    if workload == "jpeg":
        variants.append(Variant(SERIAL_FULL, 1))
    for p in settings.process_numbers:
        variants += [Variant(IMAP, p), Variant(EXECUTOR, p)]
        if settings.arroyo and arroyo_available():
            variants.append(Variant(ARROYO, p, arroyo_batch=ARROYO_BATCH[workload]))
        variants += [Variant(FOGVERSE, p, m) for m in settings.max_running_tasks]
        if workload == "trivial":
            variants += [Variant(k, p, m) for k in _SOCKETPAIRS for m in settings.max_running_tasks]
        if workload == "jpeg" and p > 1:
            variants.append(Variant(SPLIT, p))
    warm = max(settings.warmup, 2 * max(settings.max_running_tasks)) * scale
    bar = progress(len(variants) * (settings.reps + 1), f"pool {workload}", show_progress)
    try:
        await _start(variants, fn, inputs, settings.start_method)
        for v in variants:  # worker imports, slot growth, caches; then size the runs
            seconds = await _run_once(v, fn, inputs, warm)
            sized = round(warm / seconds * settings.run_seconds)
            v.inputs_per_run = max(settings.min_inputs * scale, min(sized, 200_000))
            bar.update()
        for _, v in interleaved(variants, settings.reps):
            await _measure(v, fn, inputs)
            bar.update()
        stats = {v.label: v.pool.stats for v in variants if v.kind == FOGVERSE}
    finally:
        bar.close()
        await _stop(variants)

    per_task = workload == "trivial"
    metrics, baselines = _tabulate(variants, per_task)
    for entry in metrics["grid"]:
        label = f"fogverse p={entry['process_number']} m={entry['max_running_task']}"
        entry["pool_stats"] = {
            k: stats[label].get(k, 0) for k in ("inband_results", "slot_grows", "restarts")
        }
    params = {
        "workload": workload,
        "description": WORKLOADS[workload],
        "warmup_inputs": warm,
        "input": _describe_inputs(workload, frames),
        "unit": "tasks/s" if per_task else "frames/s",
        "opencv_threads_per_process": 1,
        "arroyo_max_batch_size": (
            ARROYO_BATCH[workload] if any(v.kind == ARROYO for v in variants) else None
        ),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **{k: v for k, v in asdict(settings).items() if k not in ("workloads", "warmup")},
    }
    return result(
        f"pool.{workload}",
        mode=mode,
        description=f"WorkerPool vs serial / Pool.imap / ProcessPoolExecutor.map: "
        f"{WORKLOADS[workload]}",
        params=params,
        metrics=metrics,
        baselines=baselines,
        machine=machine_info(),
        started=started,
        duration_s=time.perf_counter() - t0,
    )


def _describe_inputs(workload: str, frames: Frames) -> dict[str, Any]:
    if workload == "trivial":
        return {"type": "int", "distinct": 64}
    return {
        "type": "jpeg bytes" if workload == "jpeg" else "ndarray uint8",
        "shape": list(frames.raw[0].shape),
        "distinct": len(frames.raw),
        "jpeg_quality": 90,
        "jpeg_kib_mean": frames.jpeg_kib,
    }


def _rates(v: Variant) -> list[float]:
    return [v.inputs_per_run / s for s in v.seconds]


def _entry(v: Variant, serial: Variant, per_task: bool) -> dict[str, Any]:
    rates = _rates(v)
    serial_rates = _rates(serial)
    speedup = median_ratio(rates, serial_rates)
    entry: dict[str, Any] = {"process_number": v.process_number}
    if v.max_running_task is not None:
        entry["max_running_task"] = v.max_running_task
    entry["inputs_per_run"] = v.inputs_per_run
    entry["rate"] = summarize(rates, 2)
    entry["us_per_task"] = round(1e6 / statistics.median(rates), 2)
    entry["speedup_vs_serial"] = round(speedup, 3)
    entry["efficiency"] = round(speedup / v.process_number, 3)
    entry["peak_rss_mb"] = v.memory["total"]
    entry["memory_mb"] = {k: v.memory[k] for k in ("workers", "parent_growth")}
    entry["cpu_us_per_task"] = {
        "parent": round(statistics.median(v.parent_cpu) * 1e6, 1),
        "workers": round(statistics.median(v.worker_cpu) * 1e6, 1),
    }
    if per_task:
        entry["us_per_task_runs"] = [round(1e6 / r, 2) for r in rates]
    return entry


def _tabulate(variants: list[Variant], per_task: bool) -> tuple[dict, dict]:
    serial = next(v for v in variants if v.kind == SERIAL)
    serial_full = next((v for v in variants if v.kind == SERIAL_FULL), None)
    by_key = {
        (v.kind, v.process_number): v
        for v in variants
        if v.kind not in (SERIAL, FOGVERSE, *_SOCKETPAIRS)
    }
    echoes = {(v.process_number, v.max_running_task): v for v in variants if v.kind == ECHO}
    minimal = {(v.process_number, v.max_running_task): v for v in variants if v.kind == MINIMAL}
    baselines: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        if v.kind not in (FOGVERSE, *_SOCKETPAIRS):
            entry = _entry(v, serial, per_task)
            if v.kind == ARROYO:
                entry["max_batch_size"] = v.arroyo_batch
            baselines.setdefault(v.kind, []).append(entry)
    grid = []
    for v in variants:
        if v.kind != FOGVERSE:
            continue
        entry = _entry(v, serial, per_task)
        rates = _rates(v)
        for kind, key in (
            (IMAP, "vs_pool_imap"),
            (EXECUTOR, "vs_executor_map"),
            (ARROYO, "vs_arroyo"),
        ):
            base = by_key.get((kind, v.process_number))
            if base is None:
                continue
            entry[key] = round(median_ratio(rates, _rates(base)), 3)
        if serial_full is not None:
            entry["vs_serial_fullsize"] = round(median_ratio(rates, _rates(serial_full)), 3)
        echo = echoes.get((v.process_number, v.max_running_task))
        if echo is not None:
            entry["floor_us_per_task"] = round(1e6 / statistics.median(_rates(echo)), 2)
        least = minimal.get((v.process_number, v.max_running_task))
        if least is not None:
            entry["minimal_pool_us_per_task"] = round(1e6 / statistics.median(_rates(least)), 2)
        grid.append(entry)
    best: dict[str, Any] = {}
    for p in sorted({e["process_number"] for e in grid}):
        rows = [e for e in grid if e["process_number"] == p]
        top = max(rows, key=lambda e: e["rate"]["median"])
        best[str(p)] = {
            k: top[k]
            for k in (
                "max_running_task",
                "rate",
                "us_per_task",
                "speedup_vs_serial",
                "vs_pool_imap",
                "vs_executor_map",
                "vs_arroyo",
                "vs_serial_fullsize",
            )
            if k in top
        }
    metrics = {"unit": "tasks/s" if per_task else "frames/s", "grid": grid, "best": best}
    if echoes:
        metrics["floor"] = [_entry(v, serial, per_task) for v in echoes.values()]
    if minimal:
        metrics["minimal_pool"] = [_entry(v, serial, per_task) for v in minimal.values()]
    return metrics, baselines


# ---- the benchmark ------------------------------------------------------------------------


def bench_pool(
    quick: bool, *, show_progress: bool | None = None, settings: PoolSettings | None = None
) -> list[dict[str, Any]]:
    """Every pool workload; one result document each."""
    from benchmarks.common import run_async

    settings = settings or settings_for(quick)
    frames = make_frames(4 if quick else 8)
    mode = "quick" if quick else "full"
    docs = []
    for workload in settings.workloads:
        logger.info("pool benchmark: %s", workload)
        docs.append(
            run_async(
                lambda w=workload: bench_workload(
                    w, settings, frames, mode=mode, show_progress=show_progress
                )
            )
        )
    return docs
