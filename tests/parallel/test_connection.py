"""The parent's end of a worker's socket: frames arrive whole and in order, however the bytes
are split, and a frame whose handler raises costs the stream nothing."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from fogverse.parallel.connection import WorkerConnection


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


class Boom(BaseException):
    """Not an ``Exception``: what a task's done callback can still let escape."""


@pytest.fixture
def conn() -> Iterator[tuple[WorkerConnection, socket.socket]]:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    try:
        yield WorkerConnection(0, SimpleNamespace(pid=0), ours, 1, loop), theirs
    finally:
        ours.close()
        theirs.close()
        loop.close()


def _receive_all(c: WorkerConnection, on_frame) -> None:  # type: ignore[no-untyped-def]
    while c.receive(on_frame):
        pass


@pytest.mark.timeout(30)
def test_frames_split_anywhere_arrive_whole_and_in_order(conn):
    c, worker = conn
    payloads = [bytes([i]) * (i * 997 % 70_000) for i in range(1, 40)]
    stream = b"".join(_frame(p) for p in payloads)
    got: list[bytes] = []
    for at in range(0, len(stream), 4093):  # cuts through length prefixes and payloads
        worker.sendall(stream[at : at + 4093])
        _receive_all(c, lambda _c, f: got.append(bytes(f[4:])))
    assert got == payloads


@pytest.mark.timeout(30)
def test_a_frame_whose_handler_raises_costs_the_stream_nothing(conn):
    c, worker = conn
    # Three replies in one read, as a worker that answered while the loop was busy sends.
    worker.sendall(_frame(b"first") + _frame(b"second") + _frame(b"third"))
    got: list[bytes] = []

    def on_frame(_c: WorkerConnection, frame: memoryview) -> None:
        got.append(bytes(frame[4:]))
        if bytes(frame[4:]) == b"first":
            raise Boom("a done callback let this escape")

    with pytest.raises(Boom):
        c.receive(on_frame)
    # No event will come again for bytes already read: the frames after it were handled in
    # the same call, before the error was raised.
    assert got == [b"first", b"second", b"third"]
    # ...and the framing holds for what comes next, split mid-prefix.
    nxt = _frame(b"fourth") + _frame(b"fifth")
    worker.sendall(nxt[:2])
    _receive_all(c, on_frame)
    worker.sendall(nxt[2:])
    _receive_all(c, on_frame)
    assert got[3:] == [b"fourth", b"fifth"]
