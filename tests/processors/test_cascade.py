"""The packaged detector (scikit-image's LBP face cascade) finds the face known to be in the
packaged photograph, in frame pixels, also after the frame was panned, zoomed and made 16:9."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from processors import FaceCascade, encode_jpeg

data = pytest.importorskip("skimage.data")

# Where the astronaut's face is in skimage.data.astronaut() (512x512), read off the picture.
FACE = np.array([180, 70, 268, 162], np.float64)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def test_finds_the_face_in_the_packaged_photograph(astronaut) -> None:
    record = FaceCascade().process(encode_jpeg(astronaut))
    assert (record["width"], record["height"]) == (512, 512)
    assert len(record["boxes"]) == 1, record
    assert _iou(record["boxes"][0], FACE) > 0.6, record
    assert record["names"] == ["face"] and record["class_ids"] == [0]


def test_finds_the_face_in_a_zoomed_16_by_9_view(astronaut) -> None:
    # A camera view: the crop (x 60..460, y 20..245) scaled to 1280x720 (3.2x).
    x0, y0, scale = 60, 20, 3.2
    view = cv2.resize(astronaut[y0 : y0 + 225, x0 : x0 + 400], (1280, 720))
    expected = (FACE - [x0, y0, x0, y0]) * scale
    record = FaceCascade().process(view)
    assert (record["width"], record["height"]) == (1280, 720)
    assert len(record["boxes"]) == 1, record
    assert _iou(record["boxes"][0], expected) > 0.6, (record, expected)


def test_no_face_no_box() -> None:
    blank = np.full((360, 640, 3), 90, np.uint8)
    assert FaceCascade().process(blank)["boxes"] == []


def test_a_one_pixel_high_strip_is_searched_not_refused() -> None:
    # 1200 wide is searched at 480: its height, 0.4 px, must stay one pixel, not become 0.
    strip = np.full((1, 1200, 3), 90, np.uint8)
    for frame in (strip, encode_jpeg(strip)):
        record = FaceCascade().process(frame)
        assert (record["width"], record["height"], record["boxes"]) == (1200, 1, [])


class _WholeImage:
    """A stand-in cascade that finds one "face" covering the whole search image."""

    def detect_multi_scale(self, img: np.ndarray, **_: object) -> list[dict[str, int]]:
        return [{"r": 0, "c": 0, "height": img.shape[0], "width": img.shape[1]}]


@pytest.mark.parametrize("hw", [(5, 1000), (722, 1280), (300, 400)])
def test_boxes_map_back_with_each_axis_own_scale(hw) -> None:
    # 5x1000 is searched at 2x480: its height's scale is 2/5, not 480/1000.
    cascade = FaceCascade()
    cascade._cascade = _WholeImage()
    record = cascade.process(np.full((*hw, 3), 90, np.uint8))
    np.testing.assert_allclose(record["boxes"], [[0, 0, hw[1], hw[0]]])
