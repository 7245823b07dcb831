"""Letterbox geometry, pixels and box mapping, checked against values worked out by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import Letterbox, letterbox_boxes, letterbox_params, scale_boxes


def test_720p_to_640_geometry() -> None:
    p = letterbox_params((720, 1280), 640)
    assert p.ratio == 0.5
    assert p.new_unpad_wh == (640, 360)
    assert (p.pad_top, p.pad_bottom, p.pad_left, p.pad_right) == (140, 140, 0, 0)
    assert p.out_hw == (640, 640)
    assert p.src_hw == (720, 1280)


def test_720p_to_640_pixels(frame_720p: np.ndarray) -> None:
    out = Letterbox(640).process(frame_720p)
    assert out.shape == (640, 640, 3) and out.dtype == np.uint8
    assert (out[:140] == 114).all()
    assert (out[500:] == 114).all()
    expected = cv2.resize(frame_720p, (640, 360), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[140:500], expected)


def test_pad_value_fills_every_channel(make_frame) -> None:
    frame = make_frame(50, 100, 3)
    out = Letterbox(100, pad_value=7).process(frame)
    # 100x50 fits 100x100 unscaled: 25 rows of padding above and below.
    assert out.shape == (100, 100, 3)
    assert (out[:25] == 7).all() and (out[75:] == 7).all()
    np.testing.assert_array_equal(out[25:75], frame)


@pytest.mark.parametrize(
    ("src_hw", "new_shape", "expected"),
    [
        # 100x100 into 64 high x 75 wide: scale 0.64, 64x64 content, 11 columns of padding.
        ((100, 100), (64, 75), (0, 0, 5, 6)),
        # Transposed: 11 rows of padding, the odd row at the bottom.
        ((100, 100), (75, 64), (5, 6, 0, 0)),
        # 200x100 (h x w) into 64: scale 0.32, 32 wide content, 32 columns of padding.
        ((200, 100), 64, (0, 0, 16, 16)),
        # 10x13 into 20: scale 20/13, content 20 wide and round(15.38) = 15 high; 5 rows.
        ((10, 13), 20, (2, 3, 0, 0)),
    ],
)
def test_padding_split_odd_pixel_right_or_bottom(src_hw, new_shape, expected) -> None:
    p = letterbox_params(src_hw, new_shape)
    assert (p.pad_top, p.pad_bottom, p.pad_left, p.pad_right) == expected


def test_odd_padding_pixels(make_frame) -> None:
    frame = make_frame(100, 100, 3, seed=3)
    out = Letterbox((64, 75)).process(frame)
    assert out.shape == (64, 75, 3)
    assert (out[:, :5] == 114).all() and (out[:, 69:] == 114).all()
    np.testing.assert_array_equal(out[:, 5:69], cv2.resize(frame, (64, 64)))


@pytest.mark.parametrize(
    ("src_hw", "out_hw", "pads_tblr"),
    [
        ((720, 1280), (384, 640), (12, 12, 0, 0)),  # 640x360 content -> 384 = 12 * 32
        ((480, 640), (480, 640), (0, 0, 0, 0)),  # already a multiple of 32: no padding
        ((710, 1280), (384, 640), (14, 15, 0, 0)),  # 355 rows of content, 29 rows of padding
        ((700, 1000), (448, 640), (0, 0, 0, 0)),  # scale 0.64: 640x448
        ((1280, 720), (640, 384), (0, 0, 12, 12)),  # portrait
    ],
)
def test_stride_mode_sizes(src_hw, out_hw, pads_tblr) -> None:
    p = letterbox_params(src_hw, 640, stride=32)
    assert p.out_hw == out_hw
    assert (p.pad_top, p.pad_bottom, p.pad_left, p.pad_right) == pads_tblr


def test_stride_mode_pixels(frame_720p: np.ndarray) -> None:
    out = Letterbox(640, stride=32).process(frame_720p)
    assert out.shape == (384, 640, 3)
    assert (out[:12] == 114).all() and (out[372:] == 114).all()
    np.testing.assert_array_equal(out[12:372], cv2.resize(frame_720p, (640, 360)))


def test_scaleup_false_keeps_small_frames_unscaled(make_frame) -> None:
    frame = make_frame(240, 320, 3, seed=1)
    p = letterbox_params((240, 320), 640, scaleup=False)
    assert p.ratio == 1.0 and p.new_unpad_wh == (320, 240)
    out = Letterbox(640, scaleup=False).process(frame)
    assert out.shape == (640, 640, 3)
    # (640 - 240) / 2 = 200 rows above, (640 - 320) / 2 = 160 columns left.
    np.testing.assert_array_equal(out[200:440, 160:480], frame)
    mask = np.ones((640, 640), bool)
    mask[200:440, 160:480] = False
    assert (out[mask] == 114).all()
    # With scaleup the same frame is doubled.
    assert letterbox_params((240, 320), 640).ratio == 2.0
    small = letterbox_params((240, 320), 640, stride=32, scaleup=False)
    assert small.out_hw == (256, 320)


def test_scaleup_false_still_shrinks_large_frames() -> None:
    p = letterbox_params((720, 1280), 640, scaleup=False)
    assert p.ratio == 0.5 and p.new_unpad_wh == (640, 360)


def test_grayscale_and_single_channel(make_frame) -> None:
    gray = make_frame(720, 1280, 0)
    out = Letterbox(640).process(gray)
    assert out.shape == (640, 640)
    np.testing.assert_array_equal(out[140:500], cv2.resize(gray, (640, 360)))
    one = gray[:, :, np.newaxis]
    out1 = Letterbox(640).process(one)
    assert out1.shape == (640, 640, 1)
    np.testing.assert_array_equal(out1[..., 0], out)


def test_frame_already_at_size_is_returned_as_is(make_frame) -> None:
    frame = make_frame(640, 640, 3)
    out = Letterbox(640).process(frame)
    np.testing.assert_array_equal(out, frame)


def test_input_not_modified(frame_720p: np.ndarray) -> None:
    before = frame_720p.copy()
    Letterbox(640).process(frame_720p)  # frame_720p is read-only: a write would raise
    np.testing.assert_array_equal(frame_720p, before)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Letterbox(0)
    with pytest.raises(ValueError):
        Letterbox(640, stride=0)
    with pytest.raises(ValueError):
        letterbox_params((0, 10), 640)
    with pytest.raises(ValueError):
        Letterbox(640).process(np.zeros(5, np.uint8))


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
    new_h=st.integers(1, 1024),
    new_w=st.integers(1, 1024),
    stride=st.sampled_from([None, 8, 32, 64]),
    scaleup=st.booleans(),
)
def test_params_invariants(h, w, new_h, new_w, stride, scaleup) -> None:
    p = letterbox_params((h, w), (new_h, new_w), stride=stride, scaleup=scaleup)
    uw, uh = p.new_unpad_wh
    out_h, out_w = p.out_hw
    assert min(p.pad_left, p.pad_top, p.pad_right, p.pad_bottom) >= 0
    assert p.pad_left + uw + p.pad_right == out_w
    assert p.pad_top + uh + p.pad_bottom == out_h
    assert p.pad_right - p.pad_left in (0, 1) and p.pad_bottom - p.pad_top in (0, 1)
    assert 1 <= uw <= new_w and 1 <= uh <= new_h
    if not scaleup:
        assert uw <= w and uh <= h
    if stride is None:
        assert p.out_hw == (new_h, new_w)
    else:
        assert out_h % stride == 0 and out_w % stride == 0
        assert out_h - uh < stride and out_w - uw < stride
    # The content keeps its aspect ratio to within the rounding of one pixel per side.
    assert abs(uw - w * p.ratio) <= 0.5 + 1e-9 or uw in (1, new_w)
    assert abs(uh - h * p.ratio) <= 0.5 + 1e-9 or uh in (1, new_h)


def test_scale_boxes_by_hand() -> None:
    p = letterbox_params((720, 1280), 640)  # scale 0.5, 140 rows of padding on top
    boxes = np.array(
        [
            [0, 140, 640, 500],  # the whole content area
            [100, 150, 200, 250],
            [-10, 100, 700, 130],  # entirely in the top padding, overhanging both sides
        ],
        dtype=np.float32,
    )
    expected = np.array(
        [
            [0, 0, 1280, 720],
            [200, 20, 400, 220],
            [0, 0, 1280, 0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(scale_boxes(boxes, p), expected)
    np.testing.assert_allclose(scale_boxes(boxes, src_hw=(720, 1280), model_hw=640), expected)
    np.testing.assert_allclose(letterbox_boxes(expected[:2], p), boxes[:2])


def test_scale_boxes_keeps_extra_columns_and_input() -> None:
    p = letterbox_params((720, 1280), 640)
    dets = np.array([[100, 150, 200, 250, 0.9, 3]], dtype=np.float64)
    before = dets.copy()
    out = scale_boxes(dets, p)
    np.testing.assert_array_equal(dets, before)
    np.testing.assert_allclose(out, [[200, 20, 400, 220, 0.9, 3]])
    assert out.dtype == np.float64
    assert scale_boxes(np.array([[1, 2, 3, 4]]), p).dtype.kind == "f"
    with pytest.raises(ValueError):
        scale_boxes(np.zeros((2, 3)), p)
    with pytest.raises(TypeError):
        scale_boxes(dets)


@pytest.mark.parametrize(
    ("src_hw", "new_shape", "stride"),
    [
        ((720, 1280), 640, None),
        ((1080, 1920), 640, 32),
        ((480, 640), 640, None),
        ((333, 517), (320, 480), None),
        ((1280, 720), 416, 32),
        ((97, 1001), 640, None),
    ],
)
def test_box_round_trip(src_hw, new_shape, stride) -> None:
    rng = np.random.default_rng(42)
    h, w = src_hw
    xs = np.sort(rng.uniform(0, w, (200, 2)), axis=1)
    ys = np.sort(rng.uniform(0, h, (200, 2)), axis=1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    p = letterbox_params(src_hw, new_shape, stride=stride)
    model = letterbox_boxes(boxes, p)
    out_h, out_w = p.out_hw
    assert (model[:, [0, 2]] >= p.pad_left - 1e-6).all()
    assert (model[:, [0, 2]] <= out_w - p.pad_right + 1e-6).all()
    assert (model[:, [1, 3]] >= p.pad_top - 1e-6).all()
    assert (model[:, [1, 3]] <= out_h - p.pad_bottom + 1e-6).all()
    back = scale_boxes(model, p)
    assert np.abs(back - boxes).max() < 1.0
