"""A task submitted to the pool: the handle that holds its shared-memory slot until released."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from typing import Any, Protocol

from fogverse.parallel.slots import Slot

__all__ = ["SlotOwner", "TaskHandle"]


class SlotOwner(Protocol):
    """What a handle needs of its pool's slots: the loop it runs on and where its slot goes
    back (a :class:`~fogverse.parallel.slots.SlotAllocator`)."""

    loop: asyncio.AbstractEventLoop | None

    def free(self, slot: Slot) -> None: ...

    def abandon(self, slot: Slot, shared: bool) -> None: ...


class TaskHandle:
    """One submitted task. Await it for the result; call :meth:`release` when done with it.

    A result may be a zero-copy view into the task's slot, valid until :meth:`release`. Copy
    what you keep longer (``np.array(x)``), or keep the handle: a handle dropped without
    :meth:`release` gives its slot a fresh memory region, so views of the old one stay intact.
    """

    __slots__ = (
        "__weakref__",
        "_alone",
        "_attempts",
        "_callbacks",
        "_error",
        "_finished",
        "_id",
        "_inline",
        "_owner",
        "_released",
        "_shared",
        "_short",
        "_slot",
        "_value",
        "_waiter",
    )

    def __init__(self, owner: SlotOwner, task_id: int, slot: Slot, inline: bytes | None) -> None:
        self._owner = owner
        self._id = task_id
        self._slot = slot
        # A small input travels pickled in the TASK frame, not in the slot; kept for a retry.
        self._inline = inline
        # Whether the result lives in the slot (zero-copy views) or is a value of its own.
        self._shared = False
        self._attempts = 0
        # The TASK_SHORT flag it was last sent with (its reply may have been held back), and
        # whether it must be sent without it (it was on a worker that died unexplained).
        self._short = 0
        self._alone = False
        self._released = False
        self._finished = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[TaskHandle], object]] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self._finished

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._finished:
            waiter = self._waiter
            if waiter is None:
                loop = self._owner.loop
                assert loop is not None
                waiter = self._waiter = loop.create_future()
            # Cancelling the awaiting task cancels this wait only, never the task itself: the
            # shared future, cancelled, would fail every other wait for this task and every
            # later one.
            yield from asyncio.shield(waiter).__await__()
        return self.result()

    def result(self) -> Any:
        """The result of a finished task; raises its exception if it failed."""
        if not self._finished:
            raise asyncio.InvalidStateError("the task is not finished")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        """The exception of a finished task, or None."""
        if not self._finished:
            raise asyncio.InvalidStateError("the task is not finished")
        return self._error

    def add_done_callback(self, fn: Callable[[TaskHandle], object]) -> None:
        """Call ``fn(handle)`` once the task has finished.

        The call happens on the event loop, straight from the pool's reader (no task or loop
        iteration per result), so ``fn`` must be quick and must not block; exceptions it raises
        are logged through the loop's exception handler.
        """
        if self._finished:
            loop = self._owner.loop
            assert loop is not None
            loop.call_soon(fn, self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def release(self) -> None:
        """Give the task's slot back to the pool. Idempotent."""
        if self._released:
            return
        self._released = True
        if self._finished:
            self._owner.free(self._slot)
        # Otherwise the slot is freed when the worker is done with it.

    def _finish(self, value: Any, error: BaseException | None) -> None:
        self._finished = True
        self._value = value
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        callbacks = self._callbacks
        if callbacks is not None:
            self._callbacks = None
            for fn in callbacks:
                try:
                    fn(self)
                except Exception as exc:
                    loop = self._owner.loop
                    assert loop is not None
                    loop.call_exception_handler(
                        {"message": "TaskHandle done callback raised", "exception": exc}
                    )

    def __del__(self) -> None:
        if self._released or not self._finished:
            return
        self._released = True
        with contextlib.suppress(Exception):
            self._owner.abandon(self._slot, self._shared)

    def __repr__(self) -> str:
        state = "done" if self._finished else "running"
        return f"<TaskHandle {self._id} slot={self._slot.index} {state}>"
