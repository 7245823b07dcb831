"""Several cameras into one topic, one parallel preprocessing stage, a per-camera sink.

    python examples/multi_camera.py                          # 4 cameras x 10 frames/s
    python examples/multi_camera.py --cameras 8 --fps 5 --seconds 20 --processes 2

Each synthetic camera (a Producer) renders its own scene and sends JPEG frames keyed by its
camera id, so all of one camera's frames land in the same partition of a topic with
``--partitions`` partitions (default: one per camera). Kafka then keeps each camera's frames
in order, and the ParallelConsumer keeps that order per partition while its workers
preprocess frames of every camera at once. The sink counts frames and measures the
end-to-end latency per camera; the summary (also in summary.json) lists both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from harness import (
    MeasuringSink,
    ReadyParallelConsumer,
    Summary,
    bootstrap_servers,
    create_topics,
    delete_topics,
    new_prefix,
    setup_logging,
    supervise,
)
from make_video import OUTPUT_DIR, SyntheticScene, parse_size, positive_float
from video_pipeline import LOW_LATENCY, preprocessor

from fogverse import Producer, Record, run
from fogverse.cli import positive_int
from fogverse.codec import JPEGCodec

__all__ = ["SyntheticCamera", "main"]

logger = logging.getLogger("examples")


class SyntheticCamera(Producer):
    """A camera that renders :class:`SyntheticScene` frames live at ``fps``.

    Frames are keyed by the camera id (``cam``), which picks the partition.
    """

    def __init__(
        self,
        cam: str,
        *,
        seed: int,
        size: tuple[int, int] = (1280, 720),
        fps: float = 10.0,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        quality: int = 90,
        **kwargs: Any,
    ) -> None:
        super().__init__(output_codec=JPEGCodec(quality=quality), **kwargs)
        self.cam, self.scene, self.fps = cam, SyntheticScene(*size, seed=seed), fps
        self.max_frames, self.max_seconds = max_frames, max_seconds
        self.sent = 0
        self._t0 = 0.0

    async def receive(self) -> Record:
        if self.sent == 0:
            self._t0 = time.monotonic()
        if self.max_frames is not None and self.sent >= self.max_frames:
            raise StopAsyncIteration
        if self.max_seconds is not None and time.monotonic() - self._t0 >= self.max_seconds:
            raise StopAsyncIteration
        delay = self._t0 + self.sent / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        # Rendering and (in encode) JPEG encoding run in threads: OpenCV and numpy release
        # the GIL, so the cameras use other cores while the event loop serves the nodes.
        frame = await asyncio.to_thread(self.scene.frame, self.sent, self.fps)
        headers = [
            ("cam", self.cam.encode()),
            ("frame", str(self.sent).encode()),
            ("timestamp", f"{time.time():.6f}".encode()),
            ("size", f"{self.scene.width}x{self.scene.height}".encode()),
        ]
        self.sent += 1
        return Record(frame, key=self.cam.encode(), headers=headers)

    async def encode(self, data: np.ndarray) -> bytes:
        return await asyncio.to_thread(super().encode, data)


async def run_cameras(args: argparse.Namespace, bootstrap: str) -> Summary:
    prefix = args.topic_prefix or new_prefix("cameras")
    frames_topic, out_topic = f"{prefix}.frames", f"{prefix}.preprocessed"
    partitions = args.partitions or args.cameras
    await create_topics(bootstrap, {frames_topic: {}, out_topic: {}}, partitions=partitions)
    seconds = 10.0 if args.max_seconds is None and args.frames is None else args.max_seconds

    cameras = [
        SyntheticCamera(
            f"cam{i}",
            seed=i,
            size=args.size,
            fps=args.fps,
            max_frames=args.frames,
            max_seconds=seconds,
            producer_topic=frames_topic,
            producer_servers=bootstrap,
            producer_conf=LOW_LATENCY,
        )
        for i in range(args.cameras)
    ]
    preprocess = ReadyParallelConsumer(
        frames_topic,
        bootstrap,
        f"{prefix}.preprocess",
        producer_topic=out_topic,
        producer_conf=LOW_LATENCY,
        input_codec="bytes",
    )
    # The sink only counts and times frames: it has no use for decoding them (bytes codec).
    sink = MeasuringSink(
        out_topic,
        csv_path=args.output_dir / "cameras.csv",
        consumer_servers=bootstrap,
        group_id=f"{prefix}.sink",
        input_codec="bytes",
    )
    logger.info(
        "%d cameras x %g frames/s into %d partitions through %s (%d worker processes)",
        args.cameras,
        args.fps,
        partitions,
        bootstrap,
        args.processes,
    )
    try:
        sent, interrupted = await supervise(
            cameras,
            preprocess,
            sink,
            processes=args.processes,
            max_running_task=args.max_running_task,
            processor=preprocessor("jpeg"),
            idle_timeout=args.idle_timeout,
        )
    finally:
        if not args.topic_prefix:
            await delete_topics(bootstrap, [frames_topic, out_topic])
    settings = {
        "cameras": args.cameras,
        "fps_per_camera": args.fps,
        "partitions": partitions,
        "processes": args.processes,
        "max_running_task": args.max_running_task,
        "size": list(args.size),
        "bootstrap": bootstrap,
    }
    return Summary.of(sent, sink.stats, settings, interrupted)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--bootstrap",
        help="Kafka host:port (default: FOGVERSE_BOOTSTRAP, else a "
        "local broker that this script starts and stops)",
    )
    p.add_argument("--cameras", type=positive_int, default=4)
    p.add_argument("--fps", type=positive_float, default=10.0, help="frames per second per camera")
    p.add_argument("--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=positive_int, help="frames per camera")
    p.add_argument(
        "--seconds",
        dest="max_seconds",
        type=float,
        help="seconds of capture (default 10 unless --frames is given)",
    )
    p.add_argument(
        "--partitions", type=int, help="partitions of the frames topic (default: one per camera)"
    )
    p.add_argument("--processes", type=positive_int, default=min(os.cpu_count() or 1, 2))
    p.add_argument("--max-running-task", type=positive_int)
    p.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    p.add_argument(
        "--topic-prefix",
        help="topic and group name prefix (default: a fresh one, "
        "whose topics are deleted at the end)",
    )
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    cv2.setNumThreads(1)  # the cameras share one event loop with the other nodes
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[Summary] = []

    async def pipeline(bootstrap: str) -> None:
        summaries.append(await run_cameras(args, bootstrap))

    with ExitStack() as stack:
        run(pipeline(bootstrap_servers(stack, args.bootstrap)))
    summary = summaries[0]
    summary.log()
    summary.write(args.output_dir / "cameras_summary.json")
    return 0 if summary.lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
