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
import time

import numpy as np

from fogverse import Consumer, ParallelConsumer, Processor
from fogverse.autoscale import enable_heartbeats

# A node that stalls can be asked where every thread is: SIGUSR1 writes their stacks to its
# log (its stderr), which a failing test reports.
faulthandler.register(signal.SIGUSR1, all_threads=True)

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
