"""FogVerse's main job: camera -> Kafka -> parallel YOLO preprocessing -> Kafka -> detector.

    python examples/video_pipeline.py                  # synthetic video, local broker
    python examples/video_pipeline.py --video clip.mp4 --bootstrap 127.0.0.1:9092
    python examples/video_pipeline.py --max-rate --frames 600 --loop

Stages (all three in this process; the preprocessing workers are separate processes):

1. ``VideoSource`` (a Producer) reads a video file or camera with OpenCV, paced at the video's
   frame rate (``--max-rate``: as fast as it can), and sends each frame JPEG-encoded with the
   key = frame index and the headers ``cam``, ``frame``, ``timestamp`` (capture time, epoch
   seconds as text) and ``size`` (``WIDTHxHEIGHT`` of the source frame).
2. A ParallelConsumer runs the YOLO-style preprocessing in ``--processes`` worker processes:
   JPEG decode and letterbox to 640x640 (the costly part), then re-encode (see "wire" below).
   The node keeps the frames' key and headers on its output.
3. ``DetectionSink`` (a Consumer) runs a detector on the letterboxed frame, maps the boxes back
   to the source frame with ``scale_boxes``, writes the annotated video and a latency CSV
   (end-to-end: capture timestamp -> sink done) and logs progress every second.

What crosses Kafka between stages 2 and 3 (``--wire``):

* ``jpeg`` (default): the letterboxed uint8 frame, JPEG-compressed (~70-150 KB at 640x640).
  It fits Kafka's default 1 MB message limit and a fog uplink; the model's float tensor is
  one cheap step away on the receiving side (``BGRToRGB``, ``HWCToCHW``, ``ToFloat``), at
  the price of JPEG's loss.
* ``tensor``: the model input itself, float16 CHW 3x640x640 (2.4 MB; float32 would be 4.9 MB).
  That exceeds Kafka's 1 MB default, so this script raises the limits on purpose, for that
  topic only: topic ``max.message.bytes``, the producer's ``max_request_size`` and the
  consumer's ``max_partition_fetch_bytes`` (8 MiB each).

The detector is OpenCV's background subtractor (MOG2) plus contours, so no model file is
needed (OpenCV 5 no longer has the HOG people detector in its main modules).

Outputs (``--output-dir``, default examples/output/): annotated.mp4, latency.csv and
summary.json. Exits 0 when every frame arrived (Ctrl-C also stops it cleanly, with status
0: frames in flight then stay in Kafka), 1 when frames were lost.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import time
from collections.abc import Sequence
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
from make_video import DEFAULT_VIDEO, OUTPUT_DIR, make_video

from fogverse import Processor, Producer, Record, run
from fogverse.codec import JPEGCodec
from fogverse.view import open_view
from processors import (
    Compose,
    DecodeImage,
    EncodeJPEG,
    Letterbox,
    LetterboxParams,
    YoloPreprocess,
    letterbox_params,
    scale_boxes,
)

__all__ = [
    "LOW_LATENCY",
    "MODEL_SIZE",
    "DetectionSink",
    "MotionDetector",
    "VideoSource",
    "main",
    "preprocessor",
    "tensor_to_bgr",
    "wire_configs",
]

logger = logging.getLogger("examples")

MODEL_SIZE = 640
# A video frame is a batch on its own: waiting (linger) for more records only adds latency.
LOW_LATENCY: dict[str, Any] = {"linger_ms": 0}
_TENSOR_LIMIT = 8 * 1024 * 1024


# ---- stage 1: the camera ---------------------------------------------------------------------


class VideoSource(Producer):
    """A Producer reading a video file or a camera (``source`` = path or device index).

    ``fps`` paces a file like a live camera (``None``: as fast as possible; a camera paces
    itself). Stops after ``max_frames`` frames, ``max_seconds`` of capture, or the end of the
    file (``loop=True`` replays it).
    """

    def __init__(
        self,
        source: str | int,
        *,
        cam: str = "cam0",
        fps: float | None = None,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        loop: bool = False,
        quality: int = 90,
        **kwargs: Any,
    ) -> None:
        # The node's codec JPEG-encodes each frame and sets the content-type header.
        super().__init__(output_codec=JPEGCodec(quality=quality), **kwargs)
        self.source, self.cam, self.fps = source, cam, fps
        self.max_frames, self.max_seconds, self.loop = max_frames, max_seconds, loop
        self.sent = 0
        self.capture: cv2.VideoCapture | None = None
        self._t0 = 0.0

    def _before_start(self) -> None:
        self.capture = cv2.VideoCapture(self.source)
        if not self.capture.isOpened():
            raise OSError(f"OpenCV cannot open video source {self.source!r}")

    async def receive(self) -> Record:
        assert self.capture is not None
        if self.sent == 0:
            self._t0 = time.monotonic()
        if self.max_frames is not None and self.sent >= self.max_frames:
            raise StopAsyncIteration
        if self.max_seconds is not None and time.monotonic() - self._t0 >= self.max_seconds:
            raise StopAsyncIteration
        if self.fps:
            # Frame n is due n/fps after the first one; a late frame goes at once.
            delay = self._t0 + self.sent / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        # In a thread: a camera's read() blocks until its next frame, and the event loop
        # has other nodes to run meanwhile.
        ok, frame = await asyncio.to_thread(self.capture.read)
        if not ok and self.loop and self.sent > 0:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = await asyncio.to_thread(self.capture.read)
        if not ok:
            raise StopAsyncIteration
        index = self.sent
        self.sent += 1
        height, width = frame.shape[:2]
        headers = [
            ("cam", self.cam.encode()),
            ("frame", str(index).encode()),
            ("timestamp", f"{time.time():.6f}".encode()),
            ("size", f"{width}x{height}".encode()),
        ]
        return Record(frame, key=str(index).encode(), headers=headers)

    async def encode(self, data: np.ndarray) -> bytes:
        # JPEG encoding (the node's codec) in a thread too: OpenCV releases the GIL, so it
        # runs on another core while the event loop serves the other nodes.
        return await asyncio.to_thread(super().encode, data)

    def _after_close(self) -> None:
        if self.capture is not None:
            self.capture.release()


# ---- stage 2: preprocessing in worker processes ----------------------------------------------


def preprocessor(wire: str = "jpeg", quality: int = 90) -> Processor:
    """The Processor the workers run: a JPEG frame in, the ``wire`` format out."""
    if wire == "jpeg":
        return Compose(DecodeImage(), Letterbox(MODEL_SIZE), EncodeJPEG(quality))
    if wire == "tensor":
        # A partial of a numpy function pickles by reference: workers need no extra code.
        to_half = functools.partial(np.ascontiguousarray, dtype=np.float16)
        return Compose(YoloPreprocess(MODEL_SIZE, decode=True), to_half)
    raise ValueError(f"unknown wire format {wire!r}: 'jpeg' or 'tensor'")


def wire_configs(wire: str) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """``(topic config, producer config, consumer config)`` for the preprocessed topic."""
    if wire == "tensor":
        # Raised on purpose: one float16 tensor is 2.4 MB, over Kafka's 1 MB defaults.
        return (
            {"max.message.bytes": str(_TENSOR_LIMIT)},
            {"max_request_size": _TENSOR_LIMIT},
            {"max_partition_fetch_bytes": _TENSOR_LIMIT},
        )
    return {}, {}, {}


# ---- stage 3: detector and sink --------------------------------------------------------------


class MotionDetector:
    """Boxes around moving things: OpenCV's MOG2 background model plus contours.

    It learns the background from the frames it sees, so it must see one camera's frames in
    order: the ParallelConsumer keeps each partition's order by default. Works on a half-size
    copy for speed; boxes come back in the input image's coordinates.
    """

    def __init__(self, min_area: float = 0.002, warmup: int = 5) -> None:
        self.subtractor = cv2.createBackgroundSubtractorMOG2(
            history=200, varThreshold=32, detectShadows=False
        )
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.min_area = min_area
        self.warmup = warmup
        self.seen = 0

    def detect(self, image: np.ndarray) -> np.ndarray:
        """``(N, 4)`` float32 xyxy boxes of moving regions in ``image`` (BGR uint8)."""
        small = cv2.resize(
            image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
        mask = self.subtractor.apply(small)
        self.seen += 1
        if self.seen <= self.warmup:  # everything is "new" in the first frames
            return np.zeros((0, 4), np.float32)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        mask = cv2.dilate(mask, self.kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.min_area * small.shape[0] * small.shape[1]
        boxes = [
            (x, y, x + w, y + h)
            for x, y, w, h in map(cv2.boundingRect, contours)
            if w * h >= min_area
        ]
        return np.asarray(boxes, np.float32).reshape(-1, 4) * 2


def tensor_to_bgr(tensor: np.ndarray) -> np.ndarray:
    """float CHW RGB in [0, 1] -> uint8 HWC BGR (the image the tensor was made from)."""
    planes = [cv2.convertScaleAbs(np.asarray(p, np.float32), alpha=255) for p in tensor[::-1]]
    return cv2.merge(planes)


class DetectionSink(MeasuringSink):
    """Detects, draws the boxes on the source-sized frame and writes it to ``video_path``."""

    extra_columns = ("detections", "boxes")

    def __init__(
        self,
        consumer_topic: str,
        *,
        video_path: Path | None = None,
        detector: str = "motion",
        out_fps: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(consumer_topic, **kwargs)
        self.video_path, self.detector, self.out_fps = video_path, detector, out_fps
        self.detectors: dict[str, MotionDetector] = {}  # one per camera: each learns its scene
        self._writer: cv2.VideoWriter | None = None

    def handle(self, data: np.ndarray, record: Record) -> Sequence[Any]:
        # jpeg wire: the codec decoded a BGR image; tensor wire: a float16 CHW tensor.
        image = data if data.ndim == 3 and data.shape[2] == 3 else tensor_to_bgr(data)
        width, height = (int(v) for v in (record.header("size") or b"0x0").split(b"x"))
        params = letterbox_params((height, width), image.shape[:2])
        boxes = np.zeros((0, 4), np.float32)
        if self.detector == "motion":
            cam = (record.header("cam") or b"?").decode()
            found = self.detectors.setdefault(cam, MotionDetector()).detect(image)
            boxes = scale_boxes(found, params)  # letterbox pixels -> source frame pixels
        if self.video_path is not None:
            self._write(image, params, boxes)
        return len(boxes), ";".join(" ".join(f"{v:.0f}" for v in box) for box in boxes)

    def _write(self, image: np.ndarray, params: LetterboxParams, boxes: np.ndarray) -> None:
        """Undo the letterbox (crop the padding, resize to the source size), draw the boxes."""
        height, width = params.src_hw
        unpad_w, unpad_h = params.new_unpad_wh
        top, left = params.pad_top, params.pad_left
        frame = cv2.resize(image[top : top + unpad_h, left : left + unpad_w], (width, height))
        for x1, y1, x2, y2 in boxes.astype(int):
            cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 3)
        if self._writer is None:
            assert self.video_path is not None
            self.video_path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(
                str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.out_fps, (width, height)
            )
        self._writer.write(frame)

    def _after_close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        super()._after_close()


# ---- running it ------------------------------------------------------------------------------


async def run_pipeline(args: argparse.Namespace, bootstrap: str) -> Summary:
    source: str | int = int(args.video) if str(args.video).isdigit() else str(args.video)
    # A camera delivers frames at its own rate; a file is paced like one unless --max-rate.
    video_fps = args.fps or _video_fps(source)
    live = isinstance(source, int)
    fps = None if args.max_rate or (live and not args.fps) else video_fps
    prefix = args.topic_prefix or new_prefix("video")
    frames_topic, tensors_topic = f"{prefix}.frames", f"{prefix}.preprocessed"
    topic_conf, producer_conf, consumer_conf = wire_configs(args.wire)
    await create_topics(bootstrap, {frames_topic: {}, tensors_topic: topic_conf})

    camera = VideoSource(
        source,
        fps=fps,
        max_frames=args.frames,
        max_seconds=args.seconds,
        loop=args.loop,
        quality=args.quality,
        producer_topic=frames_topic,
        producer_servers=bootstrap,
        producer_conf=LOW_LATENCY,
    )
    preprocess = ReadyParallelConsumer(
        frames_topic,
        bootstrap,
        f"{prefix}.preprocess",
        producer_topic=tensors_topic,
        producer_conf={**LOW_LATENCY, **producer_conf},
        input_codec="bytes",  # pass the JPEG through undecoded: the workers decode it
    )
    sink = DetectionSink(
        tensors_topic,
        video_path=args.output_dir / "annotated.mp4",
        csv_path=args.output_dir / "latency.csv",
        detector=args.detector,
        out_fps=video_fps,
        consumer_servers=bootstrap,
        group_id=f"{prefix}.sink",
        consumer_conf=consumer_conf,
    )
    # The live page reads the frames (and the letterboxed JPEGs) with no consumer group.
    shown = [frames_topic] + ([tensors_topic] if args.wire == "jpeg" else [])
    view = (
        await open_view(bootstrap, frames=shown, nodes=[camera, preprocess, sink])
        if args.view
        else None
    )
    if view is not None:
        logger.info("live view of the pipeline: %s", view.url)
    logger.info(
        "streaming %s at %s frames/s through %s (%d worker processes, wire=%s)",
        source,
        f"{fps:g}" if fps else "max",
        bootstrap,
        args.processes,
        args.wire,
    )
    try:
        sent, interrupted = await supervise(
            [camera],
            preprocess,
            sink,
            processes=args.processes,
            max_running_task=args.max_running_task,
            processor=preprocessor(args.wire, args.quality),
            idle_timeout=args.idle_timeout,
        )
    finally:
        if view is not None:
            await view.close()
        if not args.topic_prefix and not args.keep_topics:
            await delete_topics(bootstrap, [frames_topic, tensors_topic])
    settings = {
        "video": str(source),
        "fps": fps or "max",
        "wire": args.wire,
        "processes": args.processes,
        "max_running_task": args.max_running_task,
        "detector": args.detector,
        "bootstrap": bootstrap,
    }
    return Summary.of(sent, sink.stats, settings, interrupted)


def _video_fps(source: str | int) -> float:
    cap = cv2.VideoCapture(source)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return fps if fps and fps > 0 else 30.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--bootstrap",
        help="Kafka host:port (default: FOGVERSE_BOOTSTRAP, else a "
        "local broker that this script starts and stops)",
    )
    p.add_argument(
        "--video",
        help="video file or camera index (default: the synthetic test "
        "video, generated on first use)",
    )
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--seconds", type=float, help="stop after this many seconds of capture")
    p.add_argument("--loop", action="store_true", help="replay the video file until a limit")
    p.add_argument("--fps", type=float, help="pace frames at this rate (default: the video's)")
    p.add_argument("--max-rate", action="store_true", help="send frames as fast as possible")
    p.add_argument(
        "--processes",
        type=int,
        default=min(os.cpu_count() or 1, 2),
        help="preprocessing worker processes",
    )
    p.add_argument(
        "--max-running-task",
        type=int,
        help="frames in flight in the workers (default: 2 x processes)",
    )
    p.add_argument(
        "--wire",
        choices=("jpeg", "tensor"),
        default="jpeg",
        help="what the preprocessing sends on (see the module docstring)",
    )
    p.add_argument("--detector", choices=("motion", "none"), default="motion")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    p.add_argument(
        "--topic-prefix",
        help="topic and group name prefix (default: a fresh one, "
        "whose topics are deleted at the end)",
    )
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="stop waiting for missing frames after this many quiet seconds",
    )
    p.add_argument(
        "--view",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve a live page of the pipeline (fogverse view) and print its URL",
    )
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    # Three nodes share this process's event loop while the workers use the other cores:
    # OpenCV's own thread pool would only fight them (and stall the loop while it waits).
    cv2.setNumThreads(1)
    if args.video is None:
        args.video = DEFAULT_VIDEO if DEFAULT_VIDEO.exists() else make_video(DEFAULT_VIDEO)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[Summary] = []

    async def pipeline(bootstrap: str) -> None:
        summaries.append(await run_pipeline(args, bootstrap))

    with ExitStack() as stack:
        run(pipeline(bootstrap_servers(stack, args.bootstrap)))
    summary = summaries[0]
    summary.log()
    summary.write(args.output_dir / "summary.json")
    logger.info("wrote annotated.mp4, latency.csv and summary.json in %s", args.output_dir)
    return 0 if summary.lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
