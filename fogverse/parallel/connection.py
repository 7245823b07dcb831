"""The parent's end of one worker: its process, its socket, the tasks it holds, and the frames
it sends back, cut out of the byte stream (the frames themselves: :mod:`~fogverse.parallel.wire`).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from fogverse.parallel import wire
from fogverse.parallel.task import TaskHandle

__all__ = ["WorkerConnection"]

_RECV_SIZE = 1 << 16
_LEN_UNPACK = wire.LEN.unpack_from


class WorkerConnection:
    """One worker process and the Unix socket to it. Read on the event loop's thread only."""

    __slots__ = (
        "eof",
        "exited",
        "fd",
        "index",
        "known",
        "last_reply",
        "live",
        "loop",
        "outstanding",
        "pid",
        "process",
        "rbuf",
        "reading",
        "ready",
        "rend",
        "rview",
        "setup_error",
        "sock",
        "wbuf",
    )

    def __init__(
        self,
        index: int,
        process: Any,
        sock: socket.socket,
        slots: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.index = index
        self.process = process
        self.pid: int = process.pid
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.live = True
        self.reading = False
        self.eof = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        # Tasks sent and not answered, in the order the worker runs them.
        self.outstanding: collections.deque[TaskHandle] = collections.deque()
        # Per slot, the generation whose region's descriptor the worker already holds.
        self.known = [-1] * slots
        self.setup_error = ""
        self.rbuf = bytearray(_RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.rend = 0
        self.last_reply = 0.0
        # TASK frames not yet sent: a loop iteration's frames for one worker go in one send.
        # The pool appends to it directly; that append is on every small task's path.
        self.wbuf = bytearray()

    def start_reading(self, on_readable: Callable[[WorkerConnection], object]) -> None:
        self.reading = True
        self.loop.add_reader(self.fd, on_readable, self)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def receive(self, on_frame: Callable[[WorkerConnection, memoryview], object]) -> bool:
        """Read what the worker sent and call ``on_frame(self, frame)`` for each complete frame
        (a view valid during the call only). False when nothing more is to be had now: nothing
        was waiting, or the worker closed its end (then ``eof`` is set)."""
        try:
            n = self.sock.recv_into(self.rview[self.rend :], 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            n = 0
        if n == 0:
            self.eof = True
            return False
        end = self.rend + n
        buf = self.rbuf
        view = self.rview
        pos = 0
        failed: BaseException | None = None
        while end - pos >= 4:
            (size,) = _LEN_UNPACK(buf, pos)
            stop = pos + 4 + size
            if stop > end:
                if 4 + size > len(buf):
                    self._grow(pos, end, 4 + size)
                    pos = -1  # _grow kept the partial frame
                break
            frame = view[pos:stop]
            pos = stop
            try:
                on_frame(self, frame)
            except BaseException as exc:
                # The frames after it are read already and no event will come for them: they
                # are handled now, or their tasks would never finish, and the error after.
                if failed is None:
                    failed = exc
        if pos >= 0:
            self._keep(pos, end)
        if failed is not None:
            raise failed
        return True

    def _keep(self, pos: int, end: int) -> None:
        """Keep the unread bytes ``[pos:end]`` at the buffer's start."""
        view = self.rview
        if pos == end:
            self.rend = 0
            if len(self.rbuf) > _RECV_SIZE:
                # One large frame should not pin a large buffer for the worker's lifetime.
                self.rbuf = bytearray(_RECV_SIZE)
                self.rview = memoryview(self.rbuf)
        else:
            view[: end - pos] = view[pos:end]
            self.rend = end - pos

    def _grow(self, pos: int, end: int, size: int) -> None:
        rbuf = bytearray(max(size, 2 * len(self.rbuf)))
        rbuf[: end - pos] = self.rview[pos:end]
        self.rbuf = rbuf
        self.rview = memoryview(rbuf)
        self.rend = end - pos

    def send_with_fd(self, frame: bytes, fd: int) -> None:
        """Send ``frame`` with descriptor ``fd`` (``SCM_RIGHTS``), after the frames buffered
        so far, since the worker reads in order. Raises :class:`OSError` if it is gone."""
        if self.wbuf:
            frame = bytes(self.wbuf) + frame
            self.wbuf.clear()
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())
        sent = self.sock.sendmsg([frame], [rights])
        if sent < len(frame):
            # A signal can cut a blocking send short; the descriptor went with the first byte.
            self.sock.sendall(memoryview(frame)[sent:])

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def close(self) -> int | None:
        """Reap the exited process and close the socket; returns the exit code."""
        self.process.join(0)
        exitcode: int | None = self.process.exitcode
        self.sock.close()
        with contextlib.suppress(ValueError):
            self.process.close()
        return exitcode
