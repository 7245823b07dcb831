"""A real pretrained detector with no download: frontal faces with a packaged LBP cascade.

The cascade (OpenCV's ``lbpcascade_frontalface``) ships inside scikit-image
(``skimage.data.lbp_frontal_face_cascade_filename()``), and so does a photograph to run it on
(``skimage.data.astronaut()``); ``pip install fogverse[demo]`` brings both. OpenCV 5 itself
no longer ships cascades or the HOG people detector.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from fogverse.processor import Processor

from .detect import Detections, detections_record, nms
from .image import decode_image, decode_image_sized

__all__ = ["FaceCascade"]


class FaceCascade(Processor):
    """Processor: a frame (JPEG/PNG bytes or BGR uint8 array) -> :data:`Detections` of faces.

    The frame is searched at ``detect_width`` pixels wide (smaller is faster; faces must then
    be at least ``min_size`` there) and the boxes are mapped back to the frame. The cascade
    gives no confidence: every score is 1.0 and every name is ``"face"``. ``min_neighbours``
    is how many overlapping raw hits a face needs (more: fewer false positives); hits left
    overlapping by more than ``iou`` are merged by non-maximum suppression.

    Encoded JPEG frames decode straight at the 1/2, 1/4 or 1/8 DCT scale that still covers
    the search width (:func:`~processors.image.decode_image_sized`: a 720p frame searched at
    480 wide decodes at 640x360); ``reduced_decode=False`` forces the full-size decode. The
    boxes found differ little (``tests/processors/test_reduced_decode.py`` measures them).
    """

    def __init__(
        self,
        *,
        detect_width: int = 480,
        min_size: int = 32,
        max_size: int = 240,
        scale_factor: float = 1.2,
        min_neighbours: int = 4,
        iou: float = 0.3,
        reduced_decode: bool = True,
    ) -> None:
        if detect_width < min_size or min_size < 1 or max_size < min_size:
            raise ValueError("need 1 <= min_size <= max_size and min_size <= detect_width")
        if scale_factor <= 1:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor!r}")
        self.detect_width = detect_width
        self.min_size, self.max_size = min_size, max_size
        self.scale_factor = scale_factor
        self.min_neighbours = min_neighbours
        self.iou = iou
        self.reduced_decode = reduced_decode
        self._cascade: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cascade": None}

    def __repr__(self) -> str:
        return f"FaceCascade(detect_width={self.detect_width})"

    def setup(self) -> None:
        try:
            from skimage import data
            from skimage.feature import Cascade
        except ImportError as exc:
            raise ImportError("FaceCascade needs scikit-image: pip install fogverse[demo]") from exc
        self._cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def _search_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        height, width = hw
        scale = min(1.0, self.detect_width / width)
        # At least a pixel: a wide strip's height must not round to an empty image.
        return max(1, round(height * scale)), max(1, round(width * scale))

    def process(self, data: Any) -> Detections:
        if self._cascade is None:
            self.setup()
        if isinstance(data, np.ndarray) and data.ndim == 3:
            frame, (height, width) = data, data.shape[:2]
        elif self.reduced_decode:
            frame, (height, width) = decode_image_sized(data, self._search_hw)
        else:
            frame = decode_image(data)
            height, width = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        size = self._search_hw((height, width))[::-1]
        if gray.shape[:2] != size[::-1]:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        found = self._cascade.detect_multi_scale(
            img=gray,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(self.min_size, self.min_size),
            max_size=(self.max_size, self.max_size),
            min_neighbor_number=self.min_neighbours,
        )
        boxes = np.array(
            [[d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]] for d in found],
            np.float64,
        ).reshape(-1, 4)
        # To the ORIGINAL frame's pixels with each axis's own scale: the search size was
        # rounded per axis (a 5x1000 frame is searched at 2x480, not 2.4x480).
        boxes[:, [0, 2]] *= width / size[0]
        boxes[:, [1, 3]] *= height / size[1]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        # The cascade's grouping leaves overlapping hits of one face at neighbouring scales.
        ones, zeros = np.ones(len(boxes)), np.zeros(len(boxes), np.int64)
        keep = nms(boxes, ones, zeros, iou=self.iou)
        return detections_record(boxes[keep], ones[keep], zeros[keep], (height, width), ("face",))
