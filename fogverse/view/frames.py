"""The newest frame of each viewed image topic, paired with its detections, ready to send.

Memory is bounded whatever the topics' rates: one shown frame per topic, plus (when a
detections topic is viewed) the last :data:`PAIR_FRAMES` frames (at most :data:`PAIR_BYTES`)
of each topic waiting for their detections and the last :data:`PAIR_DETECTIONS` detections
waiting for their frames.
Browsers are handed the newest frame when they are ready for one; frames that arrive in
between replace it, so a slow browser sees fewer frames, never a queue.

A frame and its detections are tied by the frame's identity: the ``cam`` header and the
record key (or, without a key, the ``frame`` header). With a detections topic, what is shown
is the newest frame *that has its detections*: a detector that lags the camera by seconds (a
slow fog node) still gets its boxes drawn, on a frame as old as the detector is behind. The
waiting frames are the ones the reader sampled (every frame the detector handles gets its
detections, so a sampled frame is paired once the detector reaches it); the ring of them
covers ``PAIR_FRAMES / max_fps`` seconds of lag. When no frame was paired for
:data:`PAIR_WAIT` seconds (no detector running, or it is further behind than the ring), the
newest frames are shown bare, marked as waiting, with how far behind the detector is.

Every payload is checked before anyone sees it; what fails is counted by reason and skipped.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from fogverse.codec import DecodeError, JPEGCodec, NDArrayCodec, PNGCodec

__all__ = [
    "PAIR_BYTES",
    "PAIR_DETECTIONS",
    "PAIR_FRAMES",
    "PAIR_WAIT",
    "Detections",
    "Frame",
    "FrameStore",
    "frame_id",
    "parse_detections",
    "timestamp_of",
]

PAIR_FRAMES = 256
PAIR_BYTES = 64 * 1024 * 1024
PAIR_DETECTIONS = 512
PAIR_WAIT = 5.0
MAX_BOXES = 1000
MAX_DETECTION_BYTES = 1024 * 1024
MAX_PIXELS = 4096 * 4096

Headers = list[tuple[str, bytes]]
FrameId = tuple[bytes, bytes]

_JPEG = JPEGCodec(max_pixels=MAX_PIXELS)
_PNG = PNGCodec(max_pixels=MAX_PIXELS)
_NDARRAY = NDArrayCodec()


def _header(headers: Headers, name: str) -> bytes | None:
    for k, v in reversed(headers):
        if k == name:
            return v if isinstance(v, bytes) else None
    return None


def frame_id(key: bytes | None, headers: Headers) -> FrameId | None:
    """``(cam, key)``: what ties detections to their frame (``None``: nothing to tie by)."""
    ident = key if key is not None else _header(headers, "frame")
    if ident is None:
        return None
    return (_header(headers, "cam") or b"", ident)


def timestamp_of(headers: Headers) -> float | None:
    """The capture time in the ``timestamp`` header (epoch seconds as text), if sane."""
    raw = _header(headers, "timestamp")
    if raw is None or len(raw) > 32:
        return None
    try:
        ts = float(raw)
    except ValueError:
        return None
    return ts if math.isfinite(ts) and 1e9 < ts < 1e10 else None


@dataclass(frozen=True)
class Detections:
    """Boxes in the frame's pixels with their scores and labels (lists of equal length)."""

    boxes: list[list[float]]
    scores: list[float]
    labels: list[str]


def parse_detections(value: bytes | None) -> Detections:
    """The detection helper's JSON record (``boxes`` [x1, y1, x2, y2], ``scores``,
    ``class_ids``, ``names`` per box or as the class table); ``ValueError`` if malformed."""
    if value is None or len(value) > MAX_DETECTION_BYTES:
        raise ValueError("empty or oversized")
    try:
        d = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    raw_boxes = d.get("boxes")
    if not isinstance(raw_boxes, list) or len(raw_boxes) > MAX_BOXES:
        raise ValueError("'boxes' is not a list of at most 1000 boxes")
    boxes = []
    for box in raw_boxes:
        if not (isinstance(box, list) and len(box) == 4 and all(_finite(v) for v in box)):
            raise ValueError("a box is not [x1, y1, x2, y2]")
        boxes.append([float(v) for v in box])
    n = len(boxes)
    scores = d.get("scores") or []
    if not isinstance(scores, list) or len(scores) != n or not all(_finite(s) for s in scores):
        scores = [math.nan] * n
    return Detections(boxes, [float(s) for s in scores], _labels(d, n))


def _finite(v: Any) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # a JSON integer of hundreds of digits: no float holds it
        return False


