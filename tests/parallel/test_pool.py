"""The worker pool (fogverse/parallel/pool.py and worker.py), with real worker processes.

Processors are module-level classes: workers import this module to unpickle them. Every test
checks afterwards that no worker process and no /dev/shm entry outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from polling import until, wait_until

from fogverse.parallel import (
    PoolClosed,
    ProcessorPickleError,
    TaskFailed,
    WorkerCrashed,
    WorkerPool,
    WorkerSetupError,
    output_array,
    shm,
)
from fogverse.parallel import pool as pool_module
from fogverse.processor import Processor

DEADLINE = 20.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def map_through(pool: WorkerPool, items: list[Any]) -> list[Any]:
    """Results (or exceptions) for ``items`` in input order; more items than the window is
    fine because each result is released as soon as it is taken."""
    results: list[Any] = [None] * len(items)
    left = len(items)
    finished = asyncio.Event()

    def keeper(index: int) -> Callable[[Any], None]:
        def keep(handle: Any) -> None:
            nonlocal left
            error = handle.exception()
            value = error if error is not None else handle.result()
            results[index] = value.copy() if isinstance(value, np.ndarray) else value
            handle.release()
            left -= 1
            if left == 0:
                finished.set()

        return keep

    for i, item in enumerate(items):
        (await pool.submit(item)).add_done_callback(keeper(i))
    if items:
        await finished.wait()
    return results


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def our_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("fogverse-w") and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def read_maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def our_memfd_maps() -> list[str]:
    return [line for line in read_maps(os.getpid()).splitlines() if "memfd:fogverse" in line]


def our_memfds() -> list[str]:
    """Slot and processor memfds this process still has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:fogverse"):
            found.append(target)
    return found


