"""FogVerse's main job: camera -> Kafka -> parallel detection -> Kafka -> annotated video.

    python examples/video_pipeline.py                  # packaged face detector, local broker
    python examples/video_pipeline.py --model yolov8n.onnx --video clip.mp4
    python examples/video_pipeline.py --detector motion --max-rate --frames 600 --loop

Stages (all three in this process; the detector's workers are separate processes):

1. ``VideoSource`` (a Producer) reads a video file or camera with OpenCV, paced at the video's
   frame rate (``--max-rate``: as fast as it can), and sends each frame JPEG-encoded with the
   key = frame index and the headers ``cam``, ``frame``, ``timestamp`` (capture time, epoch
   seconds as text) and ``size`` (``WIDTHxHEIGHT`` of the source frame). Without ``--video``
   the camera is ``PhotoCamera``: it pans and zooms over scikit-image's packaged astronaut
   photograph (the synthetic video for ``--detector motion``).
2. A ParallelConsumer runs the detector in ``--processes`` worker processes, JPEG bytes in
   (through shared memory), a small JSON detection record out (``processors.Detections``:
   boxes in frame pixels, scores, class ids and names), with the frame's key and headers:

   * ``face`` (default): a real pretrained detector with nothing to download, the frontal-face
     LBP cascade that ships inside scikit-image (``processors.FaceCascade``);
   * ``yolo`` (``--model PATH``, e.g. ``make demo MODEL=yolov8n.onnx``): your YOLOv5/v8/v10/v11
     ``.onnx`` file through ``processors.YoloDetect`` (decode, letterbox, ONNX Runtime,
     decoding, class-aware NMS, boxes mapped back to the frame), in one step per frame.

3. ``DetectionSink`` (a Consumer) reads the frames and the detections, pairs them by frame
   (holding the first of each pair uncommitted until the pair is drawn), draws the boxes,
   writes the annotated video and a latency CSV (end-to-end: capture timestamp -> sink
   done) and logs progress every second.

``--detector motion`` (and ``none``) runs the older shape instead: stage 2 is the YOLO-style
preprocessing (JPEG decode, letterbox to 640x640, re-encode) and the sink runs OpenCV's MOG2
background subtractor on the letterboxed frames (MOG2 must see one camera's frames in order,
so it cannot run in the workers). What crosses Kafka between stages 2 and 3 then (``--wire``):

* ``jpeg`` (default): the letterboxed uint8 frame, JPEG-compressed (~70-150 KB at 640x640).
  It fits Kafka's default 1 MB message limit and a fog uplink; the model's float tensor is
  one cheap step away on the receiving side (``BGRToRGB``, ``HWCToCHW``, ``ToFloat``), at
  the price of JPEG's loss.
* ``tensor``: the model input itself, float16 CHW 3x640x640 (2.4 MB; float32 would be 4.9 MB).
  That exceeds Kafka's 1 MB default, so this script raises the limits on purpose, for that
  topic only: topic ``max.message.bytes``, the producer's ``max_request_size`` and the
  consumer's ``max_partition_fetch_bytes`` (8 MiB each).

OpenCV 5 no longer ships its Haar cascades nor the HOG people detector, hence scikit-image's.

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
from dataclasses import dataclass
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
from photo_camera import PhotoCamera

from fogverse import Hold, Processor, Producer, Record, run
from fogverse.codec import JPEGCodec
from fogverse.view import open_view
from processors import (
    Compose,
    DecodeImage,
    EncodeJPEG,
    FaceCascade,
    Letterbox,
    LetterboxParams,
    YoloDetect,
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
    "detector",
    "main",
    "preprocessor",
    "tensor_to_bgr",
    "unletterbox",
    "wire_configs",
]

logger = logging.getLogger("examples")

MODEL_SIZE = 640
# For nodes next to their broker. One request in flight: librdkafka's idempotent producer
# counts its in-flight limit in records, and while five frames of a partition are in flight it
# spins its broker thread until a response comes (810 us of CPU per 720p frame against 80 with
# one in flight); with one, what queues meanwhile leaves in the next request. A 1 ms linger:
# frames that two workers finish within a millisecond share a produce request, and the
# consumer downstream a fetch. At the pipeline's top rate it cut the broker's CPU per frame
# from 2.25 to 2.00 ms and raised the rate 1.05x (30 pairs); each lingering hop adds up to
# 1 ms (p50 at 30 frames/s 12.8-13.8 ms against 11.3-12.8; benchmarks/README.md).
# Across a slow link, drop the in-flight limit for several cameras' partitions: one request
# per round trip carries about 4 frames (1 MB) for all of a node's partitions.
LOW_LATENCY: dict[str, Any] = {"linger_ms": 1, "max_in_flight_requests_per_connection": 1}
_TENSOR_LIMIT = 8 * 1024 * 1024


# ---- stage 1: the camera ---------------------------------------------------------------------


class VideoSource(Producer):
    """A Producer reading a video file or a camera (``source`` = path or device index, or an
    object with ``cv2.VideoCapture``'s ``read``/``set``/``release``, e.g. ``PhotoCamera``).

    ``fps`` paces a file like a live camera (``None``: as fast as possible; a camera paces
    itself). Stops after ``max_frames`` frames, ``max_seconds`` of capture, or the end of the
    file (``loop=True`` replays it).
    """

    def __init__(
        self,
        source: str | int | Any,
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
        is_capture = hasattr(self.source, "read")
        self.capture = self.source if is_capture else cv2.VideoCapture(self.source)
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
        # fit: the frame decodes straight at the 1/2, 1/4 or 1/8 DCT scale that still covers
        # the letterbox (a 720p frame at 640x360), so the letterbox has little left to do.
        return Compose(DecodeImage(fit=MODEL_SIZE), Letterbox(MODEL_SIZE), EncodeJPEG(quality))
    if wire == "tensor":
        # A partial of a numpy function pickles by reference: workers need no extra code.
        to_half = functools.partial(np.ascontiguousarray, dtype=np.float16)
        return Compose(YoloPreprocess(MODEL_SIZE, decode=True), to_half)
    raise ValueError(f"unknown wire format {wire!r}: 'jpeg' or 'tensor'")


def detector(kind: str, model: Path | None = None, conf: float = 0.25) -> Processor:
    """The Processor the workers run for ``--detector face|yolo``: a JPEG frame in, a
    :data:`~processors.Detections` record out."""
    if kind == "face":
        return FaceCascade()
    if kind == "yolo":
        if model is None:
            raise ValueError("--detector yolo needs --model PATH (a YOLO .onnx file)")
        return YoloDetect(model, conf=conf)
    raise ValueError(f"no detector processor for {kind!r}")


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


@dataclass
class _Half:
    name: str  # "frame" or "detections"
    data: Any
    hold: Hold
    since: float


class DetectionSink(MeasuringSink):
    """Draws each frame's boxes on the source-sized frame and writes it to ``video_path``.

    With ``frames_topic`` (``--detector face|yolo``) it reads two topics, the detector's
    records and the camera's frames, and pairs them by frame (both carry the frame's key
    and headers). The half that comes first is held uncommitted (``hold()``) until its pair
    is drawn, so a crash in between reads it again; one whose partner has not come within
    ``pair_timeout`` seconds goes to its topic's dead-letter topic. Without it
    (``motion``/``none``) it reads the preprocessed frames and runs the motion detector
    itself.
    """

    extra_columns = ("detections", "boxes")

    def __init__(
        self,
        consumer_topic: str,
        *,
        frames_topic: str | None = None,
        video_path: Path | None = None,
        detector: str = "motion",
        out_fps: float = 30.0,
        pair_timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        topics = [consumer_topic, frames_topic] if frames_topic else consumer_topic
        super().__init__(topics, **kwargs)  # type: ignore[arg-type]
        self.frames_topic = frames_topic
        self.video_path, self.detector, self.out_fps = video_path, detector, out_fps
        self.pair_timeout = pair_timeout
        self.detectors: dict[str, MotionDetector] = {}  # one per camera: each learns its scene
        # The first half of each pair (a frame, or its detections) by (cam, frame), oldest
        # first, held uncommitted until its partner arrives.
        self._halves: dict[tuple[bytes | None, bytes | None], _Half] = {}
        self._writer: cv2.VideoWriter | None = None

    async def process(self, data: Any) -> None:
        if self.frames_topic is None:
            return await super().process(data)
        record = self.message
        key = (record.header("cam"), record.header("frame"))
        half = "frame" if record.topic == self.frames_topic else "detections"
        self._expire_halves()
        first = self._halves.pop(key, None)
        if first is None or first.name == half:
            if first is not None:  # the same half again (redelivered): keep the newer copy
                first.hold.release()
            self._halves[key] = _Half(half, data, self.hold(), time.monotonic())
            return None
        try:
            await super().process({half: data, first.name: first.data})
        except Exception as exc:
            first.hold.fail(exc)  # both halves go to the dead-letter topics
            raise
        first.hold.release()
        return None

    def _expire_halves(self) -> None:
        """Dead-letter halves whose partner has not come within ``pair_timeout`` seconds
        (a frame whose detection failed upstream never gets one)."""
        deadline = time.monotonic() - self.pair_timeout
        while self._halves:
            key, waiting = next(iter(self._halves.items()))
            if waiting.since > deadline:
                return
            del self._halves[key]
            missing = "detections" if waiting.name == "frame" else "frame"
            waiting.hold.fail(
                TimeoutError(f"no {missing} for this {waiting.name} in {self.pair_timeout:g} s")
            )

    def handle(self, data: Any, record: Record) -> Sequence[Any]:
        if self.frames_topic is not None:
            frame, found = data["frame"], data["detections"]
            boxes = np.asarray(found["boxes"], np.float32).reshape(-1, 4)
            # A score of 1 is a detector without confidences (the face cascade): name only.
            labels = [
                n if s >= 1 else f"{n} {s:.2f}"
                for n, s in zip(found["names"], found["scores"], strict=True)
            ]
            if self.video_path is not None:
                self._write(frame, boxes, labels)
        else:
            boxes = self._detect_motion(data, record)
        return len(boxes), ";".join(" ".join(f"{v:.0f}" for v in box) for box in boxes)

    def _detect_motion(self, data: np.ndarray, record: Record) -> np.ndarray:
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
            self._write(unletterbox(image, params), boxes)
        return boxes

    def _write(self, frame: np.ndarray, boxes: np.ndarray, labels: Sequence[str] = ()) -> None:
        """Draw ``boxes`` (frame pixels) and their ``labels`` on ``frame``; append it."""
        frame = frame.copy()
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().astype(int)):
            cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 3)
            if i < len(labels):
                cv2.putText(
                    frame,
                    labels[i],
                    (x1, max(y1 - 8, 16)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.8,
                    (0, 255, 0),
                    2,
                    cv2.LINE_AA,
                )
        if self._writer is None:
            assert self.video_path is not None
            self.video_path.parent.mkdir(parents=True, exist_ok=True)
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(
                str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.out_fps, (width, height)
            )
        self._writer.write(frame)

    def _after_close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        super()._after_close()


def unletterbox(image: np.ndarray, params: LetterboxParams) -> np.ndarray:
    """The source-sized frame back from a letterboxed one: crop the padding, resize."""
    height, width = params.src_hw
    unpad_w, unpad_h = params.new_unpad_wh
    top, left = params.pad_top, params.pad_left
    return cv2.resize(image[top : top + unpad_h, left : left + unpad_w], (width, height))


# ---- running it ------------------------------------------------------------------------------


async def run_pipeline(args: argparse.Namespace, bootstrap: str) -> Summary:
    detecting = args.detector in ("face", "yolo")  # else: preprocessing, sink-side detector
    source: str | int | PhotoCamera
    if args.video is None:
        source = PhotoCamera(frames=args.frames or 300)
        video_fps = args.fps or source.fps
    else:
        source = _capture_source(args.video)
        # A camera delivers frames at its own rate; a file is paced like one unless --max-rate.
        video_fps = args.fps or _video_fps(source)
    live = isinstance(source, int)
    fps = None if args.max_rate or (live and not args.fps) else video_fps
    prefix = args.topic_prefix or new_prefix("video")
    frames_topic = f"{prefix}.frames"
    middle_topic = f"{prefix}.detections" if detecting else f"{prefix}.preprocessed"
    # Detection records are small; only the tensor wire needs Kafka's limits raised.
    topic_conf, producer_conf, consumer_conf = wire_configs("jpeg" if detecting else args.wire)
    await create_topics(bootstrap, {frames_topic: {}, middle_topic: topic_conf})

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
    stage2 = ReadyParallelConsumer(
        frames_topic,
        bootstrap,
        f"{prefix}.{'detect' if detecting else 'preprocess'}",
        producer_topic=middle_topic,
        producer_conf={**LOW_LATENCY, **producer_conf},
        input_codec="bytes",  # pass the JPEG through undecoded: the workers decode it
    )
    sink = DetectionSink(
        middle_topic,
        frames_topic=frames_topic if detecting else None,
        video_path=args.output_dir / "annotated.mp4",
        csv_path=args.output_dir / "latency.csv",
        detector=args.detector,
        out_fps=video_fps,
        consumer_servers=bootstrap,
        group_id=f"{prefix}.sink",
        consumer_conf=consumer_conf,
    )
    processor = (
        detector(args.detector, args.model, args.conf)
        if detecting
        else preprocessor(args.wire, args.quality)
    )
    video = "packaged photo (skimage astronaut)" if args.video is None else str(source)
    # The live page reads the frames (and the detections, or the letterboxed JPEGs) with no
    # consumer group, so it never moves the pipeline's offsets.
    shown = [frames_topic] + ([middle_topic] if not detecting and args.wire == "jpeg" else [])
    if args.view:
        # The page's per-stage time split comes from the profilers; sampling 1 message in
        # 32 (the default) keeps their cost out of the figures they report.
        stage2.profile = sink.profile = True
    view = (
        await open_view(
            bootstrap,
            frames=shown,
            detections=middle_topic if detecting else None,
            nodes=[camera, stage2, sink],
        )
        if args.view
        else None
    )
    if view is not None:
        logger.info("live view of the pipeline: %s", view.url)
    logger.info(
        "streaming %s at %s frames/s through %s (%d worker processes running %r)",
        video,
        f"{fps:g}" if fps else "max",
        bootstrap,
        args.processes,
        processor,
    )
    try:
        sent, interrupted = await supervise(
            [camera],
            stage2,
            sink,
            processes=args.processes,
            max_running_task=args.max_running_task,
            processor=processor,
            idle_timeout=args.idle_timeout,
        )
    finally:
        if view is not None:
            await view.close()
        if not args.topic_prefix and not args.keep_topics:
            await delete_topics(bootstrap, [frames_topic, middle_topic])
    settings = {
        "video": video,
        "fps": fps or "max",
        "wire": "detections" if detecting else args.wire,
        "processes": args.processes,
        "max_running_task": args.max_running_task,
        "detector": args.detector,
        "model": str(args.model) if args.model else None,
        "bootstrap": bootstrap,
    }
    return Summary.of(sent, sink.stats, settings, interrupted)


def _capture_source(video: str) -> str | int:
    return int(video) if str(video).isdigit() else str(video)


def _opens(source: str | int) -> bool:
    cap = cv2.VideoCapture(source)
    try:
        return bool(cap.isOpened())
    finally:
        cap.release()


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
        help="video file or camera index (default: a camera panning over a packaged photo; "
        "for --detector motion/none the synthetic test video, generated on first use)",
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
        help="worker processes of the detector (or preprocessing)",
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
        help="what the preprocessing sends on, for --detector motion/none (see the docstring)",
    )
    p.add_argument(
        "--detector",
        choices=("face", "yolo", "motion", "none"),
        help="face: scikit-image's packaged face cascade; yolo: --model in ONNX Runtime; "
        "motion: MOG2 in the sink after preprocessing (default: yolo with --model, else face)",
    )
    p.add_argument("--model", type=Path, help="a YOLOv5/v8/v11 .onnx file (means --detector yolo)")
    p.add_argument("--conf", type=float, default=0.25, help="YOLO confidence threshold")
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
    args.detector = args.detector or ("yolo" if args.model else "face")
    if args.model is not None and args.detector != "yolo":
        parser().error("--model runs the YOLO detector: leave out --detector or say yolo")
    if args.detector == "yolo" and args.model is None:
        parser().error("--detector yolo needs --model PATH (a YOLO .onnx file)")
    # Checked before a broker starts or topics are made: found later, a wrong path failed
    # the run with a traceback (a missing model also left the run's topics on the broker).
    if args.model is not None and not args.model.is_file():
        parser().error(f"--model {args.model}: no such file")
    if args.video is not None and not _opens(_capture_source(args.video)):
        parser().error(f"--video {args.video}: OpenCV cannot open it (no such file or camera)")
    if args.video is None and args.detector in ("motion", "none"):
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
