"""From a YOLO model's raw output to boxes in the frame: decoding, class-aware NMS, the record.

Two output layouts exist (batch axis of 1 optional):

* ``"v5"`` (YOLOv5/v7): ``N x (5 + C)`` rows of ``cx, cy, w, h, objectness, C class scores``;
  a candidate's score is objectness x class score.
* ``"v8"`` (YOLOv8/v9/v11, and v5u): ``(4 + C) x N`` columns of ``cx, cy, w, h, C class
  scores``, no objectness;
* ``"end2end"`` (YOLOv10, and models exported with NMS inside): ``N x 6`` rows of final
  detections, ``x1, y1, x2, y2, score, class id``; nothing is suppressed again (a row with a
  NaN or infinite value is dropped, as NMS drops such a candidate of the other layouts).

``"auto"`` tells them apart by shape: the attribute axis is the short one (a 640 model has
thousands of candidates and at most a few hundred attributes), rows of candidates are v5;
six columns and fewer than a thousand rows are an end-to-end output (a v5 model has
thousands of candidates even at 160 px).

Boxes are in model-input (letterboxed) pixels until :func:`~processors.letterbox.scale_boxes`
maps them back. :class:`YoloDetect` is the fused node-ready path, JPEG bytes to a
:data:`Detections` record; :class:`YoloDecode` is the last step alone, for split deployments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, TypedDict, get_args

import numpy as np
from numpy.typing import NDArray

from fogverse.processor import Processor

from .letterbox import LetterboxParams, Shape, _as_hw, letterbox_params, scale_boxes
from .onnx import OnnxInference
from .yolo import YoloPreprocess

__all__ = [
    "COCO_NAMES",
    "Detections",
    "NmsBackend",
    "YoloDecode",
    "YoloDetect",
    "YoloLayout",
    "decode_yolo",
    "detections_record",
    "nms",
]

YoloLayout = Literal["auto", "v5", "v8", "end2end"]
NmsBackend = Literal["numpy", "opencv"]

_COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light "
    "fire_hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear "
    "zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard "
    "sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop "
    "mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock "
    "vase scissors teddy_bear hair_drier toothbrush"
)
COCO_NAMES: tuple[str, ...] = tuple(n.replace("_", " ") for n in _COCO.split())
"""The 80 COCO class names, in the order of YOLO models trained on COCO."""


class Detections(TypedDict):
    """One frame's detections, JSON-able: what a detector node sends on.

    ``boxes`` are ``[x1, y1, x2, y2]`` in the frame's pixels; ``width``/``height`` are the
    frame's size. The lists are parallel and sorted by descending score.
    """

    boxes: list[list[float]]
    scores: list[float]
    class_ids: list[int]
    names: list[str]
    width: int
    height: int


# ---- decoding --------------------------------------------------------------------------------


def _rows(output: NDArray[Any], layout: YoloLayout, num_classes: int | None) -> tuple[Any, str]:
    """The candidates as rows ``(N, K)`` and the layout they are in."""
    out = np.asarray(output)
    _check_choice("layout", layout, YoloLayout)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError(f"decode one image at a time; output has batch {out.shape[0]}")
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"a YOLO output is (N, 5+C) or (4+C, N), got {out.shape}")
    if layout == "auto":
        layout = _guess_layout(out.shape, num_classes)
    if layout == "end2end":
        if out.shape[1] != 6:
            raise ValueError(f"an end2end output is (N, 6), got {out.shape}")
        return out, layout
    if layout == "v8":
        rows, classes = out.T, out.shape[0] - 4
    else:  # v5
        rows, classes = out, out.shape[1] - 5
    if classes < 1:
        raise ValueError(f"a {layout} output needs at least one class column, got {out.shape}")
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"{layout} output {out.shape} has {classes} classes, not {num_classes}")
    return rows, layout


# Fewer candidates than any v5 model makes (3 anchors over strides 8/16/32: 1575 at 160 px).
_END2END_MAX_ROWS = 1000


def _guess_layout(shape: tuple[int, ...], num_classes: int | None) -> YoloLayout:
    rows, cols = shape
    if cols == 6 and rows < _END2END_MAX_ROWS:
        return "end2end"
    if num_classes is not None:
        v5, v8 = cols == 5 + num_classes, rows == 4 + num_classes
    else:
        v5, v8 = cols >= 6, rows >= 5  # room for at least one class
    if v5 and v8 and rows != cols:
        # Both fit: the attribute axis is the short one (thousands of candidates vs 5 + C).
        v5, v8 = rows > cols, rows < cols
    if v5 == v8:
        raise ValueError(f"cannot tell the YOLO layout of a {shape} output: pass layout=")
    return "v5" if v5 else "v8"


def decode_yolo(
    output: NDArray[Any],
    *,
    layout: YoloLayout = "auto",
    conf: float = 0.25,
    num_classes: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """Candidates scoring at least ``conf``: ``(boxes xyxy, scores, class_ids)``, in the
    model's input pixels, unsorted and before NMS (an ``"end2end"`` output's are final).
    ``num_classes``, when known, is checked against the output and helps ``"auto"``."""
    return _decode(output, layout, conf, num_classes)[:3]


def _decode(
    output: NDArray[Any], layout: YoloLayout, conf: float, num_classes: int | None
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], int, str]:
    """Boxes, scores, class ids, the class count (-1: unknown) and the layout found."""
    rows, layout = _rows(output, layout, num_classes)
    if layout == "end2end":
        return (*_end2end(rows, conf, num_classes), layout)
    classes = rows.shape[1] - (5 if layout == "v5" else 4)
    if layout == "v5":
        # Objectness first: it discards most rows before the class scores are touched.
        rows = rows[rows[:, 4] >= conf]
        cls_scores = rows[:, 5:] * rows[:, 4:5]
        class_ids = cls_scores.argmax(axis=1)
        scores = cls_scores[np.arange(len(class_ids)), class_ids]
        keep = scores >= conf
        rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
    else:
        # Work on the (4 + C, N) array as it is: a max over its contiguous rows is several
        # times faster than an argmax across the transposed view, then only the few
        # candidates over the threshold need their class.
        columns = rows.T
        best = columns[4:].max(axis=0)
        picked = np.flatnonzero(best >= conf)
        scores = best[picked]
        class_ids = columns[4:, picked].argmax(axis=0)
        rows = columns[:4, picked].T
    boxes = np.empty((len(rows), 4), np.float32)
    half_w, half_h = rows[:, 2] / 2, rows[:, 3] / 2
    boxes[:, 0] = rows[:, 0] - half_w
    boxes[:, 1] = rows[:, 1] - half_h
    boxes[:, 2] = rows[:, 0] + half_w
    boxes[:, 3] = rows[:, 1] + half_h
    return boxes, scores.astype(np.float32), class_ids.astype(np.int64), classes, layout


def _end2end(
    rows: NDArray[Any], conf: float, num_classes: int | None
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], int]:
    # No NMS comes after to drop a non-finite row, as it does for v5/v8: left in, a NaN box
    # or score makes the record unencodable as JSON, an infinite corner is clipped into a
    # box across the frame, and a NaN class id would pass for a v5 output's score column.
    rows = rows[np.isfinite(rows).all(axis=1) & (rows[:, 4] >= conf)]
    ids = rows[:, 5]
    # A v5 output of one class has six columns too: its sixth is a score, not a class id.
    if len(ids) and (np.any(ids < 0) or np.any(ids != np.round(ids))):
        raise ValueError(
            "this (N, 6) output's sixth column is not whole class ids, so it is not an "
            "end-to-end output: pass layout='v5' for a one-class YOLOv5 model"
        )
    # Checked as floats: an id past int64's range (1e20) casts to a negative garbage id.
    if num_classes is not None and len(ids) and ids.max() >= num_classes:
        raise ValueError(f"class id {ids.max():g} in an output of {num_classes} classes")
    class_ids = ids.astype(np.int64)
    boxes = np.ascontiguousarray(rows[:, :4], np.float32)
    classes = -1 if num_classes is None else num_classes
    return boxes, rows[:, 4].astype(np.float32), class_ids, classes


# ---- non-maximum suppression -----------------------------------------------------------------


def _nms_numpy(boxes: NDArray[Any], scores: NDArray[Any], iou: float, max_det: int) -> Any:
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def nms(
    boxes: NDArray[Any],
    scores: NDArray[Any],
    class_ids: NDArray[Any],
    *,
    iou: float = 0.45,
    max_det: int = 300,
    backend: NmsBackend = "opencv",
) -> NDArray[np.int64]:
    """Class-aware non-maximum suppression: indices of the boxes kept, best score first.

    A box is dropped when it overlaps a better-scoring box *of the same class* by more than
    ``iou`` (intersection over union); boxes of different classes never suppress each other.
    ``backend="opencv"`` (default) uses ``cv2.dnn.NMSBoxesBatched``; ``"numpy"`` gives the same
    result and measured 1.5-12x slower from 10 to 5000 candidates (``python -m
    benchmarks.detect``). A box with no area overlaps nothing. A candidate with a NaN or
    infinite coordinate or score is not a detection and is dropped.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    _check_choice("backend", backend, NmsBackend)
    # Left in, one non-finite box would poison the class offsets and the IoUs below and
    # suppress every other box of the frame.
    candidates = np.flatnonzero(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
    if not len(candidates):
        return np.zeros(0, np.int64)
    if backend == "opencv":
        import cv2

        # OpenCV takes two boxes of no area for identical (IoU 1, whatever their classes and
        # places); they overlap nothing, so they bypass it: never suppressed, suppressing none.
        b = boxes[candidates]
        solid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        idx = candidates[solid]
        xywh = boxes[idx].astype(np.float64)
        if len(xywh):
            # OpenCV separates the classes by offsets sized from the largest coordinate, as if
            # none were negative: a box past the top-left edge would reach into the previous
            # class's region. Moving every box by the same amount changes no IoU.
            xywh -= min(xywh[:, :2].min(), 0.0)
        xywh[:, 2:] -= xywh[:, :2]
        found = cv2.dnn.NMSBoxesBatched(
            xywh, scores[idx], class_ids[idx].astype(np.int32), -np.inf, iou
        )
        kept = np.sort(
            np.concatenate([idx[np.asarray(found, np.int64).reshape(-1)], candidates[~solid]])
        )
        return kept[np.argsort(-scores[kept], kind="stable")][:max_det]
    # One pass for all classes: shifting each class's boxes into a region of its own makes
    # boxes of different classes disjoint. In float64: float32 would round a shifted box to
    # 1/8 px from class ~1000 (LVIS), enough to turn the decision on small boxes.
    boxes = boxes[candidates].astype(np.float64)
    span = float(np.abs(boxes).max()) * 2 + 1
    shifted = boxes + (class_ids[candidates].astype(np.float64) * span)[:, None]
    return candidates[_nms_numpy(shifted, scores[candidates], iou, max_det)]


# ---- the record ------------------------------------------------------------------------------


def _name(names: Sequence[str] | None, class_id: int) -> str:
    if names is not None and 0 <= class_id < len(names):
        return names[class_id]
    return f"class{class_id}"


def detections_record(
    boxes: NDArray[Any],
    scores: NDArray[Any],
    class_ids: NDArray[Any],
    frame_hw: tuple[int, int],
    names: Sequence[str] | None = None,
) -> Detections:
    """The JSON-able :data:`Detections` record (coordinates rounded to 0.01 px)."""
    ids = [int(c) for c in np.asarray(class_ids).reshape(-1)]
    return {
        "boxes": np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 2).tolist(),
        "scores": [round(float(s), 4) for s in np.asarray(scores).reshape(-1)],
        "class_ids": ids,
        "names": [_name(names, c) for c in ids],
        "width": int(frame_hw[1]),
        "height": int(frame_hw[0]),
    }


