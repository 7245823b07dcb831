"""Nodes whose ``process`` step runs in a :class:`~fogverse.parallel.WorkerPool`.

The parent keeps Kafka, decoding and encoding; workers only run the Processor. The pool's
``submit`` is the bounded window: while ``max_running_task`` tasks are in flight the node
stops receiving, so memory stays bounded whatever the backlog. Results leave in input order
per partition by default (``ordered=False`` trades that for completion order).

A node that reads batches (a :class:`~fogverse.Consumer` with its own ``receive``) and has no
hooks admits a fetched batch into the window in one plain loop, and a finished result is
encoded and queued on the producer straight from the pool's completion callback: no
coroutine, future or event-loop turn per frame while the window has room and the producer
has space. What cannot finish there (a failure to dead-letter, an async ``encode``, a full
producer, a user's own ``send``) goes to the single emitter task, which also keeps the order:
while it holds anything, later results queue behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, Literal

from fogverse.codec import AutoCodec, Codec
from fogverse.metrics import Profiler
from fogverse.node.delivery import Delivery, current_delivery
from fogverse.node.io import Consumer, Producer
from fogverse.node.loop import Runnable
from fogverse.parallel.errors import TaskFailed, WorkerCrashed
from fogverse.parallel.pool import TaskHandle, WorkerPool
from fogverse.processor import Processor
from fogverse.record import Record, TopicPartition, UnreadableRecord

__all__ = ["ParallelConsumer", "ParallelProducer", "ParallelRunnable"]

logger = logging.getLogger(__name__)


_NO_OUTPUT: Any = object()


class _Task:
    __slots__ = ("delivery", "failed", "handle", "out")

    def __init__(self, delivery: Delivery, handle: TaskHandle) -> None:
        self.delivery = delivery
        self.handle = handle
        # Set when the completion callback got part of the way: the encoded output still to
        # be sent (the producer was full), or the stage that raised and its exception.
        self.out: Any = _NO_OUTPUT
        self.failed: tuple[str, Exception] | None = None


class ParallelRunnable(Runnable):
    """A :class:`~fogverse.Runnable` whose ``process`` is a :class:`Processor` in a pool."""

    ordered: bool = True
    """Per-partition input order on output (default) or completion order (``False``)."""
    start_method: Literal["forkserver", "spawn"] = "forkserver"
    max_retries: int = 2
    """How often a task whose worker died is retried before it is dead-lettered."""

    pool: WorkerPool | None = None
    input_codec: Codec = AutoCodec(images=False)
    """Images stay encoded in the parent: decoding them is work for the processor
    (e.g. ``processors.YoloPreprocess(decode=True)``), in the workers."""

    async def run(
        self,
        process_number: int | None = None,
        max_running_task: int | None = None,
        processor: Processor | None = None,
    ) -> None:
        """Run the node with ``process_number`` workers and at most ``max_running_task``
        tasks in flight. ``processor`` defaults to the ``processor`` attribute."""
        processor = processor or getattr(self, "processor", None)
        if processor is None:
            raise ValueError("ParallelRunnable.run needs a Processor")
        if not isinstance(processor, Processor):
            raise TypeError(f"processor must be a fogverse.Processor, not {type(processor)!r}")
        process_number = process_number or getattr(self, "process_number", None) or 1
        max_running_task = (
            max_running_task or getattr(self, "max_running_task", None) or (2 * process_number)
        )
        if process_number < 1 or max_running_task < 1:
            raise ValueError("process_number and max_running_task must be >= 1")
        self.pool = WorkerPool(
            processor,
            process_number,
            max_running_task,
            start_method=self.start_method,
            max_retries=self.max_retries,
        )
        await self._run(self._parallel_loop)

    async def _start(self) -> None:
        assert self.pool is not None
        # Workers first: an unpicklable processor should fail before we join a group.
        await self.pool.start()
        await super()._start()

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            if self.pool is not None:
                # A worker still busy after that (a task the stop gave up) is killed: a stop
                # waits drain_timeout at most at each step, not the pool's own 30 s.
                await self.pool.close(drain=False, timeout=self.drain_timeout)

    async def _parallel_loop(self) -> None:
        assert self.pool is not None
        self._ready: asyncio.Queue[_Task] = asyncio.Queue()
        self._lanes: dict[TopicPartition | None, deque[_Task]] = {}
        self._outstanding = 0  # admitted and not yet emitted
        self._queued = 0  # handed to the emitter and not yet emitted by it
        self._all_emitted = asyncio.Event()
        self._all_emitted.set()
        self._finish_now = self._completer()
        batches = self._input_batches()
        emitter = asyncio.create_task(self._emit_loop())
        # The emitter ends only when this loop ends it, unless something escapes it (a
        # CancelledError from user code that awaited something cancelled elsewhere). Then
        # admission, which may be waiting for a slot that only the emitter would free, is
        # interrupted, and the emitter's end is this loop's end, as it would be in the serial
        # loop; the inputs left behind are abandoned by the node's end.
        admission = asyncio.current_task()
        assert admission is not None
        ours = interrupted = overdue = False

        def emitter_ended(_: asyncio.Task[None]) -> None:
            nonlocal interrupted
            if not ours:
                interrupted = True
                admission.cancel()

        async def drain_deadline() -> None:
            # A task that never finishes (a worker stuck in native code) would hold both the
            # admission (waiting for a slot) and the drain forever: a stop waits for the
            # window as long as it waits for acknowledgements, then gives up what is left.
            nonlocal overdue
            await self._stop_event.wait()
            await asyncio.sleep(self.drain_timeout)
            if not ours:
                overdue = True
                admission.cancel()

        emitter.add_done_callback(emitter_ended)
        watchdog = asyncio.create_task(drain_deadline())
        drained: asyncio.Task[Any] | None = None
        try:
            if batches is not None and not self._hooks:
                await self._admit_batches(*batches, emitter)
            else:
                await self._admit_each(emitter)
            # Drain: everything admitted is emitted before we return.
            drained = asyncio.create_task(self._all_emitted.wait())
            await asyncio.wait([drained, emitter], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not (interrupted or overdue) or admission.cancelling() > 1:
                raise  # the node itself is cancelled
            admission.uncancel()
        finally:
            ours = True
            emitter.cancel()
            watchdog.cancel()
            if drained is not None:
                drained.cancel()
        if overdue and not emitter.done():
            logger.warning(
                "%d admitted inputs still unfinished %.0f s after the stop; they stay uncommitted",
                self._outstanding,
                self.drain_timeout,
            )
            self._abandon_open_inputs()
            return
        if emitter.done():  # it ended before this loop ended it
            if emitter.cancelled():
                raise asyncio.CancelledError(
                    "a CancelledError that was not the node's escaped its send, encode or a hook"
                )
            raise emitter.exception()  # type: ignore[misc]

    # ---- admission ----------------------------------------------------------------------

    async def _admit_batches(
        self,
        buffer: deque[Record],
        refill: Callable[[], Awaitable[None]],
        emitter: asyncio.Task[None],
    ) -> None:
        """Admit fetched records into the window in one plain loop: decode each and hand it
        to the pool, suspending only to refill the buffer, for a coroutine ``decode``, or
        while the window is full."""
        pool = self.pool
        assert pool is not None
        try_submit, submit = pool.try_submit, pool.submit
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        yield_every = self._yield_every
        dead_letter, open_input = self._dead_letter, self._opener()
        decode, async_decode = self._input_decoder(), self._async_decode
        profiler = self.profiler
        while not self._stopping and not emitter.done():
            if not buffer:
                await refill()
                last_yield = loop.time()
                continue
            start = profiler.pick() if profiler is not None else 0
            record = buffer.popleft()
            self.message = record
            delivery = open_input(record, start)
            stamps = delivery.stamps
            try:
                if type(record) is UnreadableRecord:
                    raise record.error()
                data = decode(record)
                if async_decode or type(data) is CoroutineType:
                    data = await data
            except Exception as exc:
                await dead_letter(delivery, "decode", exc)
                delivery.seal()
                continue
            if stamps is not None:
                stamps.decoded = Profiler.now()
            handle = try_submit(data)
            if handle is None:  # the window is full: wait for a slot (the others run)
                handle = await submit(data)
                last_yield = loop.time()
            self._admitted(delivery, handle)
            # Buffered records and free slots never suspend: let the group heartbeat, the
            # committer and the emitter run every few milliseconds.
            if loop.time() - last_yield > yield_every:
                await asyncio.sleep(0)
                last_yield = loop.time()

    async def _admit_each(self, emitter: asyncio.Task[None]) -> None:
        """Admit inputs one at a time from ``receive``, with every hook."""
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        yield_every = self._yield_every
        while not self._stopping and not emitter.done():
            delivery = await self._next()
            if delivery is None:
                continue
            await self._submit(delivery)
            # With free slots and buffered records nothing suspends: let the emitter run.
            if loop.time() - last_yield > yield_every:
                await asyncio.sleep(0)
                last_yield = loop.time()

    async def _submit(self, delivery: Delivery) -> None:
        assert self.pool is not None
        try:
            data = await self._decode_step(delivery)
            await self._hook("_before_process", data)
        except Exception as exc:
            await self._dead_letter(delivery, "decode", exc)
            delivery.seal()
            return
        self._admitted(delivery, await self.pool.submit(data))

    def _admitted(self, delivery: Delivery, handle: TaskHandle) -> None:
        if delivery.stamps is not None:
            delivery.stamps.admitted = Profiler.now()
        task = _Task(delivery, handle)
        self._outstanding += 1
        self._all_emitted.clear()
        if self.ordered:
            tp = delivery.record.tp
            lane = self._lanes.get(tp)
            if lane is None:
                lane = self._lanes[tp] = deque()
            lane.append(task)
            handle.add_done_callback(lambda _h: self._release_lane(lane))
        else:
            handle.add_done_callback(lambda _h: self._finished(task))

    # ---- emission -----------------------------------------------------------------------

    def _release_lane(self, lane: deque[_Task]) -> None:
        # Results leave only from the head of the lane: input order holds.
        while lane and lane[0].handle.done():
            self._finished(lane.popleft())

    def _finished(self, task: _Task) -> None:
        """A task is done and next in its order: emit it now if that can be done without
        waiting, else through the emitter (and so must every later one while it is busy)."""
        finish = self._finish_now
        if finish is None or self._queued or not finish(task):
            self._queued += 1
            self._ready.put_nowait(task)

    def _completer(self) -> Callable[[_Task], bool] | None:
        """What emits a finished task from the pool's completion callback (encode and queue
        its output on the producer); it says whether it did all of it. ``None`` when no task
        can be finished there: hooks, an async ``encode`` or a ``send`` of the user's own."""
        send_now = self._output_sender()
        if send_now is None or self._hooks or self._async_encode:
            return None
        encode, set_current, now = self.encode, current_delivery.set, Profiler.now

        def finish(task: _Task) -> bool:
            handle = task.handle
            if handle.exception() is not None:
                return False  # to be dead-lettered: that awaits the producer
            delivery = task.delivery
            stamps = delivery.stamps
            if stamps is not None:
                stamps.processed = now()
            result = handle.result()
            if result is not None:
                set_current(delivery)
                self.message = delivery.record
                try:
                    out = encode(result)
                    if delivery.profiler is not None:
                        delivery.profiler.count_output(stamps, out)
                    if not send_now(out, delivery):
                        task.out = out  # the producer is full: the emitter awaits send
                        return False
                except Exception as exc:
                    task.failed = ("encode", exc)
                    return False
                if stamps is not None:
                    stamps.sent = now()
            # The output is in the producer's buffer now: the slot can take the next task.
            handle.release()
            delivery.seal()
            self._emitted()
            return True

        return finish

    def _emitted(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._all_emitted.set()

    async def _emit_loop(self) -> None:
        while True:
            task = await self._ready.get()
            try:
                await self._emit(task)
            finally:
                self._queued -= 1
                self._emitted()

    async def _emit(self, task: _Task) -> None:
        delivery = task.delivery
        current_delivery.set(delivery)
        self.message = delivery.record
        stage = "process"
        try:
            try:
                if task.failed is not None:
                    await self._dead_letter(delivery, *task.failed)
                    return
                if task.out is not _NO_OUTPUT:
                    stage = "encode"
                    await self.send(task.out)
                    if delivery.stamps is not None:
                        delivery.stamps.sent = Profiler.now()
                    return
                try:
                    result = await task.handle
                except TaskFailed as exc:
                    await self._dead_letter(delivery, "process", exc, exc.traceback_text)
                    return
                except WorkerCrashed as exc:
                    await self._dead_letter(delivery, "worker", exc)
                    return
                if delivery.stamps is not None:
                    delivery.stamps.processed = Profiler.now()
                await self._hook("_after_process", result)
                stage = "encode"
                await self._encode_and_send(result, delivery)
            except Exception as exc:
                await self._dead_letter(delivery, stage, exc)
        except BaseException:
            # Cut short: its output may not have left. The emitter is a task of its own, so
            # unlike the serial loops it may end without the loop's end abandoning for it.
            delivery.abandon()
            raise
        finally:
            # The result may be a view into the task's shared-memory slot: the encoded copy
            # is in the producer's buffer now, so the slot can take the next task.
            task.handle.release()
            delivery.seal()  # after abandon(), commits nothing


class ParallelProducer(Producer, ParallelRunnable):
    """A :class:`~fogverse.Producer` whose ``process`` runs in a worker pool."""


class ParallelConsumer(Consumer, ParallelRunnable):
    """A :class:`~fogverse.Consumer` whose ``process`` runs in a worker pool."""
