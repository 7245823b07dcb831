"""Nodes the Kafka tests run as real subprocesses (``python -m fogverse run FILE:Name``).

They are configured through the seed's environment variables, as a deployment would be.
"""

from __future__ import annotations

import asyncio
import os

from fogverse import Consumer, ParallelConsumer, Processor


class SlowEcho(Consumer):
    """Echoes each input after ``ECHO_DELAY`` seconds, so a test can stop it mid-stream."""

    delay = float(os.environ.get("ECHO_DELAY", "0.005"))

    async def process(self, data):
        await asyncio.sleep(self.delay)
        return data


class Double(Processor):
    """Doubles an ndarray frame in a worker process."""

    def process(self, data):
        return data * 2


class ParallelDouble(ParallelConsumer):
    processor = Double()
    process_number = 2
    max_running_task = 8