def _default_names(names: Sequence[str] | None, classes: int) -> Sequence[str] | None:
    return names if names is not None else (COCO_NAMES if classes == 80 else None)


def _check_choice(name: str, value: str, choices: Any) -> None:
    """``value`` is one of the ``Literal`` ``choices``, else a ValueError that names them."""
    allowed = get_args(choices)
    if value not in allowed:
        listed = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
        raise ValueError(f"{name} must be {listed}, got {value!r}")


def _check_thresholds(conf: float, iou: float, max_det: int) -> None:
    if not 0 <= conf <= 1:
        raise ValueError(f"conf must be in [0, 1], got {conf!r}")
    if not 0 <= iou <= 1:
        raise ValueError(f"iou must be in [0, 1], got {iou!r}")
    if max_det < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det!r}")


class YoloDecode(Processor):
    """Processor: a YOLO model's raw output -> :data:`Detections` (decode, NMS, map back).

    The last step of a split deployment (preprocess on a fog node, inference elsewhere):
    ``Compose(OnnxInference(path), YoloDecode(frame_hw=(720, 1280)))``. The output carries
    no frame size, so pass the cameras' ``frame_hw`` (and the preprocessing's ``size``,
    ``stride``, ``scaleup``) to get frame pixels; without it the boxes stay in model-input
    pixels and the record's size is the model's. ``names`` default to COCO's for an
    80-class output.
    """

    def __init__(
        self,
        size: Shape = 640,
        *,
        frame_hw: tuple[int, int] | None = None,
        stride: int | None = None,
        scaleup: bool = True,
        layout: YoloLayout = "auto",
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        names: Sequence[str] | None = None,
        nms_backend: NmsBackend = "opencv",
    ) -> None:
        _check_thresholds(conf, iou, max_det)
        # Here, not at the first frame: there a typo fails every frame, or the workers' setup.
        _check_choice("layout", layout, YoloLayout)
        _check_choice("nms_backend", nms_backend, NmsBackend)
        self.size = _as_hw(size, "size")
        self.params = (
            None
            if frame_hw is None
            else letterbox_params(frame_hw, self.size, stride=stride, scaleup=scaleup)
        )
        self.layout, self.conf, self.iou, self.max_det = layout, conf, iou, max_det
        self.names = tuple(names) if names is not None else None
        self.nms_backend = nms_backend

    def decode(self, output: NDArray[Any], params: LetterboxParams | None) -> Detections:
        """Detections in ``output``, mapped to the frame of ``params`` (None: model pixels)."""
        num_classes = len(self.names) if self.names is not None else None
        boxes, scores, class_ids, classes, layout = _decode(
            output, self.layout, self.conf, num_classes
        )
        if layout == "end2end":  # the model suppressed them already
            keep = np.argsort(-scores, kind="stable")[: self.max_det]
        else:
            keep = nms(
                boxes,
                scores,
                class_ids,
                iou=self.iou,
                max_det=self.max_det,
                backend=self.nms_backend,
            )
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        frame_hw = self.size
        if params is not None:
            boxes = scale_boxes(boxes, params)  # letterbox pixels -> frame pixels, clipped
            frame_hw = params.src_hw
            # Clipping flattens a box that lay wholly in the padding: it is not on the frame.
            on_frame = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, class_ids = boxes[on_frame], scores[on_frame], class_ids[on_frame]
        names = _default_names(self.names, classes)
        return detections_record(boxes, scores, class_ids, frame_hw, names)

    def process(self, data: NDArray[Any]) -> Detections:
        return self.decode(data, self.params)