def _labels(d: dict[str, Any], n: int) -> list[str]:
    names, ids = d.get("names"), d.get("class_ids")
    ids = ids if isinstance(ids, list) and len(ids) == n else [None] * n
    out = []
    for i in range(n):
        cid = ids[i] if isinstance(ids[i], int) and not isinstance(ids[i], bool) else None
        label: Any = None
        if isinstance(names, list) and len(names) == n:
            label = names[i]  # one name per box
        elif isinstance(names, dict) and cid is not None:
            label = names.get(str(cid), names.get(cid))
        elif isinstance(names, list) and cid is not None and 0 <= cid < len(names):
            label = names[cid]  # the class table
        if not isinstance(label, str):
            label = "" if cid is None else str(cid)
        out.append(label[:64])
    return out


@dataclass
class Frame:
    """One received image: its bytes and where it came from."""

    topic: str
    seq: int
    """Arrival order within its topic."""
    ident: FrameId | None
    key: bytes | None
    ts: float | None
    received: float
    data: bytes
    kind: str
    """``jpeg``, ``png`` or ``ndarray`` (converted to JPEG when first sent)."""


@dataclass
class Shown:
    """What browsers get for a topic: a frame, its detections, and the bytes sent."""

    frame: Frame
    detections: Detections | None
    version: int
    waiting: bool = False
    """Shown bare although detections are viewed: none came for this frame in time."""
    behind: float | None = None
    """Then, how many seconds the newest detection's frame is older than now (``None``:
    no detection seen yet)."""
    payload: bytes | None = None
    failed: bool = False


@dataclass
class _Topic:
    seq: int = 0
    version: int = 0
    shown: Shown | None = None
    paired_seq: int = 0
    """The newest frame shown with its detections: older ones are no use any more."""
    paired_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: OrderedDict[FrameId, Frame] = field(default_factory=OrderedDict)
    waiting_bytes: int = 0
    sent: int = 0


def image_kind(value: bytes, max_bytes: int) -> str:
    """``jpeg``/``png``/``ndarray`` after a structural check; ``ValueError`` naming why not."""
    if len(value) > max_bytes:
        raise ValueError("too large")
    try:
        if value[:2] == b"\xff\xd8":
            _JPEG.check(value)  # truncation, structure and pixel budget, without decoding
            return "jpeg"
        if value[:8] == b"\x89PNG\r\n\x1a\n":
            _PNG.check(value)
            return "png"
        if value[:4] == b"FVND":
            return "ndarray"  # checked when converted: only what is shown costs a decode
    except DecodeError:
        raise ValueError("broken image") from None
    raise ValueError("not an image")


def _ndarray_to_jpeg(value: bytes) -> bytes:
    """A FogVerse ndarray frame (uint8 HxW[xC], or a float CHW tensor in [0, 1]) as JPEG."""
    try:
        a = _NDARRAY.decode(value)
    except DecodeError:
        raise ValueError("broken ndarray") from None
    if a.dtype != np.uint8 and a.ndim == 3 and a.shape[0] in (1, 3):
        # The model's input tensor: RGB planes in [0, 1] -> BGR pixels.
        a = np.clip(np.moveaxis(np.asarray(a, np.float32), 0, -1)[..., ::-1] * 255, 0, 255)
        a = a.astype(np.uint8)
    ok_shape = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))
    if a.dtype != np.uint8 or not ok_shape or a.size == 0 or a.size > MAX_PIXELS * 4:
        raise ValueError("ndarray is not an image")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(a), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("ndarray is not an image")
    return buf.tobytes()


