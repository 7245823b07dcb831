"""The example pipeline: camera -> frames -> detector (deliberately slow) -> boxes -> sink.

The detector runs as separate processes started by the master's LOCAL provider
(``python -m fogverse run examples/autoscale/pipeline.py:Detector``), configured by the
environment the provider sets (topics, group, instance id, the master's topic).
"""

from __future__ import annotations

import asyncio
import os

from fogverse import Consumer, Producer, Record
from fogverse.autoscale import enable_heartbeats


class Camera(Producer):
    """Emits ``fps`` small "frames" a second for ``seconds`` seconds."""

    def __init__(self, topic: str, servers: str, fps: float, seconds: float) -> None:
        super().__init__(topic, servers)
        self.fps, self.seconds = fps, seconds
        self.sent = 0
        self._t0: float | None = None

    async def receive(self) -> Record:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        due = self._t0 + self.sent / self.fps
        if due - self._t0 >= self.seconds:
            raise StopAsyncIteration
        await asyncio.sleep(max(0.0, due - loop.time()))
        self.sent += 1
        return Record(value=f"frame-{self.sent}".encode(), key=str(self.sent).encode())


class Detector(Consumer):
    """≈ 20 frames/s per instance: 50 ms of "inference" per frame."""

    work_seconds = float(os.environ.get("DETECTOR_SECONDS", "0.05"))

    def __init__(self) -> None:
        super().__init__()
        # Counts each output and reports it (FOGVERSE_OBSERVER_* come from the provider).
        self.observer = enable_heartbeats(self, True)

    async def start_consumer(self) -> None:
        await super().start_consumer()
        self.observer.send_auto_scale_request(
            source_topic=self.consumer_topic[0],
            target_topic=self.producer_topic,
            topic_configs={
                "provider": "LOCAL",
                "service_name": "detector",
                "max_instance": int(os.environ.get("DETECTOR_MAX", "4")),
                "extra_configs": {},
            },
        )

    async def process(self, data: bytes) -> bytes:
        await asyncio.sleep(self.work_seconds)
        return data + b":boxes"


class Sink(Consumer):
    """Counts what comes out of the detector."""

    def __init__(self, topic: str, servers: str, group: str) -> None:
        super().__init__(topic, servers, group)
        self.received: set[bytes] = set()

    def process(self, data: bytes) -> None:
        self.received.add(data)
        return None
