"""The parent side of the process pool: an asyncio-facing window of tasks over worker processes.

Each task owns one of ``max_running_task`` reusable shared-memory slots from :meth:`submit`
until :meth:`TaskHandle.release`; waiting for a free slot is the backpressure. The input is
copied once into the slot; the worker reads it in place and writes its result after it in the
same slot, so frames never go through a pipe. Small values (up to ``shm.INLINE_MAX`` bytes
pickled: ids, scalars, short strings, small dicts of boxes) travel inside the task's message
instead, which costs less than the slot's bookkeeping. The parent reads replies with
``loop.add_reader`` (no thread per worker) and learns of a worker's death from its process
sentinel; a dead worker is replaced and its tasks retried, since their inputs are still in
their slots (or, for small ones, kept on their handles).

Beside it: :mod:`~fogverse.parallel.task` (the handle), :mod:`~fogverse.parallel.slots` (the
slots and who holds them), :mod:`~fogverse.parallel.connection` (the parent's end of one worker:
its socket, cut into frames), :mod:`~fogverse.parallel.wire` (the frames both sides speak),
:mod:`~fogverse.parallel.worker` (the worker's side) and :mod:`~fogverse.parallel.pickling` (the
processor, pickled once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import pickle
import resource
import socket
import time
import weakref
from typing import Any, Literal

from fogverse.parallel import shm, wire
from fogverse.parallel.connection import WorkerConnection
from fogverse.parallel.errors import (
    PoolClosed,
    TaskFailed,
    WorkerCrashed,
    WorkerSetupError,
)
from fogverse.parallel.pickling import pickle_processor
from fogverse.parallel.slots import Slot, SlotAllocator
from fogverse.parallel.task import TaskHandle
from fogverse.parallel.worker import worker_main
from fogverse.processor import Processor

__all__ = ["StartMethod", "TaskHandle", "WorkerPool"]

logger = logging.getLogger(__name__)

StartMethod = Literal["forkserver", "spawn"]

# Tasks queued on one worker's socket. Two keeps a worker busy while the parent reads its last
# result; more would strand tasks behind a slow one instead of giving them to an idle worker.
# Tasks shorter than _SHORT_TASK cost less than the round trip that feeds them, so for them a
# worker may hold its share of the window: the parent then sends and reads them in batches.
_PREFETCH = 2
_SHORT_TASK = 200e-6
_STARTUP_FAILURE_LIMIT = 3
_RESTART_BACKOFF = 0.1
_FORKSERVER_RETRIES = 20
_KILL_GRACE = 5.0
# Bytes of small inputs carried inside TASK frames at once, all workers together: far below a
# socket's buffer, so a send to a worker that is busy never blocks the event loop.
_INLINE_BUDGET = 64 << 10

_NEW, _STARTING, _RUNNING, _CLOSING, _STOPPING, _CLOSED, _BROKEN = range(7)
_TASK_REPLIES = frozenset((wire.MSG_RESULT, wire.MSG_VALUE, wire.MSG_INBAND, wire.MSG_ERROR))
_TASK_PACK = wire.TASK.pack
_TASK_BODY = wire.TASK.size - 4


def _preload_modules() -> list[str]:
    modules = ["fogverse.parallel.worker"]
    modules += [m for m in ("numpy", "cv2") if importlib.util.find_spec(m) is not None]
    return modules


def _ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        # Refused now rather than met as EMFILE partway through a run, once the window fills.
        raise ValueError(
            f"a window of this size needs about {needed} open files (a shared-memory slot per "
            f"task in flight), and this process may open at most {hard} (ulimit -Hn): lower "
            "max_running_task or raise the limit"
        )
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _kill_all(workers: dict[int, WorkerConnection]) -> None:
    # Last resort when a pool is garbage-collected (or the interpreter exits) without close().
    for w in list(workers.values()):
        with contextlib.suppress(Exception):
            if w.process.is_alive():
                w.process.kill()


class WorkerPool:
    """Runs ``processor.process`` in ``process_number`` worker processes, at most
    ``max_running_task`` tasks at a time.

    The processor is pickled once (cloudpickle) and shipped to each worker when it starts;
    ``setup()`` runs there before the first task and ``teardown()`` after the last. Arrays and
    other large inputs and results travel through shared memory; small ones inside the task's
    message. A worker that dies is replaced and its tasks are
    retried up to ``max_retries`` times; an exception in ``process()`` fails only that task.
    (A worker that dies among short tasks whose replies it batched cannot say which one it was
    running: those are run once more, one reply at a time, before a crash is charged.)
    Results arrive in completion order. Use a pool from the thread running its event loop.

    ::

        async with WorkerPool(MyProcessor(), process_number=2, max_running_task=8) as pool:
            handle = await pool.submit(frame)   # waits while 8 tasks hold slots
            handle.add_done_callback(on_result) # or: result = await handle
            ...
            handle.release()                    # when done with the (zero-copy) result

    A script that starts a pool must guard its entry point with
    ``if __name__ == "__main__":``: workers import the main module, as with any
    ``multiprocessing`` start method other than fork.
    """

    def __init__(
        self,
        processor: Processor,
        process_number: int,
        max_running_task: int,
        *,
        start_method: StartMethod = "forkserver",
        max_retries: int = 2,
        worker_threads: int = 1,
        initial_slot_bytes: int = 1 << 20,
    ) -> None:
        if process_number < 1:
            raise ValueError("process_number must be >= 1")
        if max_running_task < 1:
            raise ValueError("max_running_task must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if worker_threads < 1:
            raise ValueError("worker_threads must be >= 1")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        self._processor = processor
        self._process_number = process_number
        self._max_running = max_running_task
        self._start_method = start_method
        self._max_retries = max_retries
        self._worker_threads = worker_threads

        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blob: shm.SharedRegion | None = None
        self._blob_size = 0
        self._stats: collections.Counter[str] = collections.Counter()
        self._slots = SlotAllocator(max_running_task, max(4096, initial_slot_bytes), self._stats)
        self._workers: dict[int, WorkerConnection] = {}
        self._ready: list[WorkerConnection] = []
        self._pending: collections.deque[TaskHandle] = collections.deque()
        self._next_id = 0
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._out_hint = 0
        self._inline_bytes = 0
        self._startup_failures = 0
        self._broken_error: BaseException | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._all_pids: list[int] = []
        self._submitted = 0
        self._completed = 0
        self._context: Any = None
        self._depth = _PREFETCH
        self._short = 0  # wire.TASK_SHORT while tasks are short: their replies may be batched
        self._deep_depth = max(_PREFETCH, -(-max_running_task // process_number))
        self._service = -1.0  # a worker's time per task (EWMA of busy reply intervals), seconds
        self._unsent: list[WorkerConnection] = []
        self._flush_scheduled = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    # ------------------------------------------------------------------ public API

    @property
    def in_flight(self) -> int:
        """Slots held by tasks that were submitted and not yet released."""
        return self._slots.in_flight

    @property
    def max_in_flight_seen(self) -> int:
        return self._slots.max_in_flight

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live workers."""
        return [w.pid for w in self._workers.values()]

    @property
    def all_worker_pids(self) -> list[int]:
        """Pids of every worker this pool has started, replaced ones included."""
        return list(self._all_pids)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: submitted, completed, failed, crashed, retried, restarts, inband_results,
        slot_grows, task_sends (socket writes that carried TASK frames without a descriptor:
        short tasks are sent several to a write)."""
        return {**self._stats, "submitted": self._submitted, "completed": self._completed}

    async def start(self) -> None:
        """Start the workers; returns once every worker has run ``setup()``.

        Raises :class:`ProcessorPickleError` if the processor cannot be pickled,
        :class:`WorkerSetupError` if a worker's ``setup()`` fails, :class:`PoolClosed` if
        :meth:`close` is called meanwhile and ``ValueError`` if the window needs more open
        files than the process may have.
        """
        if self._state != _NEW:
            raise RuntimeError("WorkerPool.start() may be called only once")
        self._state = _STARTING
        self._loop = asyncio.get_running_loop()
        self._slots.bind(self._loop)
        self._idle = asyncio.Event()
        self._idle.set()
        try:
            blob = pickle_processor(self._processor)
            _ensure_fd_limit(self._max_running + 4 * self._process_number + 256)
        except BaseException:
            self._state = _CLOSED
            raise
        self._blob = shm.SharedRegion.create(len(blob), "fogverse-processor")
        self._blob.view[: len(blob)] = blob
        self._blob_size = len(blob)
        self._context = multiprocessing.get_context(self._start_method)
        if self._start_method == "forkserver":
            self._context.set_forkserver_preload(_preload_modules())
        try:
            for index in range(self._process_number):
                self._spawn(index)
            await asyncio.gather(*(w.ready for w in self._workers.values()))
            if self._state != _STARTING:
                # close() ran meanwhile: running now would restart the workers it stops.
                raise PoolClosed("the pool was closed while it started")
        except BaseException:
            await asyncio.shield(self._begin_shutdown(drain=False, timeout=_KILL_GRACE))
            raise
        self._state = _RUNNING

    async def submit(self, data: Any) -> TaskHandle:
        """Queue ``data`` for ``process()``; waits while ``max_running_task`` tasks hold slots."""
        task = self.try_submit(data)
        if task is not None:
            return task
        if self._unsent:
            # About to wait anyway: send the tasks buffered so far now rather than one loop
            # iteration later.
            self._flush()
        slot = await self._slots.wait()
        if self._state != _RUNNING:  # closed while this slot was being handed over
            self._slots.free(slot)
            self._raise_not_running()
        return self._start_task(slot, data)

    def try_submit(self, data: Any) -> TaskHandle | None:
        """:meth:`submit` without waiting: the task's handle, or ``None`` while
        ``max_running_task`` tasks hold slots (or others already wait for one)."""
        if self._state != _RUNNING:
            self._raise_not_running()
        slot = self._slots.try_take()
        if slot is None:
            return None
        return self._start_task(slot, data)

    def _start_task(self, slot: Slot, data: Any) -> TaskHandle:
        """Put ``data`` in ``slot`` (already counted in flight) and dispatch its task."""
        try:
            packed = shm.pack(data)
            inline: bytes | None = None
            if isinstance(packed, bytes):
                if self._out_hint or self._inline_bytes + len(packed) > _INLINE_BUDGET:
                    # Results do not fit in frames (or the budget is spent): use the slot.
                    self._slots.fill(slot, shm.encode(data), self._out_hint)
                else:
                    self._inline_bytes += len(packed)
                    inline = packed
            else:
                self._slots.fill(slot, packed, self._out_hint)
        except BaseException:
            self._slots.free(slot)
            raise
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        task = TaskHandle(self._slots, self._next_id, slot, inline)
        self._active += 1
        if self._active == 1:
            assert self._idle is not None
            self._idle.clear()
        self._submitted += 1
        self._dispatch(task)
        return task

    async def close(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop the pool: wait for in-flight tasks (``drain``), let workers run ``teardown()``,
        kill those still alive after ``timeout`` seconds, release all shared memory. Idempotent.
        """
        if self._state == _NEW:
            self._state = _CLOSED
            return
        await asyncio.shield(self._begin_shutdown(drain=drain, timeout=timeout))

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.close(drain=exc_type is None)

    # ------------------------------------------------------------------ state

    def _raise_not_running(self) -> None:
        if self._state == _BROKEN and self._broken_error is not None:
            raise self._broken_error
        if self._state in (_NEW, _STARTING):
            raise RuntimeError("WorkerPool.start() has not completed")
        raise PoolClosed("the pool is closed")

    # ------------------------------------------------------------------ workers

    def _spawn(self, index: int) -> WorkerConnection:
        loop = self._loop
        assert loop is not None and self._blob is not None
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = self._context.Process(
                target=worker_main,
                args=(child_sock, index, self._worker_threads, os.getpid()),
                name=f"fogverse-worker-{index}",
                daemon=True,
            )
            process.start()
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        w = WorkerConnection(index, process, parent_sock, self._max_running, loop)
        self._workers[index] = w
        self._all_pids.append(w.pid)
        hello = wire.HELLO.pack(wire.HELLO.size - 4, wire.MSG_HELLO, self._blob_size)
        with contextlib.suppress(OSError):  # it already died; its sentinel says so
            w.send_with_fd(hello, self._blob.fd)
        w.start_reading(self._on_readable)
        loop.add_reader(process.sentinel, self._on_exit, w)
        return w

    def _least_loaded(self) -> WorkerConnection | None:
        best: WorkerConnection | None = None
        load = self._depth
        for w in self._ready:
            n = len(w.outstanding)
            if n < load:
                best, load = w, n
        return best

    def _dispatch(self, task: TaskHandle) -> None:
        w = self._least_loaded()
        if w is None:
            self._pending.append(task)
        else:
            self._send_task(w, task)

    def _send_task(self, w: WorkerConnection, task: TaskHandle) -> None:
        slot = task._slot
        w.outstanding.append(task)
        inline = task._inline
        short = self._short
        if short and task._alone:
            short = 0
        task._short = short
        if inline is not None or w.known[slot.index] == slot.generation:
            # Buffered: the syscall (and the worker's wake-up) is paid once per loop iteration
            # and worker rather than once per task, which is most of a small task's cost.
            if not w.wbuf:
                self._unsent.append(w)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    assert self._loop is not None
                    self._loop.call_soon(self._flush)
            body, flags = (
                (_TASK_BODY, short)
                if inline is None
                else (_TASK_BODY + len(inline), short | wire.TASK_INLINE)
            )
            w.wbuf += _TASK_PACK(body, wire.MSG_TASK, task._id, slot.index, slot.generation, flags)
            if inline is not None:
                w.wbuf += inline
            return
        flags = wire.TASK_FD | short
        frame = _TASK_PACK(_TASK_BODY, wire.MSG_TASK, task._id, slot.index, slot.generation, flags)
        try:
            w.send_with_fd(frame, slot.region.fd)
            w.known[slot.index] = slot.generation
        except OSError:
            # The worker is dying; its sentinel will requeue what it held.
            self._mark_unusable(w)

    def _flush(self) -> None:
        """Send every worker's buffered TASK frames, one send each."""
        self._flush_scheduled = False
        unsent, self._unsent = self._unsent, []
        for w in unsent:
            if not w.wbuf:
                continue
            self._stats["task_sends"] += 1
            # Inline, not a WorkerConnection method: this runs after most reads.
            try:
                w.sock.sendall(w.wbuf)
            except OSError:
                self._mark_unusable(w)  # dying; its sentinel requeues what it held
            w.wbuf.clear()

    def _mark_unusable(self, w: WorkerConnection) -> None:
        if w.live:
            w.live = False
            if w in self._ready:
                self._ready.remove(w)

    def _on_readable(self, w: WorkerConnection) -> bool:
        """Act on what the worker sent; False when nothing more is to be had now."""
        if w.receive(self._on_frame):
            if self._unsent:
                self._flush()  # the tasks these replies made room for, in one send per worker
            return True
        if w.eof:
            self._on_eof(w)
        return False

    def _on_frame(self, w: WorkerConnection, frame: memoryview) -> None:
        kind = frame[4]
        if kind in _TASK_REPLIES and not w.outstanding:
            return  # a reply to a task that close() already failed
        if kind == wire.MSG_VALUE:
            task = self._pop_outstanding(w, wire.VALUE.unpack_from(frame)[2])
            try:
                value = pickle.loads(frame[wire.VALUE.size :])
            except Exception as exc:
                self._fail(task, _parent_side_failure(exc))
            else:
                self._succeed(task, value)
        elif kind == wire.MSG_RESULT:
            _, _, task_id, out_at = wire.RESULT.unpack(frame)
            task = self._pop_outstanding(w, task_id)
            try:
                value = shm.read(task._slot.region.view, out_at)
            except Exception as exc:
                self._fail(task, _parent_side_failure(exc))
            else:
                task._shared = True
                self._succeed(task, value)
        elif kind == wire.MSG_INBAND:
            _, _, task_id, needed = wire.INBAND.unpack_from(frame)
            task = self._pop_outstanding(w, task_id)
            self._stats["inband_results"] += 1
            if needed > self._out_hint:
                self._out_hint = shm.align(needed)
            try:
                value = shm.read(memoryview(bytearray(frame[wire.INBAND.size :])), 0)
            except Exception as exc:
                self._fail(task, _parent_side_failure(exc))
            else:
                self._succeed(task, value)
        elif kind == wire.MSG_ERROR:
            _, _, task_id = wire.ERROR.unpack_from(frame)
            task = self._pop_outstanding(w, task_id)
            exc_type, message, tb = pickle.loads(frame[wire.ERROR.size :])
            self._stats["failed"] += 1
            self._fail(task, TaskFailed(exc_type, message, tb))
        elif kind == wire.MSG_READY:
            self._on_ready(w)
        elif kind == wire.MSG_SETUP_FAILED:
            w.setup_error = bytes(frame[wire.SETUP_FAILED.size :]).decode(errors="replace")
        else:
            logger.error("worker %d sent an unknown message type %d", w.index, kind)

    def _pop_outstanding(self, w: WorkerConnection, task_id: int) -> TaskHandle:
        task = w.outstanding.popleft()
        if task._id != task_id:
            raise RuntimeError(f"worker {w.index} answered task {task_id}, expected {task._id}")
        now = time.monotonic()
        if w.last_reply:
            # The worker was busy since its last reply: the interval is one task's service.
            interval = now - w.last_reply
            service = self._service
            service = interval if service < 0 else 0.9 * service + 0.1 * interval
            self._service = service
            short = service < _SHORT_TASK
            self._depth = self._deep_depth if short else _PREFETCH
            self._short = wire.TASK_SHORT if short else 0
        w.last_reply = now if w.outstanding else 0.0
        # Refill the worker before anything else so it never waits on the parent.
        if self._pending and w.live and w.ready.done():
            self._send_task(w, self._pending.popleft())
        return task

    def _on_ready(self, w: WorkerConnection) -> None:
        self._startup_failures = 0
        if not w.ready.done():
            w.ready.set_result(None)
        if self._state in (_STARTING, _RUNNING, _CLOSING) and w.live:
            self._ready.append(w)
            while self._pending and len(w.outstanding) < self._depth and w.live:
                self._send_task(w, self._pending.popleft())

    def _on_eof(self, w: WorkerConnection) -> None:
        w.stop_reading()
        self._mark_unusable(w)
        if self._state in (_STARTING, _RUNNING, _CLOSING):
            # A worker closes its socket only by exiting; make sure the sentinel fires.
            w.kill()

    def _on_exit(self, w: WorkerConnection) -> None:
        loop = self._loop
        assert loop is not None
        loop.remove_reader(w.process.sentinel)
        # Replies it sent before dying are still in the socket: take them before retrying.
        while w.reading and self._on_readable(w):
            pass
        w.stop_reading()
        self._mark_unusable(w)
        exitcode = w.close()
        if self._workers.get(w.index) is w:
            del self._workers[w.index]
        if not w.exited.done():
            w.exited.set_result(exitcode)
        if self._state not in (_STARTING, _RUNNING, _CLOSING):
            if not w.ready.done():  # stopped by close() before it was ready: start() waits
                w.ready.set_exception(PoolClosed("the pool was closed while it started"))
                w.ready.exception()
            return
        if not w.ready.done():
            self._startup_failures += 1
            message = (
                f"worker {w.index} (pid {w.pid}) exited with code {exitcode} before it was ready "
                "(its stderr says why; workers import the main module, so a script that starts "
                "a pool must guard its entry point with `if __name__ == '__main__':`)"
            )
            if w.setup_error:
                message = f"setup() failed in worker {w.index} (pid {w.pid})"
            error = WorkerSetupError(message, w.setup_error)
            w.ready.set_exception(error)
            w.ready.exception()  # retrieved here; start() re-raises it through gather()
            if self._state != _STARTING:
                logger.error("%s", error)
        else:
            logger.warning("worker %d (pid %d) died with exit code %s", w.index, w.pid, exitcode)
        self._requeue(w, exitcode)
        if self._state == _STARTING:
            return
        if self._startup_failures >= _STARTUP_FAILURE_LIMIT:
            self._break(
                WorkerSetupError(
                    f"workers failed to start {self._startup_failures} times in a row; "
                    "the pool stopped",
                    w.setup_error,
                )
            )
            return
        self._stats["restarts"] += 1
        delay = _RESTART_BACKOFF * (2**self._startup_failures - 1)
        if delay:
            loop.call_later(delay, self._restart, w.index)
        else:
            self._restart(w.index)

    def _restart(self, index: int, attempt: int = 0) -> None:
        if self._state not in (_RUNNING, _CLOSING) or index in self._workers:
            return
        try:
            self._spawn(index)
        except (ConnectionError, FileNotFoundError) as exc:
            # The fork server itself died (killed, OOM). multiprocessing starts a new one once
            # it has reaped the old; until then its socket refuses us, so try again shortly.
            if attempt >= _FORKSERVER_RETRIES:
                logger.exception("could not restart worker %d", index)
                self._break(WorkerSetupError(f"could not restart worker {index}: {exc!r}"))
                return
            logger.warning("fork server unreachable (%s); retrying worker %d", exc, index)
            assert self._loop is not None
            self._loop.call_later(
                _RESTART_BACKOFF * (attempt + 1), self._restart, index, attempt + 1
            )
        except Exception as exc:
            logger.exception("could not restart worker %d", index)
            self._break(WorkerSetupError(f"could not restart worker {index}: {exc!r}"))

    def _requeue(self, w: WorkerConnection, exitcode: int | None) -> None:
        tasks = list(w.outstanding)
        w.outstanding.clear()
        if not tasks:
            return
        # A worker runs its tasks in order: only the first was running when it died; the others
        # were waiting on its socket and are retried without being charged an attempt.
        head = tasks[0]
        if head._short:
            # Unless the first was a short task: the worker may have run it and the ones after
            # it, holding their replies back, and died in any of them. Nobody is charged; they
            # are retried as tasks that are not short, whose replies leave before the next one
            # runs, so that a crash among them is charged to the task that was running.
            for task in tasks:
                task._alone = True
        else:
            head._attempts += 1
            if head._attempts > self._max_retries:
                tasks = tasks[1:]
                self._stats["crashed"] += 1
                self._fail(head, WorkerCrashed(exitcode, head._attempts))
        self._stats["retried"] += len(tasks)
        self._pending.extendleft(reversed(tasks))
        while self._pending:
            best = self._least_loaded()
            if best is None:
                break
            self._send_task(best, self._pending.popleft())

    def _break(self, error: BaseException) -> None:
        """Too many consecutive worker start failures: fail everything, refuse new work."""
        logger.error("worker pool broken: %s", error)
        self._state = _BROKEN
        self._slots.renew_abandoned = False
        self._broken_error = error
        self._fail_everything(error)
        loop = self._loop
        assert loop is not None
        if self._shutdown_task is None:
            self._shutdown_task = loop.create_task(self._shutdown(drain=False, timeout=_KILL_GRACE))

    # ------------------------------------------------------------------ completion

    def _succeed(self, task: TaskHandle, value: Any) -> None:
        self._completed += 1
        released_early = task._released
        self._task_done(task)
        task._finish(value, None)
        if released_early:
            self._slots.free(task._slot)

    def _fail(self, task: TaskHandle, error: BaseException) -> None:
        # A failed task has no result in its slot: it goes back at once.
        task._released = True
        self._task_done(task)
        self._slots.free(task._slot)
        task._finish(None, error)

    def _task_done(self, task: TaskHandle) -> None:
        if task._inline is not None:
            self._inline_bytes -= len(task._inline)
            task._inline = None
        self._active -= 1
        if self._active == 0:
            assert self._idle is not None
            self._idle.set()

    def _fail_everything(self, error: BaseException) -> None:
        self._slots.fail_waiters(error)
        tasks = list(self._pending)
        self._pending.clear()
        for w in self._workers.values():
            tasks += w.outstanding
            w.outstanding.clear()
        for task in tasks:
            self._fail(task, error)

    # ------------------------------------------------------------------ shutdown

    def _begin_shutdown(self, *, drain: bool, timeout: float) -> asyncio.Task[None]:
        if self._shutdown_task is None:
            loop = self._loop
            assert loop is not None
            self._shutdown_task = loop.create_task(self._shutdown(drain=drain, timeout=timeout))
        return self._shutdown_task

    async def _shutdown(self, *, drain: bool, timeout: float) -> None:
        loop = self._loop
        assert loop is not None and self._idle is not None
        deadline = loop.time() + timeout
        if self._state in (_RUNNING, _STARTING):
            self._state = _CLOSING
        closed = PoolClosed("the pool was closed")
        self._slots.fail_waiters(closed)
        if drain and self._active:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.warning(
                    "close(): %d tasks still running after %.1f s", self._active, timeout
                )
        self._fail_everything(closed)
        if self._state != _BROKEN:
            self._state = _STOPPING
        self._slots.renew_abandoned = False
        workers = list(self._workers.values())
        stop = wire.STOP.pack(wire.STOP.size - 4, wire.MSG_STOP)
        for w in workers:
            w.wbuf.clear()  # tasks not yet sent were failed above
            with contextlib.suppress(OSError):
                w.sock.sendall(stop)
        exits = [w.exited for w in workers]
        if exits:
            await asyncio.wait(exits, timeout=max(0.0, deadline - loop.time()))
        stragglers = [w for w in workers if not w.exited.done()]
        for w in stragglers:
            logger.warning("worker %d (pid %d) did not stop in time; killing it", w.index, w.pid)
            w.kill()
        if stragglers:
            await asyncio.wait([w.exited for w in stragglers], timeout=_KILL_GRACE)
        for w in list(self._workers.values()):
            # Only reached if a killed worker never reported its exit.
            self._on_exit(w)
        self._release_memory()
        if self._state != _BROKEN:
            self._state = _CLOSED
        self._finalizer.detach()

    def _release_memory(self) -> None:
        self._slots.close()
        if self._blob is not None:
            self._blob.close()
            self._blob = None


def _parent_side_failure(exc: Exception) -> TaskFailed:
    import traceback

    return TaskFailed(
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        f"the result could not be read in the parent: {exc}",
        "".join(traceback.format_exception(exc)),
    )