class YoloDetect(Processor):
    """Processor: a JPEG/PNG frame (or a BGR uint8 array) -> :data:`Detections`, in one step.

    Decode + letterbox (through :class:`~processors.YoloPreprocess`, so any speed-up there
    applies here), ONNX Runtime inference (:class:`~processors.OnnxInference`: opened once per
    worker, ``threads`` intra-op threads), decoding and class-aware NMS (:class:`YoloDecode`),
    boxes mapped back to the frame. In a ``ParallelConsumer`` the JPEG goes to the worker
    through shared memory and only the small record comes back: one round trip per frame.

    ``size`` defaults to the model's own input size when it is fixed (else 640); ``names``
    to the model's metadata, else COCO's for an 80-class model. ``reduced_decode=False``
    forces the full-size JPEG decode (see :class:`~processors.YoloPreprocess`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        size: Shape | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        layout: YoloLayout = "auto",
        names: Sequence[str] | None = None,
        threads: int = 1,
        stride: int | None = None,
        nms_backend: NmsBackend = "opencv",
        reduced_decode: bool = True,
    ) -> None:
        _check_thresholds(conf, iou, max_det)
        # Here, not at the first frame: there a typo fails every frame, or the workers' setup.
        _check_choice("layout", layout, YoloLayout)
        _check_choice("nms_backend", nms_backend, NmsBackend)
        self.inference = OnnxInference(model, threads=threads)
        self.size = None if size is None else _as_hw(size, "size")
        self.conf, self.iou, self.max_det, self.layout = conf, iou, max_det, layout
        self.names = tuple(names) if names is not None else None
        self.stride = stride
        self.nms_backend = nms_backend
        self.reduced_decode = reduced_decode
        self._pre: YoloPreprocess | None = None
        self._pre_frame: YoloPreprocess | None = None
        self._decode: YoloDecode | None = None

    def __repr__(self) -> str:
        return f"YoloDetect({self.inference.model!r}, conf={self.conf}, iou={self.iou})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pre": None, "_pre_frame": None, "_decode": None}

    def setup(self) -> None:
        self.inference.setup()
        spec = self.inference.input
        assert spec is not None
        if len(spec.shape) != 4 or spec.shape[1] not in (3, None):
            raise ValueError(f"YoloDetect needs an NCHW 3-channel model input, got {spec.shape}")
        if spec.dtype != np.float32:
            raise ValueError(f"YoloDetect feeds float32 tensors; the model takes {spec.dtype}")
        model_hw = spec.shape[2:]
        size = self.size
        if size is None:
            size = (model_hw[0], model_hw[1]) if None not in model_hw else (640, 640)
        elif None not in model_hw and tuple(size) != model_hw:
            raise ValueError(f"size {size} differs from the model's input {model_hw}")
        names = self.names if self.names is not None else self.inference.class_names()
        self._pre = YoloPreprocess(
            size,
            decode=True,
            batch_dim=True,
            stride=self.stride,
            reduced_decode=self.reduced_decode,
        )
        self._pre_frame = YoloPreprocess(size, batch_dim=True, stride=self.stride)
        self._decode = YoloDecode(
            size,
            layout=self.layout,
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            names=names,
            nms_backend=self.nms_backend,
        )

    def teardown(self) -> None:
        self.inference.teardown()

    def process(self, data: Any) -> Detections:
        if self._pre is None:
            self.setup()
        assert self._pre is not None and self._pre_frame is not None and self._decode is not None
        frame = isinstance(data, np.ndarray) and data.ndim == 3
        # The tensor lands in the task's shared-memory slot when it has room (output_array).
        tensor, params = (self._pre_frame if frame else self._pre).process_with_params(data)
        (output, *_) = self.inference.run(tensor)
        return self._decode.decode(output, params)