class FrameStore:
    """The frames and detections of the viewed topics. Runs on one event loop."""

    def __init__(
        self,
        topics: list[str],
        *,
        pairing: bool,
        max_frame_bytes: int,
        on_skip: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics: dict[str, _Topic] = {t: _Topic() for t in topics}
        self.pairing = pairing
        self.max_frame_bytes = max_frame_bytes
        self.on_skip = on_skip
        self.clock = clock
        self._detections: OrderedDict[FrameId, Detections] = OrderedDict()
        self._detected_ts: float | None = None
        """Capture time of the newest frame a detection was read for."""

    # ---- input ---------------------------------------------------------------------------

    def add_frame(self, topic: str, key: bytes | None, headers: Headers, value: bytes) -> None:
        t = self.topics[topic]
        try:
            kind = image_kind(value, self.max_frame_bytes)
        except ValueError as exc:
            self.on_skip(topic, str(exc))
            return
        t.seq += 1
        now = self.clock()
        if t.seq == 1:
            t.paired_at = now  # the first frames too wait (a while) for their detections
        ident = frame_id(key, headers)
        frame = Frame(topic, t.seq, ident, key, timestamp_of(headers), now, value, kind)
        if not self.pairing or ident is None:
            self._show(t, frame, None)
            return
        found = self._detections.get(ident)
        if found is not None:
            self._pair(t, frame, found)
            return
        again = t.waiting.pop(ident, None)  # the same frame sent again: keep the newest copy
        if again is not None:
            t.waiting_bytes -= len(again.data)
        t.waiting[ident] = frame
        t.waiting_bytes += len(value)
        while len(t.waiting) > PAIR_FRAMES or t.waiting_bytes > PAIR_BYTES:
            self._forget_oldest(t)
        if now - t.paired_at > PAIR_WAIT:
            # Nothing paired for a while (no detector, or it is beyond the ring): show the
            # camera bare rather than a frozen picture, and say why.
            behind = None if self._detected_ts is None else max(0.0, now - self._detected_ts)
            self._show(t, frame, None, waiting=True, behind=behind)

    def add_detections(
        self, topic: str, key: bytes | None, headers: Headers, value: bytes | None
    ) -> None:
        ident = frame_id(key, headers)
        try:
            if ident is None:
                raise ValueError("no key or frame header")
            found = parse_detections(value)
        except ValueError as exc:
            self.on_skip(topic, str(exc))
            return
        assert ident is not None
        self._detections[ident] = found
        while len(self._detections) > PAIR_DETECTIONS:
            self._detections.popitem(last=False)
        ts = timestamp_of(headers)
        if ts is not None and (self._detected_ts is None or ts > self._detected_ts):
            self._detected_ts = ts
        for t in self.topics.values():
            frame = t.waiting.get(ident)
            if frame is not None and frame.seq > t.paired_seq:
                # Even when a newer frame is shown bare: boxes late beat no boxes.
                self._pair(t, frame, found)

    def _pair(self, t: _Topic, frame: Frame, detections: Detections) -> None:
        t.paired_seq, t.paired_at = frame.seq, self.clock()
        if frame.ts is not None and (self._detected_ts is None or frame.ts > self._detected_ts):
            self._detected_ts = frame.ts
        # Frames up to this one can no longer be shown: free them now.
        while t.waiting and next(iter(t.waiting.values())).seq <= frame.seq:
            self._forget_oldest(t)
        self._show(t, frame, detections)

    @staticmethod
    def _forget_oldest(t: _Topic) -> None:
        _, old = t.waiting.popitem(last=False)
        t.waiting_bytes -= len(old.data)

    def _show(
        self,
        t: _Topic,
        frame: Frame,
        detections: Detections | None,
        *,
        waiting: bool = False,
        behind: float | None = None,
    ) -> None:
        t.version += 1
        t.shown = Shown(frame, detections, t.version, waiting, behind)
        # Waking every waiting browser at once: each takes the newest when it is ready.
        t.changed.set()
        t.changed = asyncio.Event()

    # ---- output --------------------------------------------------------------------------

    async def next(self, topic: str, after: int, timeout: float) -> Shown | None:
        """The shown frame newer than version ``after``, waiting up to ``timeout`` s."""
        t = self.topics[topic]
        if t.shown is not None and t.shown.version > after:
            return t.shown
        try:
            async with asyncio.timeout(timeout):
                await t.changed.wait()
        except TimeoutError:
            return None
        return t.shown

    async def payload(self, shown: Shown) -> bytes | None:
        """One WebSocket message for ``shown``: a 4-byte length, a JSON header, the JPEG/PNG.

        Built once per shown frame and shared by every browser."""
        if shown.payload is not None or shown.failed:
            return shown.payload
        f = shown.frame
        image, kind = f.data, f.kind
        if kind == "ndarray":
            try:
                image = await asyncio.to_thread(_ndarray_to_jpeg, f.data)
            except ValueError as exc:
                shown.failed = True
                self.on_skip(f.topic, str(exc))
                return None
            kind = "jpeg"
        now = self.clock()
        det = shown.detections
        meta = {
            "topic": f.topic,
            "seq": f.seq,
            "key": f.key.decode("utf-8", "replace")[:64] if f.key is not None else None,
            "cam": f.ident[0].decode("utf-8", "replace")[:64] if f.ident else None,
            "type": f"image/{kind}",
            "ts": f.ts,
            "age_ms": round((now - f.ts) * 1000, 1) if f.ts is not None else None,
            "boxes": det.boxes if det else None,
            "scores": [None if math.isnan(s) else s for s in det.scores] if det else None,
            "labels": det.labels if det else None,
            "waiting": shown.waiting,
            "behind_s": round(shown.behind, 1) if shown.behind is not None else None,
        }
        header = json.dumps(meta, separators=(",", ":")).encode()
        shown.payload = len(header).to_bytes(4, "big") + header + image
        self.topics[f.topic].sent += 1
        return shown.payload

    def latest_image(self, topic: str) -> tuple[bytes, str] | None:
        """The newest shown frame's bytes and media type (ndarray frames are not converted
        here: see :meth:`payload`)."""
        t = self.topics.get(topic)
        if t is None or t.shown is None or t.shown.frame.kind == "ndarray":
            return None
        return t.shown.frame.data, f"image/{t.shown.frame.kind}"

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "frames": t.seq,
                "shown_version": t.version,
                "payloads_built": t.sent,
                "with_detections": bool(t.shown and t.shown.detections is not None),
                "waiting_frames": len(t.waiting),
                "waiting_bytes": t.waiting_bytes,
            }
            for name, t in self.topics.items()
        }
