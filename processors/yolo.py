"""The fused YOLO input path: (decode) -> letterbox -> RGB -> CHW -> float32 / 255."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from fogverse.parallel import output_array
from fogverse.processor import Processor

from .image import decode_image_sized
from .letterbox import LetterboxParams, Shape, _as_hw, letterbox_params
from .tensor import _float_table

__all__ = ["YoloPreprocess"]

_FULL = (1 << 30, 1 << 30)  # a target no reduced scale covers: decode at full size


@dataclass(frozen=True)
class YoloPreprocess(Processor):
    """Processor: BGR uint8 HxWx3 frame (or encoded bytes with ``decode=True``) -> model input.

    Returns a new C-contiguous float32 array of shape ``(3, H, W)``, or ``(1, 3, H, W)`` with
    ``batch_dim=True``, holding RGB values in [0, 1]; in a pool worker it is built in the
    task's shared-memory slot (:func:`fogverse.parallel.output_array`), so it travels back
    without a copy. The values are identical to::

        Compose(Letterbox(size, pad_value, stride, scaleup, interpolation),
                BGRToRGB(), HWCToCHW(), ToFloat())

    but computed with fewer passes: the frame is resized once, then each colour plane is
    converted to float through a lookup table directly into its place in the output (the
    channel swap and layout change come free with the plane order), and only the padding
    borders are filled. Use :meth:`process_with_params` when the boxes must be mapped back
    to the frame with :func:`~processors.letterbox.scale_boxes`.

    With ``decode=True`` a JPEG is decoded straight at the smallest 1/2, 1/4 or 1/8 size that
    still covers the letterboxed content (libjpeg's DCT scaling; a 720p frame for 640x640
    decodes at 640x360, and nothing is left to resize), then resized the rest of the way. The
    geometry (:meth:`process_with_params`) is still the original frame's, so boxes map back
    to its pixels. The values differ slightly from a full decode + resize: 41-44 dB PSNR on
    camera-like 720p frames (``python -m benchmarks.decoders``), i.e. a mean difference
    well under one grey level, with rare single pixels off by more at sharp edges; the boxes a
    detector finds move by at most a model pixel (``tests/processors/test_reduced_decode.py``). Set
    ``reduced_decode=False`` for the full-size decode.
    """

    size: Shape = 640
    pad_value: int = 114
    stride: int | None = None
    decode: bool = False
    batch_dim: bool = False
    scaleup: bool = True
    interpolation: int = cv2.INTER_LINEAR
    reduced_decode: bool = True
    """With ``decode``: decode a JPEG at the smallest 1/2, 1/4 or 1/8 DCT scale that still
    covers the letterboxed size, then resize the rest of the way (a 720p frame for 640x640:
    half size, about a third of a full decode's cost). False forces full-size decoding."""

    def __post_init__(self) -> None:
        _as_hw(self.size, "size")
        if not (isinstance(self.pad_value, int | np.integer) and 0 <= self.pad_value <= 255):
            raise ValueError(f"pad_value must be an int in 0..255, got {self.pad_value!r}")
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"stride must be positive, got {self.stride!r}")

    def params(self, src_hw: tuple[int, int]) -> LetterboxParams:
        """The letterbox geometry used for a frame of shape ``src_hw``."""
        return letterbox_params(src_hw, self.size, stride=self.stride, scaleup=self.scaleup)

    def _fitted(self, src_hw: tuple[int, int]) -> tuple[int, int]:
        unpad_w, unpad_h = self.params(src_hw).new_unpad_wh
        return unpad_h, unpad_w

    def process(self, data: Any) -> NDArray[np.float32]:
        return self.process_with_params(data)[0]

    def process_with_params(self, data: Any) -> tuple[NDArray[np.float32], LetterboxParams]:
        """Like :meth:`process`, also returning the letterbox geometry of this frame."""
        if self.decode:
            if self.reduced_decode:
                img, src_hw = decode_image_sized(data, self._fitted)
            else:
                img, src_hw = decode_image_sized(data, _FULL)
        else:
            img = data
            src_hw = img.shape[:2] if isinstance(img, np.ndarray) else (0, 0)
        if not (
            isinstance(img, np.ndarray)
            and img.ndim == 3
            and img.shape[2] == 3
            and img.dtype == np.uint8
        ):
            what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img)
            raise ValueError(f"YoloPreprocess expects a BGR uint8 HxWx3 frame, got {what}")
        # The geometry of the ORIGINAL frame (boxes map back to its pixels), whatever size
        # it was decoded at; the resize below goes from the decoded size to the same target.
        p = self.params(src_hw)
        unpad_w, unpad_h = p.new_unpad_wh
        if (unpad_w, unpad_h) != (img.shape[1], img.shape[0]):
            img = cv2.resize(img, p.new_unpad_wh, interpolation=self.interpolation)

        out_h, out_w = p.out_hw
        # In a pool worker the result is built in the task's shared-memory slot: returning it
        # costs no copy (a 640x640 input tensor is 4.9 MB). Elsewhere it is a plain array.
        if self.batch_dim:
            result = output_array((1, 3, out_h, out_w), np.float32)
            out = result[0]
        else:
            result = out = output_array((3, out_h, out_w), np.float32)
        table = _float_table(1 / 255)
        pad = table[self.pad_value]
        top, left = p.pad_top, p.pad_left
        bottom, right = top + unpad_h, left + unpad_w
        # Only the borders are filled; the content area is written once, below.
        out[:, :top, :] = pad
        out[:, bottom:, :] = pad
        out[:, top:bottom, :left] = pad
        out[:, top:bottom, right:] = pad
        for channel, plane in enumerate(reversed(cv2.split(img))):  # B,G,R -> R,G,B
            dst = out[channel, top:bottom, left:right]
            res = cv2.LUT(plane, table, dst=dst)
            if res is not dst:  # cv2 reallocates on a shape/type mismatch; keep the values
                dst[...] = res
        return result, p
