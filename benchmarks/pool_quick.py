"""Frames per second of WorkerPool against the standard library's process pools.

Runs, in one process and with interleaved repetitions (the machine may be shared; medians and
ratios are what to read):

* serial: the function called in this process;
* ``multiprocessing.Pool.imap`` (chunksize 1);
* ``concurrent.futures.ProcessPoolExecutor.map``;
* ``fogverse.parallel.WorkerPool``;

for three workloads with the same function and inputs:

a. raw 1280x720x3 uint8 frames -> letterbox 640x640, RGB, CHW, float32 / 255;
b. 720p JPEG bytes -> decode + the same letterbox;
c. a trivial function (reported as microseconds per task).

Every worker process (and the serial run) uses one OpenCV thread. The letterbox writes its
result into ``output_array()`` (an ordinary ``np.empty`` outside a WorkerPool worker; the
task's shared-memory slot inside one); ``--copy-output`` uses ``np.empty`` everywhere.

    .venv/bin/python benchmarks/pool_quick.py [--reps 5] [--frames 100] [--tasks 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import cv2
import numpy as np
import psutil

from fogverse.parallel import TaskHandle, WorkerPool, output_array
from fogverse.processor import Processor

SIZE = 640
SHARED_OUTPUT = True
"""Processors build their result with output_array() (see --copy-output)."""


def letterbox(frame: np.ndarray) -> np.ndarray:
    """1280x720 BGR uint8 -> 3x640x640 RGB float32 in [0, 1], padded with grey."""
    h, w = frame.shape[:2]
    scale = min(SIZE / w, SIZE / h)
    nw, nh = round(w * scale), round(h * scale)
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    padded = cv2.copyMakeBorder(
        resized,
        top,
        SIZE - nh - top,
        left,
        SIZE - nw - left,
        cv2.BORDER_CONSTANT,
        value=(114, 114, 114),
    )
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    # In a pool worker this array is in the task's shared-memory slot (no copy on return);
    # in the serial run and the standard pools it is a plain np.empty.
    shape = (3, SIZE, SIZE)
    chw = output_array(shape, np.float32) if SHARED_OUTPUT else np.empty(shape, np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1 / 255), out=chw)
    return chw


def decode_letterbox(jpeg: bytes) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return letterbox(frame)


def trivial(x: Any) -> Any:
    return x


class FunctionProcessor(Processor):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process(self, data: Any) -> Any:
        return self.fn(data)


def _one_cv_thread() -> None:
    cv2.setNumThreads(1)


def make_frames(count: int) -> list[np.ndarray]:
    """Camera-like 720p frames: smooth structure plus sensor noise."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:720, 0:1280].astype(np.float32)
    frames = []
    for i in range(count):
        img = np.empty((720, 1280, 3), np.float32)
        img[..., 0] = 128 + 100 * np.sin(x / (40 + 3 * i) + y / 90)
        img[..., 1] = 128 + 100 * np.cos(y / (30 + 2 * i) - x / 150)
        img[..., 2] = (x + y + 37 * i) % 256
        img += rng.normal(0, 6, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def touch(result: Any) -> float:
    return float(result.flat[0]) if isinstance(result, np.ndarray) else 0.0


def run_serial(fn: Callable[[Any], Any], inputs: list[Any], n: int) -> None:
    for i in range(n):
        touch(fn(inputs[i % len(inputs)]))


def _cycle(inputs: list[Any], n: int) -> Iterable[Any]:
    return (inputs[i % len(inputs)] for i in range(n))


def run_mp_pool(pool: Any, fn: Callable[[Any], Any], inputs: list[Any], n: int) -> None:
    for result in pool.imap(fn, _cycle(inputs, n), chunksize=1):
        touch(result)


def run_executor(pool: Any, fn: Callable[[Any], Any], inputs: list[Any], n: int) -> None:
    for result in pool.map(fn, _cycle(inputs, n)):
        touch(result)


async def run_worker_pool(pool: WorkerPool, inputs: list[Any], n: int) -> None:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    remaining = n

    def on_done(handle: TaskHandle) -> None:
        nonlocal remaining
        touch(handle.result())
        handle.release()
        remaining -= 1
        if remaining == 0:
            finished.set_result(None)

    for i in range(n):
        handle = await pool.submit(inputs[i % len(inputs)])
        handle.add_done_callback(on_done)
    await finished


async def bench_workload(
    name: str,
    fn: Callable[[Any], Any],
    inputs: list[Any],
    n: int,
    args: argparse.Namespace,
    ctx: Any,
) -> dict[str, list[float]]:
    """Seconds per task for each variant, one entry per repetition."""
    mp_pool = ctx.Pool(args.processes, initializer=_one_cv_thread)
    executor = concurrent.futures.ProcessPoolExecutor(
        args.processes, mp_context=ctx, initializer=_one_cv_thread
    )
    pool = WorkerPool(
        FunctionProcessor(fn),
        args.processes,
        args.max_running_task,
        start_method=args.start_method,
    )
    await pool.start()
    samples: dict[str, list[float]] = {k: [] for k in ("serial", "Pool.imap", "PPE.map", "pool")}
    parent_cpu: list[float] = []
    worker_cpu: list[float] = []
    serial_cpu: list[float] = []

    async def one(variant: str, count: int) -> float:
        start = time.perf_counter()
        if variant == "serial":
            cpu0 = time.process_time()
            run_serial(fn, inputs, count)
            serial_cpu.append((time.process_time() - cpu0) / count)
        elif variant == "Pool.imap":
            run_mp_pool(mp_pool, fn, inputs, count)
        elif variant == "PPE.map":
            run_executor(executor, fn, inputs, count)
        else:
            workers = [psutil.Process(pid) for pid in pool.worker_pids]
            busy0 = sum(_cpu_seconds(w) for w in workers)
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            await run_worker_pool(pool, inputs, count)
            after = resource.getrusage(resource.RUSAGE_SELF)
            used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
            parent_cpu.append(used / count)
            worker_cpu.append((sum(_cpu_seconds(w) for w in workers) - busy0) / count)
        return (time.perf_counter() - start) / count

    try:
        variants = list(samples)
        warm = max(2 * args.max_running_task, n // 10)
        for variant in variants:  # warm-up: processes, slot growth, caches
            await one(variant, warm)
        parent_cpu.clear()
        worker_cpu.clear()
        serial_cpu.clear()
        for rep in range(args.reps):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for variant in order:
                samples[variant].append(await one(variant, n))
    finally:
        await pool.close()
        mp_pool.close()
        mp_pool.join()
        executor.shutdown()
    samples["pool parent CPU"] = parent_cpu
    samples["pool worker CPU"] = worker_cpu
    samples["serial CPU"] = serial_cpu
    return samples


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def report(name: str, samples: dict[str, list[float]], per_task_us: bool) -> None:
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    print(f"\n{name}")
    for variant in ("serial", "Pool.imap", "PPE.map", "pool"):
        sec = med[variant]
        spread = ", ".join(f"{1 / s:.0f}" for s in samples[variant])
        if per_task_us:
            print(f"  {variant:<10} {sec * 1e6:8.1f} us/task   (runs in tasks/s: {spread})")
        else:
            print(f"  {variant:<10} {1 / sec:8.1f} frames/s (runs: {spread})")
    parent, workers, serial = med["pool parent CPU"], med["pool worker CPU"], med["serial CPU"]
    print(
        f"  CPU per task: serial {serial * 1e6:.0f} us; pool {(parent + workers) * 1e6:.0f} us "
        f"= parent {parent * 1e6:.0f} + workers {workers * 1e6:.0f} "
        f"(speed-up bound on 2 free cores: x{2 * serial / (parent + workers):.2f})"
    )
    pool = med["pool"]
    ratios = {k: med[k] / pool for k in ("serial", "Pool.imap", "PPE.map")}
    print("  pool vs " + "   vs ".join(f"{k} x{r:.2f}" for k, r in ratios.items()))
    # Each repetition runs every variant back to back, so the ratio within a repetition is the
    # least disturbed by other load on a shared machine.
    paired = {
        k: statistics.median(a / b for a, b in zip(samples[k], samples["pool"], strict=True))
        for k in ratios
    }
    print("  median per-repetition ratio: " + "   ".join(f"x{r:.2f}" for r in paired.values()))


async def main_async(args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    ctx = multiprocessing.get_context(args.start_method)
    frames = make_frames(8)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")
    print(
        f"{args.processes} processes, max_running_task={args.max_running_task}, "
        f"start method {args.start_method}, {args.reps} interleaved repetitions (medians), "
        f"{'np.empty' if args.copy_output else 'output_array'} results; "
        f"JPEG sizes {min(map(len, jpegs)) // 1024}-{max(map(len, jpegs)) // 1024} KiB"
    )
    if "raw" in args.workloads:
        samples = await bench_workload("raw", letterbox, frames, args.frames, args, ctx)
        report("(a) raw 1280x720x3 uint8 -> letterbox float32 3x640x640", samples, False)
    if "jpeg" in args.workloads:
        samples = await bench_workload("jpeg", decode_letterbox, jpegs, args.frames, args, ctx)
        report("(b) 720p JPEG -> decode + letterbox", samples, False)
    if "trivial" in args.workloads:
        samples = await bench_workload("trivial", trivial, list(range(64)), args.tasks, args, ctx)
        report("(c) trivial processor (identity on an int)", samples, True)
    print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--frames", type=int, default=100, help="frames per run (a, b)")
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per run (c)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-running-task", type=int, default=8)
    parser.add_argument("--start-method", choices=("forkserver", "spawn"), default="forkserver")
    parser.add_argument(
        "--workloads", nargs="+", default=["raw", "jpeg", "trivial"], help="raw jpeg trivial"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument(
        "--copy-output",
        action="store_true",
        help="build results with np.empty instead of output_array (workers copy them)",
    )
    args = parser.parse_args()
    global SHARED_OUTPUT
    SHARED_OUTPUT = not args.copy_output
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            args.loop = "asyncio"
        else:
            uvloop.run(main_async(args))
            return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
