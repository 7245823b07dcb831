"""Nodes the reliability tests run as real processes (``python -m fogverse run FILE:Name``).

Configured by the seed's environment variables, as a deployment would be. Every message
carries its id in its payload and in an ``id`` header; the nodes keep both on their output.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
import time

import numpy as np

from fogverse import Consumer, ParallelConsumer, Processor
from fogverse.autoscale import enable_heartbeats
from fogverse.plugins import Plugin

# A node that stalls can be asked where every thread is: SIGUSR1 writes their stacks to its
# log (its stderr), which a failing test reports. Written by the C handler, so it arrives
# even when the event loop is stuck.
faulthandler.register(signal.SIGUSR1, all_threads=True)


class TaskDump(Plugin):
    """On SIGUSR1, also what the event loop is waiting for: every asyncio task's stack (a
    thread's stack shows only the loop's select()) and the window's state. Needs a running
    loop; the threads' stacks above do not."""

    async def on_start(self, node) -> None:
        loop = asyncio.get_running_loop()
        # faulthandler goes back in front of the loop's handler, chained to it; register()
        # alone would not reinstall a handler it believes is still there.
        faulthandler.unregister(signal.SIGUSR1)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks, node)
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)


def _dump_tasks(node) -> None:
    out = sys.stderr
    pool = getattr(node, "pool", None)
    consumer = node.consumer
    print("--- asyncio tasks ---", file=out)
    print(
        f"node: outstanding={getattr(node, '_outstanding', None)} "
        f"queued={getattr(node, '_queued', None)} buffered={len(getattr(node, '_buffer', ()))} "
        f"in_flight={node._tracker.in_flight} stopping={node.stopping}",
        file=out,
    )
    if pool is not None:
        workers = {
            w.index: (w.pid, w.live, len(w.outstanding), len(w.wbuf))
            for w in pool._workers.values()
        }
        print(
            f"pool: active={pool._active} pending={len(pool._pending)} "
            f"unsent={len(pool._unsent)} free_slots={len(pool._slots._free)} "
            f"slot_waiters={len(pool._slots._waiters)} workers(pid, live, outstanding, "
            f"wbuf)={workers}",
            file=out,
        )
    if consumer is not None:
        print(
            f"consumer: jobs={consumer._jobs.qsize()} deferred={len(consumer._deferred)} "
            f"assigned={sorted(consumer._assigned)} rebalances={consumer._rebalances}",
            file=out,
        )
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}:", file=out)
        # Task.print_stack shows a suspended coroutine's outermost frame only: follow what
        # each one awaits, down to the future it waits on.
        awaited = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                print(f"  waiting on {awaited!r}"[:300], file=out)
                break
            code = frame.f_code
            print(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=out)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    print("--- end of asyncio tasks ---", file=out, flush=True)


# Each node of a scenario gets its own dead-letter topic, so that its dead letters can be
# counted apart from another node's reading the same input.
DEAD_LETTER_TOPIC = os.environ.get("DEAD_LETTER_TOPIC") or None


class Echo(Consumer):
    """Passes each input on after ``ECHO_DELAY`` seconds (awaited, so the loop stays live)."""

    delay = float(os.environ.get("ECHO_DELAY", "0.005"))
    dead_letter_topic = DEAD_LETTER_TOPIC

    async def process(self, data):
        if self.delay:
            await asyncio.sleep(self.delay)
        return data


class Sleep(Processor):
    """Passes each input on after ``seconds`` of blocking work in a worker process."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process(self, data):
        if self.seconds:
            time.sleep(self.seconds)
        return data


class ParallelEcho(ParallelConsumer):
    """``Echo`` with the pause in two worker processes."""

    processor = Sleep(float(os.environ.get("ECHO_DELAY", "0.005")))
    dead_letter_topic = DEAD_LETTER_TOPIC
    process_number = 2
    max_running_task = 8

    def __init__(self) -> None:
        super().__init__()
        self.plugins.append(TaskDump())


class HeartbeatEcho(Echo):
    """``Echo`` that reports to the auto-scaling master's control topic (the observer reads
    FOGVERSE_OBSERVER_TOPIC / FOGVERSE_OBSERVER_SERVERS / FOGVERSE_INSTANCE_ID)."""

    def __init__(self) -> None:
        super().__init__()
        self.observer = enable_heartbeats(self, True)


def describe(value) -> dict:
    """What a decoded input turned out to be: its type, and dtype/shape for arrays."""
    out: dict = {"type": type(value).__name__}
    if isinstance(value, np.ndarray):
        out["dtype"] = value.dtype.str
        out["shape"] = list(value.shape)
    elif isinstance(value, bytes | str | list | dict):
        out["len"] = len(value)
    return out


class Describe(Consumer):
    """Decodes each input with the automatic codec and sends what it got as JSON: the
    hostile-input tests see exactly what a node made of every payload."""

    dead_letter_topic = DEAD_LETTER_TOPIC

    def process(self, data):
        return json.dumps(describe(data))
