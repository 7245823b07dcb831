"""The fused detector in a ParallelConsumer on the real broker: JPEG frames in, one JSON
detection record out per frame, with that frame's key and headers, nothing lost."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid

import cv2
import numpy as np
from backends import produce_kafka, read_kafka
from onnx_models import square_finder
from polling import until

from fogverse import ParallelConsumer
from processors import YoloDetect, encode_jpeg

WIDTH, HEIGHT = 960, 540  # 16:9: the letterbox pads top and bottom


def _square(i: int) -> tuple[int, int, int, int]:
    """Where frame ``i``'s red square is: each frame has its own, so mixed-up results show."""
    x1, y1 = 40 + 23 * i, 30 + 11 * i
    return x1, y1, x1 + 60 + 2 * i, y1 + 50 + i


def _frames(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    items = []
    for i in range(n):
        frame = np.full((HEIGHT, WIDTH, 3), 35, np.uint8)
        x1, y1, x2, y2 = _square(i)
        cv2.rectangle(frame, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 255), -1)
        cam = f"cam{i % 2}"
        headers = [
            ("cam", cam.encode()),
            ("frame", str(i).encode()),
            ("content-type", b"image/jpeg"),
        ]
        items.append((f"{cam}-{i}".encode(), encode_jpeg(frame, 95), headers))
    return items


def test_detections_leave_with_their_frames_key_and_headers(kafka_bootstrap, new_topic) -> None:
    src, out = new_topic(partitions=2), new_topic()
    n = 24
    items = _frames(n)
    items.append((b"garbage", b"\xff\xd8\xff not a jpeg", [("frame", b"bad")]))
    node = ParallelConsumer(src, kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", producer_topic=out)
    detector = YoloDetect(square_finder(), conf=0.5)

    async def main() -> None:
        await produce_kafka(kafka_bootstrap, src, items)
        task = asyncio.create_task(node.run(2, 4, detector))

        async def arrived() -> bool:
            if task.done():
                task.result()  # a crashed node fails the test with its own error
            got = await read_kafka(kafka_bootstrap, out, n, timeout=0.5)
            dead = await read_kafka(kafka_bootstrap, f"{src}.dlq", 1, timeout=0.5)
            return len(got) >= n and len(dead) >= 1

        try:
            await until(arrived, 90, "every detection and the dead letter", interval=0.2)
        finally:
            node.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(main())
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n, settle=1.0))
    dead = asyncio.run(read_kafka(kafka_bootstrap, f"{src}.dlq", 1))
    assert len(got) == n, "a detection was lost or duplicated"
    frames = collections.Counter()
    for record in got:
        headers = dict(record.headers)
        i = int(headers["frame"])
        frames[i] += 1
        assert record.key == f"cam{i % 2}-{i}".encode()
        assert headers["cam"] == f"cam{i % 2}".encode()
        assert headers["content-type"] == b"application/json"
        detections = json.loads(record.value)
        assert (detections["width"], detections["height"]) == (WIDTH, HEIGHT)
        assert len(detections["boxes"]) == 1, detections
        # 960x540 -> 640x360: 1.5 frame pixels per model pixel.
        np.testing.assert_allclose(detections["boxes"][0], _square(i), atol=2.5)
    assert frames == {i: 1 for i in range(n)}
    assert [dict(r.headers)["frame"] for r in dead] == [b"bad"]
    assert dict(dead[0].headers)["fogverse.error.stage"] == b"process"
