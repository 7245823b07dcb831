"""The worker process: receives the processor once, then runs tasks from shared-memory slots.

The frames it exchanges with the parent are in :mod:`fogverse.parallel.wire`.

The pickles exchanged here only ever come from our own parent or our own worker.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import socket
import sys
import threading
import traceback
from collections import deque
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from fogverse.parallel import shm
from fogverse.parallel.wire import (
    ERROR,
    HELLO,
    INBAND,
    LEN,
    MSG_ERROR,
    MSG_HELLO,
    MSG_INBAND,
    MSG_READY,
    MSG_RESULT,
    MSG_SETUP_FAILED,
    MSG_STOP,
    MSG_VALUE,
    READY,
    RESULT,
    SETUP_FAILED,
    TASK,
    TASK_FD,
    TASK_INLINE,
    TASK_SHORT,
    VALUE,
)

__all__ = ["output_array", "worker_main"]

logger = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# glibc's mallopt() parameters, and the values a worker fixes them at: the ceiling glibc's own
# sliding thresholds reach (mmap 32 MiB on 64-bit, trim twice that). Left sliding, they stop
# wherever the largest block freed so far put them: a worker decoding 720p JPEGs settled at a
# trim threshold below the 2.5 MiB one task frees, gave the heap back to the kernel after
# every frame and took it again, page by page, on the next: 605 page faults and 1.4 ms of
# system time per frame, 43 % over the same stage run in the parent (benchmarks/README.md).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD

# Room kept after output arrays for the result's header, table and pickle metadata.
_OUTPUT_RESERVE = 4096

# The slot of the task being processed, and where its free space starts (worker only).
_task_region: shm.SharedRegion | None = None
_task_cursor = 0

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_FD_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
# A plain int: ``int & socket.MSG_CTRUNC`` goes through enum.Flag and costs 0.6 us per read.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


def output_array(shape: int | tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
    """An uninitialised array for ``Processor.process`` to fill and return.

    In a pool worker it lives in the task's shared-memory slot, next to the input, so returning
    it (alone or inside a tuple/list/dict) costs no copy at all. Anywhere else, or when the
    slot is too small this time (it grows for the next task), it is an ordinary
    ``np.empty``. Use it only for the result: the memory is reused by later tasks.
    """
    global _task_cursor
    dt = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    region = _task_region
    if region is not None and not dt.hasobject:
        at = shm.align(_task_cursor)
        end = at + math.prod(dims) * dt.itemsize
        if end + _OUTPUT_RESERVE <= region.size:
            _task_cursor = end
            return np.ndarray(dims, dt, buffer=region.view, offset=at)
    return np.empty(dims, dt)


class _Inbox:
    """Frames from the parent, with the descriptors that arrived beside them (in order)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # What the last reads brought, and where the next frame starts in it: frames are
        # sliced out as they are taken, the rest kept for the next read.
        self._buf = b""
        self._pos = 0
        self._fds: deque[int] = deque()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def next(self) -> bytes | None:
        """The next frame, or None at end of stream (the parent is gone)."""
        while True:
            buf = self._buf
            pos = self._pos
            if len(buf) - pos >= 4:
                end = pos + 4 + LEN.unpack_from(buf, pos)[0]
                if end <= len(buf):
                    self._pos = end
                    return buf[pos:end]
            # Wait in poll() for input, not in recvmsg(): every read of our replies by the
            # parent frees space on this socket, and the kernel announces that (EPOLLOUT) to
            # whatever waits on it. recvmsg() would wake for each announcement and sleep again,
            # a wasted wake-up of this process that the parent pays for in its read.
            self._poll.poll()
            data, ancdata, flags, _ = self._sock.recvmsg(1 << 16, _FD_SPACE)
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                    self._fds.extend(fds)
            if flags & _MSG_CTRUNC:
                raise RuntimeError("descriptor lost in transit (control message truncated)")
            if not data:
                return None
            self._buf = buf[pos:] + data if pos < len(buf) else data
            self._pos = 0

    def has_frames(self, count: int) -> bool:
        """Whether at least ``count`` whole frames are buffered."""
        buf = self._buf
        pos = self._pos
        while count > 0 and len(buf) - pos >= 4:
            pos += 4 + LEN.unpack_from(buf, pos)[0]
            if pos > len(buf):
                return False
            count -= 1
        return count <= 0

    def take_fd(self) -> int:
        return self._fds.popleft()


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _prepare_process(index: int, worker_threads: int, parent_pid: int) -> None:
    # The parent owns shutdown: Ctrl-C in a terminal reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        libc = _libc()
        with contextlib.suppress(Exception):
            libc.prctl(_PR_SET_NAME, f"fogverse-w{index}".encode()[:15], 0, 0, 0)
        # Only meaningful when the pool process is our direct parent (spawn); under forkserver
        # the parent-death watch below does the job.
        if os.getppid() == parent_pid:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:
                os._exit(1)
    _watch_parent()
    _limit_threads(worker_threads)
    _keep_freed_memory()
    # Workers are throughput work: as SCHED_BATCH a worker that wakes does not preempt the
    # parent's event loop (which feeds every worker and talks to Kafka) on a shared core; it
    # still gets its fair share of CPU.
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _watch_parent() -> None:
    """Exit at once if the parent dies, even while process() is busy in native code."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="fogverse-parent-watch", daemon=True).start()


def _keep_freed_memory() -> None:
    """A worker runs the same task over and over, and what one task frees the next one
    allocates again: keep blocks below 32 MiB in the heap and up to 64 MiB of it free,
    instead of returning it to the kernel between tasks. A no-op off glibc."""
    if sys.platform != "linux":
        return
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    # Fixing either one stops glibc sliding the other, so both are set.
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _limit_threads(count: int) -> None:
    # Libraries loaded from here on (models in setup()) read these; two workers on two cores
    # each running a full-size thread pool would oversubscribe the machine.
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(count)
    try:
        import cv2
    except ImportError:
        pass
    else:
        cv2.setNumThreads(count)
    if "numpy" in sys.modules:
        _limit_openblas(count)


def _limit_openblas(count: int) -> None:
    # numpy may have been imported (by the forkserver preload, or by the parent's __main__)
    # before the environment variables above were set; tell its OpenBLAS directly.
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return
    names = (
        "openblas_set_num_threads",
        "openblas_set_num_threads64_",
        "scipy_openblas_set_num_threads",
        "scipy_openblas_set_num_threads64_",
    )
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(count))
                break


def _error_frame(task_id: int, exc: BaseException) -> bytes:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    # An exception that cannot even be printed still fails only its task, not the worker.
    try:
        message = str(exc)
    except Exception:
        try:
            message = repr(exc)
        except Exception:
            message = f"<{name}: str() and repr() raised>"
    body = pickle.dumps((name, message, traceback.format_exc()), protocol=5)
    return ERROR.pack(ERROR.size - 4 + len(body), MSG_ERROR, task_id) + body


def _load_processor(inbox: _Inbox) -> Any:
    frame = inbox.next()
    if frame is None:
        raise EOFError("parent closed the connection before sending the processor")
    _, kind, size = HELLO.unpack(frame)
    if kind != MSG_HELLO:
        raise RuntimeError(f"expected HELLO, got message type {kind}")
    region = shm.SharedRegion.attach(inbox.take_fd())
    try:
        return pickle.loads(region.view[:size])
    finally:
        region.close()


def worker_main(sock: socket.socket, index: int, worker_threads: int, parent_pid: int) -> None:
    """Entry point of a worker process (the target of ``multiprocessing.Process``)."""
    _prepare_process(index, worker_threads, parent_pid)
    inbox = _Inbox(sock)
    try:
        processor = _load_processor(inbox)
        processor.setup()
    except EOFError:
        return
    except BaseException:
        text = traceback.format_exc().encode()
        with contextlib.suppress(OSError):
            sock.sendall(
                SETUP_FAILED.pack(SETUP_FAILED.size - 4 + len(text), MSG_SETUP_FAILED) + text
            )
        return
    try:
        sock.sendall(READY.pack(READY.size - 4, MSG_READY, os.getpid()))
        _serve(sock, inbox, processor)
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: stop serving (teardown still runs)
    finally:
        try:
            processor.teardown()
        except Exception:
            logger.exception("teardown() of worker %d raised", index)


def _serve(sock: socket.socket, inbox: _Inbox, processor: Any) -> None:
    global _task_region, _task_cursor
    slots: dict[int, tuple[int, shm.SharedRegion]] = {}
    process = processor.process
    # Replies of short tasks held back while the next task is already here: one write (and
    # one wake-up of the parent) for several. Never held while this worker would wait, nor
    # past half of what it has: the parent refills this worker while it runs the rest.
    held = bytearray()
    held_n = 0
    while True:
        if held and not inbox.has_frames(held_n + 1 if held_n >= 2 else 1):
            sock.sendall(held)
            held.clear()
            held_n = 0
        frame = inbox.next()
        if frame is None or frame[4] == MSG_STOP:
            return
        _, _, task_id, slot_index, generation, flags = TASK.unpack_from(frame)
        if held and not flags & TASK_SHORT:
            # Nothing is held while a task that is not short runs: if it kills this worker,
            # the parent then knows that it was the one running.
            sock.sendall(held)
            held.clear()
            held_n = 0
        if flags & TASK_FD:
            # Replacing the previous generation drops our mapping of it; views that user code
            # kept keep theirs alive.
            slots[slot_index] = (generation, shm.SharedRegion.attach(inbox.take_fd()))
        region: shm.SharedRegion | None = None
        in_end = 0
        try:
            if flags & TASK_INLINE:
                result = process(pickle.loads(memoryview(frame)[TASK.size :]))
            else:
                region = slots[slot_index][1]
                in_end = shm.extent(region.view)
                _task_region, _task_cursor = region, in_end
                try:
                    result = process(shm.read(region.view))
                finally:
                    _task_region = None
            reply = _reply(task_id, result, region, in_end)
        except Exception as exc:
            reply = _error_frame(task_id, exc)
        finally:
            result = None
        held += reply
        held_n += 1
        if not flags & TASK_SHORT or reply[4] == MSG_INBAND:
            sock.sendall(held)
            held.clear()
            held_n = 0


def _reply(
    task_id: int, result: Any, region: shm.SharedRegion | None, in_end: int
) -> bytes | bytearray:
    """The reply frame carrying ``result``: a small value pickled in it, else the result in
    the task's slot (whose input ends at ``in_end``), else (too big for the slot, or no slot)
    the payload itself in band."""
    packed = shm.pack(result)
    if isinstance(packed, bytes):
        return VALUE.pack(VALUE.size - 4 + len(packed), MSG_VALUE, task_id) + packed
    if region is not None:
        # The input and any output_array() stay where they are; the result's arrays that live
        # there are referenced in place, the rest is written after them.
        out_at = shm.align(_task_cursor)
        end = shm.write(region.view, out_at, packed, region.address, out_at)
        if end <= region.size:
            return RESULT.pack(RESULT.size - 4, MSG_RESULT, task_id, out_at)
        needed = end - shm.align(in_end)  # output arrays included: all must fit next time
    else:
        needed = shm.measure(packed)
    # The parent grows its slots (and stops sending inputs inline) after this one.
    body = bytearray(INBAND.size + shm.measure(packed))
    INBAND.pack_into(body, 0, len(body) - 4, MSG_INBAND, task_id, needed)
    shm.write(memoryview(body)[INBAND.size :], 0, packed)
    return body
