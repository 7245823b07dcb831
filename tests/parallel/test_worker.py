"""The worker's side of the wire protocol (fogverse/parallel/worker.py), driven in-process.

A SOCK_SEQPACKET pair keeps each of the worker's writes a record of its own, so the tests see
how replies are grouped into writes, which a stream socket would blur.
"""

from __future__ import annotations

import pickle
import socket
import struct
import sys
import threading
from typing import Any

import pytest
from polling import wait_until

from fogverse.parallel import wire, worker

TIMEOUT = 10.0


class Identity:
    def process(self, data: Any) -> Any:
        return data


def task_frame(task_id: int, value: Any, flags: int) -> bytes:
    payload = pickle.dumps(value, protocol=5)
    head = wire.TASK.pack(
        wire.TASK.size - 4 + len(payload), wire.MSG_TASK, task_id, 0, 0, flags | wire.TASK_INLINE
    )
    return head + payload


def replies_per_write(frames: bytes) -> list[list[tuple[int, Any]]]:
    """Run the worker's task loop over ``frames`` (sent in one write, then STOP); return the
    (task id, value) replies of each of its writes."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.settimeout(TIMEOUT)
    serving = threading.Thread(
        target=worker._serve, args=(child, worker._Inbox(child), Identity()), daemon=True
    )
    serving.start()
    try:
        parent.sendall(frames)
        parent.sendall(wire.STOP.pack(wire.STOP.size - 4, wire.MSG_STOP))
        serving.join(TIMEOUT)
        assert not serving.is_alive(), "the worker loop did not stop"
        parent.setblocking(False)
        writes = []
        while True:
            try:
                record = parent.recv(1 << 16)
            except BlockingIOError:
                break
            replies, pos = [], 0
            while pos < len(record):
                (size,) = struct.unpack_from("<I", record, pos)
                body = record[pos : pos + 4 + size]
                assert body[4] == wire.MSG_VALUE
                task_id = wire.VALUE.unpack_from(body)[2]
                replies.append((task_id, pickle.loads(body[wire.VALUE.size :])))
                pos += 4 + size
            writes.append(replies)
        return writes
    finally:
        parent.close()
        child.close()


def test_short_tasks_replies_are_held_but_never_past_half_of_what_is_queued():
    frames = b"".join(task_frame(i, i * 10, wire.TASK_SHORT) for i in range(8))
    writes = replies_per_write(frames)
    assert [len(w) for w in writes] == [4, 2, 2]  # not one write of 8: the parent refills
    assert [r for w in writes for r in w] == [(i, i * 10) for i in range(8)]


@pytest.mark.parametrize("count", [1, 3])
def test_long_tasks_reply_one_write_each(count):
    frames = b"".join(task_frame(i, f"v{i}", 0) for i in range(count))
    writes = replies_per_write(frames)
    assert writes == [[(i, f"v{i}")] for i in range(count)]


def _task_file(tid: int, name: str) -> str:
    with open(f"/proc/self/task/{tid}/{name}") as f:
        return f.read()


def _voluntary_switches(tid: int) -> int:
    for line in _task_file(tid, "status").splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _waiting_for_input(tid: int) -> bool:
    # Asleep in the socket read or in poll(), not (say) waiting for the GIL.
    return any(name in _task_file(tid, "wchan") for name in ("unix_stream", "poll"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_waiting_worker_sleeps_through_the_parent_reading_its_replies():
    # Each read by the parent frees buffer space on the worker's socket, which the kernel
    # announces (EPOLLOUT) to whatever waits on that socket. A worker blocked in recvmsg() is
    # woken by each announcement and goes back to sleep: a wasted wake-up per read, paid by both
    # processes. Waiting in poll() for input only, it sleeps through them.
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent.settimeout(TIMEOUT)
    reads = 200
    try:
        for _ in range(reads):
            child.sendall(b"r" * 64)  # earlier replies, not yet read by the parent
        inbox = worker._Inbox(child)
        tids: list[int] = []
        frames: list[bytes | None] = []

        def wait_for_a_task() -> None:
            tids.append(threading.get_native_id())
            frames.append(inbox.next())

        waiting = threading.Thread(target=wait_for_a_task, daemon=True)
        waiting.start()
        wait_until(lambda: bool(tids) and _waiting_for_input(tids[0]), TIMEOUT, "the wait")
        before = _voluntary_switches(tids[0])
        for _ in range(reads):
            assert len(parent.recv(64)) == 64
        wait_until(lambda: _waiting_for_input(tids[0]), TIMEOUT, "the wait to resume")
        woken = _voluntary_switches(tids[0]) - before
        stop = wire.STOP.pack(wire.STOP.size - 4, wire.MSG_STOP)
        parent.sendall(stop)
        waiting.join(TIMEOUT)
        assert frames == [stop]
        assert woken <= 2, f"woken {woken} times by {reads} reads of its replies"
    finally:
        parent.close()
        child.close()


def test_a_task_that_is_not_short_runs_with_no_reply_held_back():
    # Were the short task's reply still held while the other runs, a crash in that one would
    # lose it, and the parent could not tell which of the two killed the worker.
    frames = task_frame(0, "short", wire.TASK_SHORT) + task_frame(1, "long", 0)
    assert replies_per_write(frames) == [[(0, "short")], [(1, "long")]]