def unexplained_dev_shm(before: set[str]) -> set[str]:
    """New /dev/shm segments that no process outside this test's process tree has mapped.

    The pool never creates any. Other programs on a shared machine do: their segments are
    mapped by their owners; their multiprocessing semaphores (``sem.*``) can linger unmapped
    after their owners exit, so those are left out here (that the pool's processes map
    nothing under /dev/shm at all is checked while a pool runs).
    """
    new = {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")} - before
    if not new:
        return new
    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        try:
            maps = read_maps(proc.pid)
        except OSError:
            continue
        new = {name for name in new if f"/dev/shm/{name}" not in maps}
    return new & set(os.listdir("/dev/shm"))


@pytest.fixture(autouse=True)
def no_leaks():
    shm_before = set(os.listdir("/dev/shm"))
    yield
    wait_until(
        lambda: not our_workers(),
        DEADLINE,
        lambda: f"the workers to exit; left behind: {our_workers()}",
        interval=0.02,
    )
    wait_until(
        lambda: not unexplained_dev_shm(shm_before),
        5.0,
        lambda: f"/dev/shm to be clean; left behind: {unexplained_dev_shm(shm_before)}",
        interval=0.02,
    )
    # Mappings may outlive close() while results still view them (a failing test's traceback
    # does); descriptors may not.
    assert our_memfds() == []


# --------------------------------------------------------------------------- processors


class Echo(Processor):
    def process(self, data: Any) -> Any:
        return data


class Describe(Processor):
    """Says what the worker received."""

    def process(self, data: Any) -> Any:
        if isinstance(data, np.ndarray):
            return (type(data).__name__, data.flags.writeable, data.flags.owndata)
        return (type(data).__name__,)


class Views(Processor):
    """Returns views of (or modifies) its input array, as processors may."""

    def process(self, data: Any) -> Any:
        mode, arr = data
        if mode == "inplace":
            arr *= 2
            return arr
        if mode == "slice":
            return arr[10:]
        if mode == "pair":
            return (arr[5:], arr[:-5])
        if mode == "strided":
            return arr[::3]
        if mode == "big":
            return np.full(600_000, 7, np.int64)
        raise ValueError(mode)


class Scale(Processor):
    """Writes its result into output_array(), as a preprocessing step would."""

    def process(self, data: Any) -> Any:
        out = output_array(data.shape, np.float32)
        np.multiply(data, np.float32(0.5), out=out)
        extra = output_array(3, np.int64)
        extra[:] = (1, 2, 3)
        return {"scaled": out, "extra": extra}


UNPICKLED_HERE = 0


class CountingProcessor(Processor):
    """Counts how often it is pickled (in the parent) and unpickled (in each worker)."""

    pickled = 0

    def __init__(self) -> None:
        self.payload = np.arange(100_000)  # large-ish: shipping it per task would show

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        global UNPICKLED_HERE
        UNPICKLED_HERE += 1
        self.__dict__.update(state)

    def process(self, data: Any) -> Any:
        if data == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return (os.getpid(), UNPICKLED_HERE)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception fails")


class Faulty(Processor):
    """Fails in the ways real processors do, selected by the input."""

    def __init__(self, marker_dir: str = "") -> None:
        self.marker_dir = marker_dir

    def setup(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from the segfault

    def process(self, data: Any) -> Any:
        if data == "raise":
            raise ValueError("bad input 'raise'")
        if data == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if data == "segfault":
            ctypes.string_at(0)
        if data == "exit":
            os._exit(3)
        if data == "unprintable":
            raise Unprintable()
        if data == "kill-once":
            marker = Path(self.marker_dir, "killed-once")
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return "survived"
        return (data, os.getpid())


class SetupFails(Processor):
    def setup(self) -> None:
        raise RuntimeError("boom in setup")

    def process(self, data: Any) -> Any:
        return data


class Sleepy(Processor):
    def __init__(self, marker_dir: str = "") -> None:
        self.marker_dir = marker_dir

    def process(self, data: Any) -> Any:
        kind, arg = data
        if kind == "sleep":
            time.sleep(arg)
        elif kind == "announce-then-sleep":  # create the file, then sleep a minute
            Path(arg).touch()
            time.sleep(60)
        elif kind == "wait-for":  # block until the test creates the file
            deadline = time.monotonic() + 30
            while not Path(arg).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return (kind, os.getpid())

    def teardown(self) -> None:
        if self.marker_dir:
            Path(self.marker_dir, f"teardown-{os.getpid()}").touch()


class SetupWaits(Processor):
    """setup() announces itself, then waits (up to 30 s) for the test's go-ahead."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir

    def setup(self) -> None:
        Path(self.marker_dir, f"setup-{os.getpid()}").touch()
        deadline = time.monotonic() + 30
        while not Path(self.marker_dir, "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def process(self, data: Any) -> Any:
        return data


class Environment(Processor):
    def process(self, data: Any) -> Any:
        import cv2

        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        return ({n: os.environ.get(n) for n in names}, cv2.getNumThreads(), blas_threads())


class Churn(Processor):
    """Allocates, touches and frees 3 MiB in 1 MiB blocks, as a frame's decode, letterbox
    and encode do; returns the page faults this task took."""

    def process(self, data: Any) -> int:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(1 << 20, np.uint8) for _ in range(3)]
        del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def blas_threads() -> list[int]:
    """Thread counts of the OpenBLAS libraries loaded here (numpy's, preloaded before the
    worker could set OPENBLAS_NUM_THREADS)."""
    counts = []
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
            getter = getattr(lib, name, None)
            if getter is not None:
                counts.append(getter())
    return counts


# --------------------------------------------------------------------------- results


def test_results_round_trip_for_arrays_bytes_and_objects():
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    nested = {"boxes": np.ones((10, 4), np.float32), "meta": ("cam-1", 7), "ids": [np.arange(3)]}

    async def main() -> None:
        async with WorkerPool(Echo(), 2, 4) as pool:
            for value in (42, "text", None, frame, b"\xff\xd8jpeg" * 1000):
                handle = await pool.submit(value)
                got = await handle
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(got, value)
                else:
                    assert got == value
                handle.release()
            handle = await pool.submit(nested)
            got = await handle
            np.testing.assert_array_equal(got["boxes"], nested["boxes"])
            np.testing.assert_array_equal(got["ids"][0], nested["ids"][0])
            assert got["meta"] == ("cam-1", 7)
            handle.release()
            assert pool.in_flight == 0

    run(main())


def test_workers_get_writable_zero_copy_views_and_bytes():
    async def main() -> None:
        async with WorkerPool(Describe(), 1, 2) as pool:
            for value, expected in (
                (np.zeros((64, 64), np.uint8), ("ndarray", True, False)),
                (b"jpeg", ("bytes",)),
                (bytearray(b"jpeg"), ("bytes",)),
                (memoryview(b"jpeg"), ("bytes",)),
            ):
                handle = await pool.submit(value)
                got = await handle
                assert got == expected
                handle.release()

    run(main())


def test_results_are_views_into_the_slot_until_release():
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 1) as pool:
            first = await pool.submit(np.full(1000, 1, np.int32))
            result = await first
            assert not result.flags.owndata and result.base is not None
            assert (result == 1).all()
            first.release()
            # The single slot is reused: the old (released) view now shows the new task.
            second = await pool.submit(np.full(1000, 2, np.int32))
            await second
            assert (result == 2).all()
            second.release()

    run(main())


def test_results_that_view_or_modify_the_input_are_correct():
    base = np.arange(1000, dtype=np.int64)

    async def main() -> None:
        async with WorkerPool(Views(), 2, 4) as pool:
            cases = {
                "inplace": lambda a: a * 2,
                "slice": lambda a: a[10:],
                "pair": lambda a: (a[5:], a[:-5]),
                "strided": lambda a: a[::3],
            }
            for _ in range(3):
                for mode, expect in cases.items():
                    handle = await pool.submit((mode, base))
                    got = await handle
                    want = expect(base)
                    if isinstance(want, tuple):
                        for g, w in zip(got, want, strict=True):
                            np.testing.assert_array_equal(g, w)
                    else:
                        np.testing.assert_array_equal(got, want)
                    handle.release()
            np.testing.assert_array_equal(base, np.arange(1000))  # the caller's copy is intact

    run(main())


def test_result_too_big_for_its_slot_comes_in_band_once_then_slots_grow():
    async def main() -> None:
        pool = WorkerPool(Views(), 1, 2, initial_slot_bytes=64 * 1024)
        async with pool:
            for _ in range(8):
                handle = await pool.submit(("big", np.zeros(10, np.int64)))
                got = await handle
                assert got.shape == (600_000,) and (got == 7).all()
                handle.release()
            stats = pool.stats
            assert 1 <= stats["inband_results"] <= 2
            assert stats["slot_grows"] >= 1

    run(main())


def slot_memfds() -> list[str]:
    return [name for name in our_memfds() if "fogverse-slot" in name]


def test_small_values_travel_in_the_frame_and_need_no_slot():
    async def main() -> None:
        async with WorkerPool(Echo(), 2, 8) as pool:
            items = [*range(50), "frame-1", b"1 KiB" * 200, {"boxes": [(1, 2, 3, 4)]}, None]
            assert await map_through(pool, items) == items
            assert slot_memfds() == []  # no slot was ever needed
            handle = await pool.submit(np.zeros(100_000, np.uint8))  # a frame: slot path
            result = await handle
            assert not result.flags.owndata  # a zero-copy view of its slot
            assert len(slot_memfds()) == 1
            handle.release()

    run(main())


class SlowEcho(Processor):
    def process(self, data: Any) -> Any:
        time.sleep(0.001)
        return data


class Sized(Processor):
    """A small input, a big result: an array of ``n`` bytes."""

    def process(self, data: Any) -> Any:
        return np.full(data, 5, np.uint8)


def test_small_input_with_a_big_result_moves_to_slots_after_one_in_band_reply():
    async def main() -> None:
        async with WorkerPool(Sized(), 1, 2) as pool:
            for i in range(6):
                handle = await pool.submit(300_000)
                result = await handle
                assert result.shape == (300_000,) and (result == 5).all()
                # The first comes over the socket (no slot held it) into a private buffer;
                # then inputs go to slots with room for the result, which comes back as a
                # view of the slot's shared memory.
                in_band = isinstance(result.base, bytearray)
                assert in_band == (i == 0), (i, type(result.base))
                assert not result.flags.owndata
                handle.release()
            assert pool.stats["inband_results"] == 1

    run(main())


def test_inline_inputs_beyond_their_byte_budget_take_slots_and_all_arrive():
    async def main() -> None:
        async with WorkerPool(SlowEcho(), 1, 64) as pool:
            items = [bytes([i]) * 1900 for i in range(200)]
            results = await map_through(pool, items)
            assert results == items
            assert slot_memfds()  # 64 x 1.9 KB in flight is over budget: some used slots
            assert pool._inline_bytes == 0  # every inline task gave its bytes back

    run(main())


def test_output_array_results_come_back_without_a_copy():
    frame = np.arange(300 * 400, dtype=np.uint8).reshape(300, 400)

    async def main() -> None:
        pool = WorkerPool(Scale(), 2, 2, initial_slot_bytes=64 * 1024)
        async with pool:
            for i in range(6):
                handle = await pool.submit(frame)
                got = await handle
                np.testing.assert_array_equal(got["scaled"], frame * np.float32(0.5))
                assert got["extra"].tolist() == [1, 2, 3]
                if i >= 2:  # the slots have grown to fit input and output by now
                    # The array is where the worker wrote it, right after the input: the
                    # worker did not copy it into place behind the result's header.
                    start = got["scaled"].__array_interface__["data"][0]
                    offset = start - handle._slot.region.address
                    assert offset == shm.align(shm.measure(shm.encode(frame)))
                handle.release()
            # Only the first result of each slot (before it grew) travelled over the socket.
            assert pool.stats["inband_results"] <= 2

    run(main())


def test_output_array_outside_a_worker_is_an_ordinary_array():
    out = output_array((2, 3), np.uint16)
    assert out.shape == (2, 3) and out.dtype == np.uint16 and out.flags.owndata


def test_dropping_an_unreleased_handle_keeps_its_result_intact():
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 1) as pool:
            results = []
            for i in range(5):  # the pattern many users write first
                results.append(await (await pool.submit(np.full(100, i))))
            for i, r in enumerate(results):
                assert (r == i).all()
            assert pool.in_flight == 0

    run(main())


# --------------------------------------------------------------------------- the processor


def test_processor_is_pickled_once_and_unpickled_once_per_worker():
    CountingProcessor.pickled = 0

    async def main() -> None:
        async with WorkerPool(CountingProcessor(), 2, 4, max_retries=0) as pool:
            results = await map_through(pool, list(range(40)))
            assert {count for _, count in results} == {1}
            assert {pid for pid, _ in results} == set(pool.worker_pids)
            # A replacement worker gets the same pickled bytes: still one pickling.
            before = set(pool.worker_pids)
            with pytest.raises(WorkerCrashed):
                await (await pool.submit("die"))
            seen: dict[int, int] = {}
            deadline = time.monotonic() + DEADLINE
            while not set(seen) - before and time.monotonic() < deadline:
                seen.update(await map_through(pool, list(range(8))))
            assert set(seen) - before, "the replacement worker never ran a task"
            assert set(seen.values()) == {1}

    run(main())
    assert CountingProcessor.pickled == 1


class _Holder:
    def __init__(self) -> None:
        self.conn = threading.Lock()


class Unpicklable(Processor):
    def __init__(self, nested: bool) -> None:
        self.fine = [1, 2, 3]
        if nested:
            self.holder = _Holder()
        else:
            self.lock = threading.Lock()

    def process(self, data: Any) -> Any:
        return data


@pytest.mark.parametrize(("nested", "path"), [(False, "lock"), (True, "holder.conn")])
def test_unpicklable_processor_fails_at_start_naming_the_attribute(nested, path):
    async def main() -> None:
        pool = WorkerPool(Unpicklable(nested), 2, 2)
        with pytest.raises(ProcessorPickleError) as info:
            await pool.start()
        assert info.value.path == path
        assert repr(path) in str(info.value)
        assert pool.worker_pids == []
        await pool.close()

    run(main())


def test_setup_failure_raises_with_the_workers_traceback():
    async def main() -> None:
        pool = WorkerPool(SetupFails(), 2, 2)
        with pytest.raises(WorkerSetupError) as info:
            await pool.start()
        assert "boom in setup" in info.value.traceback_text
        assert "RuntimeError" in str(info.value)
        await pool.close()

    run(main())


def test_thread_limits_are_set_in_workers():
    async def main() -> None:
        for threads in (1, 2):
            async with WorkerPool(Environment(), 1, 1, worker_threads=threads) as pool:
                handle = await pool.submit(None)
                env, cv_threads, blas = await handle
                handle.release()
                assert set(env.values()) == {str(threads)}
                assert cv_threads == threads
                assert set(blas) <= {threads}

    run(main())


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_workers_run_as_batch_work_so_they_do_not_preempt_the_event_loop():
    async def main() -> None:
        async with WorkerPool(Echo(), 2, 2) as pool:
            for pid in pool.worker_pids:
                assert os.sched_getscheduler(pid) == os.SCHED_BATCH
            assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller is left alone

    run(main())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_workers_keep_the_memory_a_task_frees_for_the_next_task():
    # glibc's sliding thresholds would settle below the 3 MiB a task frees and hand the heap
    # back to the kernel after every task: 768 page faults per task to take it back.
    async def main() -> None:
        async with WorkerPool(Churn(), 1, 1) as pool:
            faults = await map_through(pool, [None] * 12)
        assert max(faults[4:]) < 64, faults

    run(main())


# --------------------------------------------------------------------------- faults


def test_exception_in_process_fails_only_that_task():
    async def main() -> None:
        async with WorkerPool(Faulty(), 2, 4) as pool:
            pids = set(pool.worker_pids)
            handles = [await pool.submit(x) for x in (1, "raise", 2, 3)]
            for h in handles:
                await _settle(h)
            with pytest.raises(TaskFailed) as info:
                await handles[1]
            assert info.value.exc_type == "ValueError"
            assert "bad input 'raise'" in info.value.message
            assert "in process" in info.value.traceback_text
            assert [(await h)[0] for h in (handles[0], handles[2], handles[3])] == [1, 2, 3]
            for h in handles:
                h.release()
            assert set(pool.worker_pids) == pids  # nobody restarted
            assert pool.in_flight == 0

    run(main())


def test_an_exception_that_cannot_be_printed_fails_only_its_task():
    async def main() -> None:
        async with WorkerPool(Faulty(), 1, 2, max_retries=0) as pool:
            pids = pool.worker_pids
            handle = await pool.submit("unprintable")
            with pytest.raises(TaskFailed) as info:
                await handle
            assert info.value.exc_type.endswith(".Unprintable")
            assert "Unprintable" in info.value.message
            handle.release()
            handle = await pool.submit(1)
            assert (await handle)[0] == 1
            handle.release()
            assert pool.worker_pids == pids and "crashed" not in pool.stats

    run(main())


def test_a_crash_among_batched_short_tasks_is_charged_to_the_task_that_caused_it(monkeypatch):
    # Every task counts as short: the worker holds replies back while more tasks are queued.
    monkeypatch.setattr(pool_module, "_SHORT_TASK", float("inf"))
    items = [*range(10), "kill", *range(10, 15)]

    async def main() -> None:
        async with WorkerPool(Faulty(), 1, len(items), max_retries=0) as pool:
            await map_through(pool, list(range(3 * len(items))))
            assert pool._short  # the next window is sent in one write, replies held back
            outcomes = await map_through(pool, items)
            crashed = outcomes[items.index("kill")]
            assert isinstance(crashed, WorkerCrashed) and crashed.attempts == 1, outcomes
            others = [o for i, o in zip(items, outcomes, strict=True) if i != "kill"]
            assert [o[0] if isinstance(o, tuple) else o for o in others] == [
                i for i in items if i != "kill"
            ], outcomes
            assert pool.stats["crashed"] == 1

    run(main())


async def _settle(handle: Any) -> None:
    with contextlib.suppress(Exception):
        await handle


def test_killed_worker_is_replaced_and_its_task_retried(tmp_path):
    async def main() -> None:
        async with WorkerPool(Faulty(str(tmp_path)), 2, 4) as pool:
            first = set(pool.worker_pids)
            handle = await pool.submit("kill-once")
            assert await handle == "survived"
            handle.release()
            assert pool.stats["restarts"] == 1
            await until(lambda: len(pool.worker_pids) == 2, DEADLINE, "a replacement worker")
            assert set(pool.worker_pids) != first
            results = await map_through(pool, list(range(10)))
            assert [r[0] for r in results] == list(range(10))

    run(main())


@pytest.mark.parametrize(
    ("poison", "exitcode"),
    [("kill", -signal.SIGKILL), ("segfault", -signal.SIGSEGV), ("exit", 3)],
)
def test_poison_input_fails_after_max_retries_and_others_proceed(poison, exitcode):
    async def main() -> None:
        async with WorkerPool(Faulty(), 2, 6, max_retries=1) as pool:
            handles = [await pool.submit(x) for x in (0, 1, poison, 2, 3, 4)]
            outcomes = []
            for h in handles:
                try:
                    outcomes.append((await h)[0])
                except WorkerCrashed as exc:
                    outcomes.append(exc)
                h.release()
            crashed = outcomes[2]
            assert isinstance(crashed, WorkerCrashed)
            assert crashed.exitcode == exitcode and crashed.attempts == 2
            assert outcomes[:2] + outcomes[3:] == [0, 1, 2, 3, 4]
            assert pool.stats["crashed"] == 1
            # The pool keeps serving.
            handle = await pool.submit(99)
            assert (await handle)[0] == 99
            handle.release()

    run(main())


def test_pool_stops_restarting_when_workers_cannot_start(tmp_path):
    class BrokenAfterFirstStart(Processor):
        def __init__(self, marker: str) -> None:
            self.marker = marker

        def setup(self) -> None:
            if Path(self.marker).exists():
                raise RuntimeError("cannot start again")
            Path(self.marker).touch()

        def process(self, data: Any) -> Any:
            os.kill(os.getpid(), signal.SIGKILL)

    async def main() -> None:
        pool = WorkerPool(BrokenAfterFirstStart(str(tmp_path / "m")), 1, 2, max_retries=5)
        await pool.start()
        handle = await pool.submit(1)
        with pytest.raises(WorkerSetupError, match="cannot start again"):
            await handle
        with pytest.raises(WorkerSetupError):
            await pool.submit(2)
        await pool.close()

    run(main())


def test_worker_ignores_sigint():
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 1) as pool:
            (pid,) = pool.worker_pids
            os.kill(pid, signal.SIGINT)
            handle = await pool.submit(5)
            assert await handle == 5
            handle.release()
            assert pool.worker_pids == [pid]

    run(main())


# --------------------------------------------------------------------------- the window


def test_submit_waits_while_the_window_is_full():
    async def main() -> None:
        async with WorkerPool(Echo(), 2, 3) as pool:
            held = [await pool.submit(i) for i in range(3)]
            for h in held:
                await h
            blocked = asyncio.ensure_future(pool.submit(3))
            done, _ = await asyncio.wait([blocked], timeout=0.3)
            assert not done and pool.in_flight == 3
            held[0].release()
            handle = await blocked
            assert await handle == 3
            for h in [*held, handle]:
                h.release()
            assert pool.in_flight == 0 and pool.max_in_flight_seen == 3

    run(main())


def test_try_submit_returns_none_while_the_window_is_full_and_never_jumps_a_waiter():
    async def main() -> None:
        async with WorkerPool(Echo(), 2, 2) as pool:
            held = [pool.try_submit(i) for i in range(2)]
            assert all(h is not None for h in held)
            assert pool.try_submit(2) is None and pool.in_flight == 2
            for h in held:
                assert await h in (0, 1)
            waiting = asyncio.ensure_future(pool.submit(3))
            await asyncio.sleep(0)
            held[0].release()  # the slot goes to the waiting submit, not to try_submit
            assert pool.try_submit(4) is None
            handle = await waiting
            assert await handle == 3
            handle.release()
            again = pool.try_submit(5)  # a free slot and nobody waiting: taken at once
            assert again is not None and await again == 5
            for h in (again, held[1]):
                h.release()
            assert pool.in_flight == 0 and pool.max_in_flight_seen == 2

    run(main())


def test_unpicklable_input_raises_at_submit_and_frees_its_slot():
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 1) as pool:
            with pytest.raises(Exception, match="pickle"):
                await pool.submit({"callback": lambda: None})
            assert pool.in_flight == 0
            handle = await pool.submit(1)
            assert await handle == 1
            handle.release()

    run(main())


@pytest.mark.parametrize("release_first", [False, True])
def test_cancelled_submit_gives_no_slot_away(release_first):
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 2) as pool:
            held = [await pool.submit(i) for i in range(2)]
            for h in held:
                await h
            waiting = asyncio.ensure_future(pool.submit(2))
            await asyncio.sleep(0)
            assert not waiting.done()
            if release_first:
                held[0].release()  # hands the slot to the waiter, which is then cancelled
                waiting.cancel()
            else:
                waiting.cancel()
                held[0].release()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.in_flight == 1
            handle = await pool.submit(3)
            assert await handle == 3
            handle.release()
            held[1].release()
            assert pool.in_flight == 0

    run(main())


def test_window_bound_holds_and_memory_stays_flat_over_thousands_of_tasks():
    total, window = 3000, 8
    frame = np.ones((128, 1024), np.uint8)  # 128 KiB a task

    async def main() -> None:
        async with WorkerPool(Echo(), 2, window) as pool:
            ready: asyncio.Queue[Any] = asyncio.Queue()
            rss: list[int] = []
            process = psutil.Process()

            async def slow_consumer() -> None:
                for i in range(total):
                    handle = await ready.get()
                    assert handle.result().shape == frame.shape
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    handle.release()
                    if i % 50 == 0:
                        rss.append(process.memory_info().rss)

            consumer = asyncio.ensure_future(slow_consumer())
            for _ in range(total):
                handle = await pool.submit(frame)
                handle.add_done_callback(ready.put_nowait)
                assert pool.in_flight <= window
            await consumer
            assert pool.max_in_flight_seen <= window
            assert pool.stats["completed"] == total
            third = len(rss) // 3
            first, last = np.mean(rss[:third]), np.mean(rss[-third:])
            assert last <= first * 1.2 + 16 * 2**20, (first, last)

    run(main(), timeout=90)


def test_completion_order_is_what_the_pool_delivers(tmp_path):
    flag = tmp_path / "flag"

    async def main() -> None:
        order: list[str] = []
        async with WorkerPool(Sleepy(), 2, 2) as pool:
            slow = await pool.submit(("wait-for", str(flag)))
            slow.add_done_callback(lambda h: order.append("slow"))
            fast = await pool.submit(("sleep", 0))
            fast.add_done_callback(lambda h: order.append("fast"))
            await fast
            await asyncio.sleep(0)
            assert order == ["fast"] and not slow.done()
            # The task submitted first can finish only now: the pool delivered the later one
            # as soon as it was done, not in submission order.
            flag.touch()
            await slow
            await asyncio.sleep(0)
            assert order == ["fast", "slow"]
            assert slow.done() and fast.done()
            late: list[Any] = []
            slow.add_done_callback(late.append)  # already done: called soon
            await asyncio.sleep(0)
            assert late == [slow]
            slow.release()
            fast.release()

    run(main())


def test_cancelling_one_wait_for_a_task_leaves_the_task_and_other_waits_alone(tmp_path):
    flag = tmp_path / "flag"

    async def main() -> None:
        async with WorkerPool(Sleepy(), 1, 1) as pool:
            handle = await pool.submit(("wait-for", str(flag)))

            async def wait() -> Any:
                return await handle

            first, second = asyncio.ensure_future(wait()), asyncio.ensure_future(wait())
            await asyncio.sleep(0)  # both are waiting
            first.cancel()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(handle, 0.05)  # a wait that times out, cancelled too
            flag.touch()
            assert (await second)[0] == "wait-for"
            assert (await handle)[0] == "wait-for"
            with pytest.raises(asyncio.CancelledError):
                await first
            handle.release()

    run(main())


# --------------------------------------------------------------------------- shared memory


def test_slots_are_memfds_never_dev_shm():
    async def main() -> None:
        async with WorkerPool(Echo(), 2, 2) as pool:
            handle = await pool.submit(np.zeros(100_000, np.uint8))
            await handle
            for pid in [os.getpid(), *pool.worker_pids]:
                assert "/dev/shm/" not in read_maps(pid)
            assert "memfd:fogverse-slot" in read_maps(os.getpid())
            assert any("memfd:fogverse-slot" in read_maps(pid) for pid in pool.worker_pids)
            handle.release()

    run(main())


# --------------------------------------------------------------------------- shutdown


def test_close_drains_runs_teardown_and_is_idempotent(tmp_path):
    async def main() -> None:
        pool = WorkerPool(Sleepy(str(tmp_path)), 2, 4)
        await pool.start()
        pids = pool.worker_pids
        handles = [await pool.submit(("sleep", 0.05)) for _ in range(4)]
        await asyncio.gather(pool.close(), pool.close())
        assert all(h.done() for h in handles)
        assert [(h.result())[0] for h in handles] == ["sleep"] * 4
        await pool.close()
        with pytest.raises(RuntimeError):
            await pool.start()
        with pytest.raises(PoolClosed):
            await pool.submit(("sleep", 0))
        for pid in pids:
            assert (tmp_path / f"teardown-{pid}").exists()
            assert gone(pid)

    run(main())
    gc.collect()
    assert our_memfd_maps() == []  # nothing views the slots any more: all unmapped


def test_close_without_drain_fails_what_is_left_and_kills_stragglers(tmp_path):
    started_flag = tmp_path / "started"

    async def main() -> None:
        pool = WorkerPool(Sleepy(), 1, 3)
        await pool.start()
        (pid,) = pool.worker_pids
        handles = [await pool.submit(("announce-then-sleep", str(started_flag)))]
        handles += [await pool.submit(("sleep", 60)) for _ in range(2)]
        # The worker is inside a task (a straggler to kill), not between tasks.
        await until(started_flag.exists, DEADLINE, "the worker to start its task")
        started = time.monotonic()
        await pool.close(drain=False, timeout=1.0)
        assert time.monotonic() - started < 15
        for h in handles:
            with pytest.raises(PoolClosed):
                h.result()
        assert gone(pid)

    run(main())


def test_close_while_starting_stops_the_start_even_if_workers_never_get_ready(tmp_path):
    async def main() -> None:
        pool = WorkerPool(SetupWaits(str(tmp_path)), 2, 2)
        starting = asyncio.ensure_future(pool.start())
        await until(lambda: len(list(tmp_path.glob("setup-*"))) == 2, DEADLINE, "setup()")
        await pool.close(drain=False, timeout=0.2)  # kills the workers inside setup()
        with pytest.raises(PoolClosed):
            await asyncio.wait_for(starting, DEADLINE)
        assert all(gone(pid) for pid in pool.all_worker_pids)

    run(main())


def test_close_while_starting_restarts_no_worker(tmp_path):
    async def main() -> None:
        pool = WorkerPool(SetupWaits(str(tmp_path)), 2, 2)
        starting = asyncio.ensure_future(pool.start())
        await until(lambda: len(list(tmp_path.glob("setup-*"))) == 2, DEADLINE, "setup()")
        closing = asyncio.ensure_future(pool.close())
        await asyncio.sleep(0)
        (tmp_path / "go").touch()  # the workers get ready, then read close()'s STOP
        with pytest.raises(PoolClosed):
            await asyncio.wait_for(starting, DEADLINE)
        await closing
        assert "restarts" not in pool.stats, pool.stats
        assert len(pool.all_worker_pids) == 2
        assert all(gone(pid) for pid in pool.all_worker_pids)
        with pytest.raises(PoolClosed):
            await pool.submit(1)

    run(main())


def test_spawn_start_method_works():
    async def main() -> None:
        async with WorkerPool(Echo(), 1, 2, start_method="spawn") as pool:
            handle = await pool.submit(np.arange(5))
            np.testing.assert_array_equal(await handle, np.arange(5))
            handle.release()

    run(main())


_FD_LIMIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, resource
    from fogverse.parallel import WorkerPool
    from fogverse.processor import Processor

    class Echo(Processor):
        def process(self, data):
            return data

    async def main():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))
        pool = WorkerPool(Echo(), 1, 5000)
        try:
            await pool.start()
        except ValueError as exc:
            print("refused:", exc)
        else:
            print("started")
            await pool.close()

    asyncio.run(main())
    """
)


@pytest.mark.timeout(60)
def test_a_window_beyond_the_open_file_limit_is_refused_at_start():
    # One shared-memory slot (a descriptor) per task in flight: a window the hard limit cannot
    # hold used to start and fail with EMFILE partway through the run.
    result = subprocess.run(
        [sys.executable, "-c", _FD_LIMIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:"), result.stdout
    assert "at most 1024 (ulimit -Hn)" in result.stdout and "max_running_task" in result.stdout


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from fogverse.parallel import WorkerPool
    from fogverse.processor import Processor

    class Busy(Processor):
        def process(self, data):
            time.sleep(data)
            return data

    async def main():
        async with WorkerPool(Busy(), 2, 4, start_method=sys.argv[1]) as pool:
            handles = [await pool.submit(s) for s in (0.0, 30.0, 30.0)]
            await handles[0]
            print(" ".join(map(str, pool.worker_pids)), flush=True)
            await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, start_method):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
        text=True,
    )
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        descendants = [p.pid for p in psutil.Process(parent.pid).children(recursive=True)]
        assert set(pids) <= set(descendants)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(
            lambda: all(gone(pid) for pid in descendants),
            DEADLINE,
            lambda: f"the descendants to exit; alive: {[p for p in descendants if not gone(p)]}",
            interval=0.02,
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout:
            parent.stdout.close()


class Pause(Processor):
    """Takes ``seconds`` of (sleeping) work per task."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process(self, data: Any) -> Any:
        time.sleep(self.seconds)
        return data


def test_short_tasks_are_sent_in_batches_long_ones_two_per_worker():
    async def main() -> None:
        n = 3000
        async with WorkerPool(Echo(), 2, 16) as pool:
            assert await map_through(pool, list(range(n))) == list(range(n))
            # One write per task unbatched, about one per two at two tasks a worker (measured
            # 0.5 n); holding its share of the window, a worker gets them 8 to a write (0.15 n).
            assert pool.stats["task_sends"] < 0.35 * n, pool.stats
        async with WorkerPool(Pause(0.003), 2, 16) as pool:
            assert await map_through(pool, list(range(60))) == list(range(60))
            # Tasks longer than a round trip are not stranded behind a busy worker.
            assert pool._depth == 2

    run(main())
