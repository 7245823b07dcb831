"""YOLO output decoding, class-aware NMS, mapping back to the frame, and the fused detector,
checked against tiny ONNX models whose outputs are known."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from onnx_models import constant_model, square_finder

from processors import (
    COCO_NAMES,
    Compose,
    OnnxInference,
    YoloDecode,
    YoloDetect,
    YoloPreprocess,
    decode_yolo,
    encode_jpeg,
    letterbox_params,
    nms,
)

# Candidates in model pixels (640x640): cx, cy, w, h, then per class scores.
# 0 and 1 overlap heavily, same class (1 must go); 2 overlaps 0 as much but is another class
# (it stays); 3 is below the threshold.
_BOXES = np.array(
    [[320, 320, 100, 100], [325, 322, 100, 100], [322, 318, 100, 100], [100, 100, 40, 40]],
    np.float32,
)
_CLASS = [0, 0, 1, 0]
_SCORE = [0.9, 0.8, 0.7, 0.1]


def _v8_output(classes: int = 3) -> np.ndarray:
    out = np.zeros((1, 4 + classes, len(_BOXES)), np.float32)
    out[0, :4] = _BOXES.T
    for i, (c, s) in enumerate(zip(_CLASS, _SCORE, strict=True)):
        out[0, 4 + c, i] = s
        out[0, 4 + (c + 1) % classes, i] = s / 3  # a weaker second class: argmax must pick c
    return out


def _v5_output(classes: int = 3) -> np.ndarray:
    # Objectness 0.9 and class score s / 0.9: the product is the same s as in the v8 output.
    out = np.zeros((1, len(_BOXES), 5 + classes), np.float32)
    out[0, :, :4] = _BOXES
    out[0, :, 4] = 0.9
    for i, (c, s) in enumerate(zip(_CLASS, _SCORE, strict=True)):
        out[0, i, 5 + c] = s / 0.9
        out[0, i, 5 + (c + 1) % classes] = s / 3
    return out


def _xyxy(i: int) -> list[float]:
    cx, cy, w, h = _BOXES[i]
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.mark.parametrize("layout", ["auto", "explicit"])
@pytest.mark.parametrize("make", [_v5_output, _v8_output], ids=["v5", "v8"])
def test_decode_finds_the_candidates_above_the_threshold(make, layout) -> None:
    output = make()
    name = "v5" if make is _v5_output else "v8"
    boxes, scores, class_ids = decode_yolo(
        output, layout=name if layout == "explicit" else "auto", conf=0.25
    )
    order = np.argsort(-scores)
    np.testing.assert_allclose(boxes[order], [_xyxy(i) for i in range(3)], atol=1e-4)
    np.testing.assert_allclose(scores[order], [0.9, 0.8, 0.7], rtol=1e-6)
    assert sorted(class_ids.tolist()) == [0, 0, 1]


def test_auto_layout_uses_the_class_count_and_refuses_a_square_output() -> None:
    # 85 columns and 85 rows: only the class count tells a v5 (80 classes) from a v8 (81).
    square = np.zeros((85, 85), np.float32)
    with pytest.raises(ValueError, match="cannot tell"):
        decode_yolo(square)
    assert decode_yolo(square, num_classes=80)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="classes"):
        decode_yolo(_v8_output(3), layout="v8", num_classes=4)


def test_nms_suppresses_overlaps_within_a_class_only() -> None:
    boxes = np.array([_xyxy(i) for i in range(3)], np.float32)
    scores = np.array(_SCORE[:3], np.float32)
    for backend in ("numpy", "opencv"):
        keep = nms(boxes, scores, np.array(_CLASS[:3]), iou=0.45, backend=backend)
        assert keep.tolist() == [0, 2], backend  # 1 suppressed by 0; 2 is another class
        # All one class: 2 overlaps 0 too and goes.
        assert nms(boxes, scores, np.zeros(3), iou=0.45, backend=backend).tolist() == [0]
        # A loose threshold keeps everything, best first.
        assert nms(boxes, scores[::-1].copy(), np.zeros(3), iou=0.99, backend=backend).tolist() == [
            2,
            1,
            0,
        ]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).shape == (0,)
    assert len(nms(boxes, scores, np.array([0, 1, 2]), max_det=2)) == 2


def test_numpy_and_opencv_nms_agree_on_random_boxes() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 600, (400, 2))
    boxes = np.hstack([xy, xy + rng.uniform(10, 120, (400, 2))]).astype(np.float32)
    scores = rng.uniform(0.25, 1, 400).astype(np.float32)
    classes = rng.integers(0, 5, 400)
    a = nms(boxes, scores, classes, backend="numpy")
    b = nms(boxes, scores, classes, backend="opencv")
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("frame_hw", [(720, 1280), (1080, 810), (480, 640)])
def test_decode_maps_boxes_back_to_non_square_frames(frame_hw) -> None:
    height, width = frame_hw
    params = letterbox_params(frame_hw, 640)
    # A box given in frame pixels, placed in model pixels as the letterbox would put it.
    x1, y1, x2, y2 = 0.2 * width, 0.3 * height, 0.6 * width, 0.9 * height
    sx, sy = params.new_unpad_wh[0] / width, params.new_unpad_wh[1] / height
    mx1, mx2 = x1 * sx + params.pad_left, x2 * sx + params.pad_left
    my1, my2 = y1 * sy + params.pad_top, y2 * sy + params.pad_top
    # A box across the frame's top-left corner comes back clipped to the frame; one wholly
    # in the padding (where the frame has no pixels) is dropped.
    left, top = params.pad_left, params.pad_top
    out = np.zeros((1, 5, 3), np.float32)
    out[0, :, 0] = [(mx1 + mx2) / 2, (my1 + my2) / 2, mx2 - mx1, my2 - my1, 0.9]
    out[0, :, 1] = [left + 10, top + 10, 60, 60, 0.8]
    out[0, :, 2] = [left / 2, top / 2, left / 4 + 0.5, top / 4 + 0.5, 0.7]
    record = YoloDecode(640, frame_hw=frame_hw, names=["thing"]).process(out)
    assert (record["width"], record["height"]) == (width, height)
    np.testing.assert_allclose(record["boxes"][0], [x1, y1, x2, y2], atol=0.05)
    np.testing.assert_allclose(record["boxes"][1], [0, 0, 40 / sx, 40 / sy], atol=0.05)
    assert len(record["boxes"]) == 2, record
    assert record["names"] == ["thing", "thing"]


def test_decode_without_frame_size_keeps_model_pixels_and_names_coco_classes() -> None:
    out = np.zeros((1, 84, 1), np.float32)
    out[0, :4, 0] = [320, 320, 64, 32]
    out[0, 4 + 16, 0] = 0.75  # COCO class 16
    record = YoloDecode(640).process(out)
    assert record == {
        "boxes": [[288.0, 304.0, 352.0, 336.0]],
        "scores": [0.75],
        "class_ids": [16],
        "names": [COCO_NAMES[16]],
        "width": 640,
        "height": 640,
    }
    assert COCO_NAMES[16] == "dog"
    json.dumps(record)  # what the node's codec sends


@pytest.mark.parametrize("make", [_v5_output, _v8_output], ids=["v5", "v8"])
def test_yolo_detect_runs_a_fixed_output_model_end_to_end(make) -> None:
    # The model always answers the same (model pixels); on a 1280x720 frame the letterbox
    # scale is 0.5 and the padding 140 px on top, so frame box = (model box - pad) / 0.5.
    det = YoloDetect(constant_model(make(), make.__name__), names=["a", "b", "c"], conf=0.25)
    frame = np.zeros((720, 1280, 3), np.uint8)
    record = det.process(encode_jpeg(frame))
    kept = [0, 2]  # 1 suppressed by 0 (same class), 3 below the threshold
    expected = [
        [(x - 0) / 0.5 if k % 2 == 0 else (x - 140) / 0.5 for k, x in enumerate(_xyxy(i))]
        for i in kept
    ]
    np.testing.assert_allclose(record["boxes"], expected, atol=0.05)
    assert record["class_ids"] == [0, 1]
    assert record["names"] == ["a", "b"]
    assert (record["width"], record["height"]) == (1280, 720)


def _end2end_output(rows: int = 300) -> np.ndarray:
    # YOLOv10-style final detections, padded with zero rows up to max_det: x1, y1, x2, y2,
    # score, class id. Rows 0 and 1 overlap heavily in one class: the model kept both, so
    # both must stay (no NMS on top of the model's own).
    out = np.zeros((1, rows, 6), np.float32)
    for i in range(4):
        out[0, i] = [*_xyxy(i), _SCORE[i], _CLASS[i] + 2]
    return out


@pytest.mark.parametrize("layout", ["auto", "end2end"])
def test_end2end_output_is_read_as_final_detections(layout) -> None:
    boxes, scores, class_ids = decode_yolo(_end2end_output(), layout=layout, conf=0.25)
    np.testing.assert_allclose(boxes, [_xyxy(i) for i in range(3)], atol=1e-4)
    np.testing.assert_allclose(scores, _SCORE[:3], rtol=1e-6)
    assert class_ids.tolist() == [2, 2, 3]
    # Known class names decide nothing here: 6 columns of few rows are end-to-end.
    assert len(decode_yolo(_end2end_output(), num_classes=80)[0]) == 3

    record = YoloDecode(640, layout=layout, conf=0.25, max_det=2).process(_end2end_output())
    assert record["scores"] == [0.9, 0.8]  # best first, cut at max_det, none suppressed
    assert record["class_ids"] == [2, 2]
    assert record["names"] == ["class2", "class2"]  # no guessing COCO for unknown classes
    named = YoloDecode(640, names=COCO_NAMES, conf=0.25).process(_end2end_output())
    assert named["names"] == [COCO_NAMES[2], COCO_NAMES[2], COCO_NAMES[3]]


def test_a_one_class_v5_output_of_few_rows_is_refused_not_misread() -> None:
    # Six columns and few rows, but the sixth column is a class score: a one-class v5 model
    # on a tiny input. Read as end-to-end it would give wrong boxes; auto says so instead.
    out = np.zeros((1, len(_BOXES), 6), np.float32)
    out[0, :, :4] = _BOXES
    out[0, :, 4:] = [0.9, 0.6]
    with pytest.raises(ValueError, match="layout='v5'"):
        decode_yolo(out)
    boxes, scores, _ = decode_yolo(out, layout="v5", conf=0.25)
    assert len(boxes) == len(_BOXES) and np.allclose(scores, 0.54)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        decode_yolo(_v8_output(3), layout="end2end")
    with pytest.raises(ValueError, match="class id 3"):
        decode_yolo(_end2end_output(), num_classes=3)


def test_yolo_detect_runs_an_end2end_model() -> None:
    det = YoloDetect(constant_model(_end2end_output(), "end2end"), names=["a", "b", "c", "d"])
    record = det.process(encode_jpeg(np.zeros((720, 1280, 3), np.uint8)))
    # Letterbox scale 0.5, 140 px of padding on top: frame box = (model box - pad) / 0.5.
    expected = [
        [(x - 0) / 0.5 if k % 2 == 0 else (x - 140) / 0.5 for k, x in enumerate(_xyxy(i))]
        for i in range(3)
    ]
    np.testing.assert_allclose(record["boxes"], expected, atol=0.05)
    assert record["names"] == ["c", "c", "d"]


@pytest.mark.parametrize("frame_hw", [(720, 1280), (900, 500)])
def test_yolo_detect_box_follows_what_the_model_sees(frame_hw) -> None:
    # A model that really looks: the box around the red pixels. Through JPEG, letterbox,
    # inference and the mapping back, the box lands on the rectangle drawn in the frame.
    height, width = frame_hw
    det = YoloDetect(square_finder(), conf=0.5)
    for x1, y1, x2, y2 in [(100, 60, 260, 200), (width - 200, height - 150, width, height)]:
        frame = np.full((height, width, 3), 30, np.uint8)
        cv2.rectangle(frame, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 255), -1)
        record = det.process(encode_jpeg(frame, 95))
        assert len(record["boxes"]) == 1
        # One model pixel is 1/ratio frame pixels: the tolerance the letterbox allows.
        tol = 1.5 / letterbox_params(frame_hw, 640).ratio
        np.testing.assert_allclose(record["boxes"][0], [x1, y1, x2, y2], atol=tol)
    empty = det.process(np.full((height, width, 3), 30, np.uint8))
    assert empty["boxes"] == [] and empty["scores"] == []


def test_yolo_detect_rejects_a_size_the_model_does_not_take() -> None:
    det = YoloDetect(square_finder(), size=320)
    with pytest.raises(ValueError, match="differs from the model"):
        det.setup()


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="conf"):
        YoloDecode(conf=1.5)
    with pytest.raises(ValueError, match="iou"):
        YoloDecode(iou=-0.1)


@pytest.mark.timeout(30)
def test_layout_and_nms_backend_are_checked_when_the_processor_is_made() -> None:
    # Not at the first frame, where a typo would fail every frame or the workers' setup.
    model = constant_model(_end2end_output(), "end2end")
    for make in (YoloDecode, lambda **kw: YoloDetect(model, **kw)):
        with pytest.raises(ValueError, match="layout"):
            make(layout="v7")
        with pytest.raises(ValueError, match="nms_backend"):
            make(nms_backend="cuda")


@pytest.mark.timeout(30)
def test_an_end2end_class_id_past_int64_is_refused_not_wrapped() -> None:
    out = _end2end_output()
    out[0, 0, 5] = 1e20  # cast to int64 it turns negative and passed the class count check
    with pytest.raises(ValueError, match="class id 1e\\+20 in an output of 80 classes"):
        decode_yolo(out, layout="end2end", conf=0.25, num_classes=80)


def test_split_steps_give_the_fused_detectors_record() -> None:
    # Fog node: YoloPreprocess; inference node: OnnxInference then YoloDecode with the
    # cameras' frame size. Same frame, same record as YoloDetect in one step.
    model = square_finder()
    frame = np.full((720, 1280, 3), 30, np.uint8)
    cv2.rectangle(frame, (900, 500), (1099, 649), (0, 0, 255), -1)
    jpeg = encode_jpeg(frame, 95)
    fog = YoloPreprocess(640, decode=True)
    cloud = Compose(OnnxInference(model), YoloDecode(640, frame_hw=(720, 1280), conf=0.5))
    split = cloud.process(fog.process(jpeg))
    assert split == YoloDetect(model, conf=0.5).process(jpeg)
    np.testing.assert_allclose(split["boxes"], [[900, 500, 1100, 650]], atol=3)


# ---- NMS edge cases, against first-principles IoU --------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_nms_never_lets_a_box_off_the_top_left_edge_suppress_another_class(backend) -> None:
    # Class 0 near the bottom-right corner; class 1 sticking out past the top-left corner
    # (YOLO boxes do extend past the image). They do not overlap at all: both stay.
    boxes = np.array([[89, 89, 100, 100], [-10, -10, 1, 1]], np.float32)
    assert _iou(boxes[0], boxes[1]) == 0
    keep = nms(boxes, np.array([0.9, 0.8]), np.array([0, 1]), iou=0.45, backend=backend)
    assert keep.tolist() == [0, 1]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_nms_keeps_disjoint_zero_area_boxes(backend) -> None:
    # Two degenerate boxes far apart (IoU 0 by any definition) and a normal box.
    boxes = np.array([[0, 0, 0, 10], [50, 50, 50, 60], [100, 100, 110, 110]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]), backend=backend)
    assert keep.tolist() == [0, 1, 2]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["numpy", "opencv"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_box_does_not_wipe_out_the_other_detections(backend, bad) -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [100, 100, 120, 120], [200, 200, 210, bad], [300, 300, 310, 310]],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.95, 0.7], np.float32)
    keep = nms(boxes, scores, np.array([0, 0, 1, 2]), backend=backend)
    assert keep.tolist() == [0, 1, 3]  # the finite boxes overlap nothing


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_decode_drops_a_candidate_with_a_nan_box_and_keeps_the_rest(backend) -> None:
    out = np.zeros((1, 6, 8400), np.float32)  # v8, 2 classes
    out[0, :5, 0] = [50, 50, 20, 20, 0.9]
    out[0, :5, 1] = [300, 300, 20, 20, 0.8]
    out[0, :4, 2] = [np.nan, 400, 20, 20]
    out[0, 5, 2] = 0.95
    for frame_hw in (None, (640, 640)):
        rec = YoloDecode(640, frame_hw=frame_hw, nms_backend=backend).process(out)
        assert rec["boxes"] == [[40, 40, 60, 60], [290, 290, 310, 310]]
        assert rec["scores"] == [0.9, 0.8]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("class_id", [0, 79, 1200])
def test_numpy_nms_decision_does_not_depend_on_the_class_id(class_id) -> None:
    # Small boxes with IoU 0.428, clearly under 0.45: kept whatever their class (LVIS has
    # 1203 classes; the class offset must not cost the coordinates their precision).
    boxes = np.array([[453.4, 147.8, 456.3, 154.3], [453.9, 147.6, 455.2, 154.8]])
    assert _iou(boxes[0], boxes[1]) == pytest.approx(0.4276, abs=1e-3)
    for backend in ("numpy", "opencv"):
        keep = nms(boxes, np.array([0.9, 0.8]), np.full(2, class_id), backend=backend)
        assert keep.tolist() == [0, 1], backend


@pytest.mark.timeout(30)
@pytest.mark.parametrize("column", [0, 2, 4, 5])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_end2end_drops_a_non_finite_row_and_keeps_the_rest(column, bad) -> None:
    # No NMS follows an end-to-end output to drop it: a NaN/inf corner, score or class id
    # must not reach the record (JSON refuses NaN; an infinite corner would be clipped into
    # a box across the frame) nor fail the frame, nor take a max_det slot.
    out = _end2end_output()
    out[0, 0, column] = bad
    boxes, _, class_ids = decode_yolo(out, layout="end2end", conf=0.25)
    np.testing.assert_allclose(boxes, [_xyxy(1), _xyxy(2)], atol=1e-4)
    assert class_ids.tolist() == [2, 3]
    for frame_hw in (None, (640, 640)):
        rec = YoloDecode(640, frame_hw=frame_hw, conf=0.25, max_det=2).process(out)
        assert rec["scores"] == [0.8, 0.7]
        json.dumps(rec, allow_nan=False)  # what the node's JSON codec sends
