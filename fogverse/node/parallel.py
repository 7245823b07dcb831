"""Nodes whose ``process`` step runs in a :class:`~fogverse.parallel.WorkerPool`.

The parent keeps Kafka, decoding and encoding; workers only run the Processor. The pool's
``submit`` is the bounded window: while ``max_running_task`` tasks are in flight the node
stops receiving, so memory stays bounded whatever the backlog. Results leave through a
single emitter, in input order per partition by default (``ordered=False`` trades that for
completion order).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Literal

from fogverse.codec import AutoCodec, Codec
from fogverse.metrics import Profiler
from fogverse.node.delivery import Delivery, current_delivery
from fogverse.node.io import Consumer, Producer
from fogverse.node.loop import Runnable
from fogverse.parallel.errors import TaskFailed, WorkerCrashed
from fogverse.parallel.pool import TaskHandle, WorkerPool
from fogverse.processor import Processor
from fogverse.record import TopicPartition

__all__ = ["ParallelConsumer", "ParallelProducer", "ParallelRunnable"]

logger = logging.getLogger(__name__)


class _Task:
    __slots__ = ("delivery", "handle")

    def __init__(self, delivery: Delivery, handle: TaskHandle) -> None:
        self.delivery = delivery
        self.handle = handle


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
                await self.pool.close(drain=False)

    async def _parallel_loop(self) -> None:
        assert self.pool is not None
        self._ready: asyncio.Queue[_Task] = asyncio.Queue()
        self._lanes: dict[TopicPartition | None, deque[_Task]] = {}
        self._outstanding = 0
        self._all_emitted = asyncio.Event()
        self._all_emitted.set()
        emitter = asyncio.create_task(self._emit_loop())
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        try:
            while not self._stopping and not emitter.done():
                delivery = await self._next()
                if delivery is None:
                    continue
                await self._submit(delivery)
                # With free slots and buffered records nothing suspends: let the emitter run.
                if loop.time() - last_yield > 0.005:
                    await asyncio.sleep(0)
                    last_yield = loop.time()
            # Drain: everything admitted leaves through the emitter before we return.
            waiter = asyncio.create_task(self._all_emitted.wait())
            await asyncio.wait([waiter, emitter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            emitter.cancel()
        if emitter.done() and not emitter.cancelled() and emitter.exception() is not None:
            raise emitter.exception()  # type: ignore[misc]

    async def _submit(self, delivery: Delivery) -> None:
        assert self.pool is not None
        try:
            data = await self._decode_step(delivery)
            await self._hook("_before_process", data)
        except Exception as exc:
            await self._dead_letter(delivery, "decode", exc)
            delivery.seal()
            return
        handle = await self.pool.submit(data)
        if delivery.stamps is not None:
            delivery.stamps.admitted = Profiler.now()
        task = _Task(delivery, handle)
        self._outstanding += 1
        self._all_emitted.clear()
        if self.ordered:
            lane = self._lanes.setdefault(delivery.record.tp, deque())
            lane.append(task)
            handle.add_done_callback(lambda _h: self._release_lane(lane))
        else:
            handle.add_done_callback(lambda _h: self._ready.put_nowait(task))

    def _release_lane(self, lane: deque[_Task]) -> None:
        # Hand results to the emitter only from the head of the lane: input order holds.
        while lane and lane[0].handle.done():
            self._ready.put_nowait(lane.popleft())

    async def _emit_loop(self) -> None:
        while True:
            task = await self._ready.get()
            try:
                await self._emit(task)
            finally:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._all_emitted.set()

    async def _emit(self, task: _Task) -> None:
        delivery = task.delivery
        current_delivery.set(delivery)
        self.message = delivery.record
        stage = "process"
        try:
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
        finally:
            # The result may be a view into the task's shared-memory slot: the encoded copy
            # is in the producer's buffer now, so the slot can take the next task.
            task.handle.release()
            delivery.seal()


class ParallelProducer(Producer, ParallelRunnable):
    """A :class:`~fogverse.Producer` whose ``process`` runs in a worker pool."""


class ParallelConsumer(Consumer, ParallelRunnable):
    """A :class:`~fogverse.Consumer` whose ``process`` runs in a worker pool."""
