"""What the live-view tests share: an event loop in a thread (the pipeline and the view run
there while the test drives Chromium synchronously), synthetic camera frames, a real
detection stage, and Debian's Chromium under Playwright."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

import cv2
import numpy as np

from fogverse import Consumer

__all__ = [
    "CHROMIUM",
    "LoopThread",
    "SquareDetector",
    "canvas_pixels",
    "chromium_path",
    "make_frame",
    "send_bad_header_key",
    "send_frames",
]

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT, SIDE = 320, 240, 48


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class LoopThread:
    """An asyncio loop in a daemon thread; :meth:`call` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(cancel_rest(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# Kafka header keys are strings on the wire, but a producer can write bytes that are not
# UTF-8 (aiokafka's consumer then fails the whole fetch). aiokafka's pure-Python record
# builder writes what a str subclass's encode() returns.
_BAD_HEADER_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class RawKey(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfecam"

async def main(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", key=b"bad", headers=[(RawKey("cam"), b"1")])
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:3]))
"""


def send_bad_header_key(bootstrap: str, topic: str) -> None:
    """One record whose header key is not UTF-8."""
    subprocess.run(
        [sys.executable, "-c", _BAD_HEADER_PRODUCER, bootstrap, topic],
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        check=True,
        timeout=60,
    )


def square_at(index: int) -> tuple[int, int]:
    """Top-left corner of the white square in frame ``index``: it moves 9 px a frame."""
    span = WIDTH - SIDE
    x = (index * 9) % (2 * span)
    return (x if x < span else 2 * span - x), 40 + (index * 5) % (HEIGHT - SIDE - 40)


def make_frame(index: int) -> bytes:
    """A JPEG camera frame: a dark gradient with a white square that moves every frame."""
    ramp = np.linspace(20, 90, WIDTH, dtype=np.uint8)
    image = np.dstack([np.tile(ramp, (HEIGHT, 1))] * 3).copy()
    image[:, :, 0] = 70  # a blue-ish tint, so that the green boxes stand out
    x, y = square_at(index)
    image[y : y + SIDE, x : x + SIDE] = 255
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


async def send_frames(
    producer: Any,
    topic: str,
    start: int,
    count: int,
    rate: float,
    cam: str = "cam0",
    sent_at: list[float] | None = None,
) -> int:
    """Send frames ``start .. start+count-1`` paced at ``rate`` per second, keyed by index
    with the camera's headers; returns how many were acknowledged. ``sent_at`` gets the
    ``time.monotonic()`` of each send (the rate actually achieved, which a loaded machine
    may hold below ``rate`` for a while and then make up in a burst)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    acks = []
    for i in range(start, start + count):
        delay = t0 + (i - start) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = [
            ("cam", cam.encode()),
            ("frame", str(i).encode()),
            ("timestamp", f"{time.time():.6f}".encode()),
        ]
        acks.append(await producer.send(topic, make_frame(i), key=str(i).encode(), headers=headers))
        if sent_at is not None:
            sent_at.append(time.monotonic())
    await asyncio.gather(*acks)
    return len(acks)


class SquareDetector(Consumer):
    """A real stage: decodes each frame, finds the white square and sends its box as the
    detection record (``boxes``, ``scores``, ``class_ids``, ``names``), keyed like its frame.
    Profiled, every message timed: the view shows its time split."""

    profile = True
    profile_sample = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, input_codec="jpeg", **kwargs)
        self.assigned = asyncio.Event()

    async def _on_assign(self, tps: Any) -> None:
        await super()._on_assign(tps)
        self.assigned.set()

    def process(self, frame: np.ndarray) -> bytes:
        mask = (frame.min(axis=2) > 200).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(mask)
        found = {
            "boxes": [[x, y, x + w, y + h]] if w and h else [],
            "scores": [0.9] if w and h else [],
            "class_ids": [0] if w and h else [],
            "names": ["square"] if w and h else [],
        }
        return json.dumps(found).encode()


def canvas_pixels(page: Any, topic: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The frame canvas's pixels (H x W x RGBA) and the meta of the frame drawn on it."""
    encoded, width, height, meta = page.evaluate(
        """(topic) => {
            const c = document.querySelector(`canvas[data-frame-canvas="${topic}"]`);
            const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let s = "";
            for (let i = 0; i < data.length; i += 8192) {
                s += String.fromCharCode.apply(null, data.subarray(i, i + 8192));
            }
            return [btoa(s), c.width, c.height, window.fogverseView.frames[topic].meta];
        }""",
        topic,
    )
    pixels = np.frombuffer(base64.b64decode(encoded), np.uint8).reshape(height, width, 4)
    return pixels, meta
