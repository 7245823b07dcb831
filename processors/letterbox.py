"""YOLO-style letterbox: resize keeping the aspect ratio, pad to the model's input shape.

:func:`letterbox_params` computes the geometry once; :class:`Letterbox` applies it to a frame;
:func:`scale_boxes` maps detections from model coordinates back to the original frame and
:func:`letterbox_boxes` does the forward mapping (original frame -> model input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fogverse.processor import Processor

__all__ = [
    "Letterbox",
    "LetterboxParams",
    "Shape",
    "fitted_hw",
    "letterbox_boxes",
    "letterbox_params",
    "scale_boxes",
]

Shape = int | tuple[int, int]
"""A target size: one int for a square, or ``(height, width)``."""


class LetterboxParams(NamedTuple):
    """The geometry of one letterbox operation (all sizes in pixels).

    ``new_unpad_wh`` is in OpenCV's ``(width, height)`` order (the ``dsize`` of
    :func:`cv2.resize`); ``out_hw`` and ``src_hw`` are in NumPy's ``(height, width)`` order.
    """

    ratio: float
    """Scale applied to the source; the resized size is ``round(side * ratio)``."""
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int
    new_unpad_wh: tuple[int, int]
    """Size of the resized image before padding, ``(width, height)``."""
    out_hw: tuple[int, int]
    """Size of the letterboxed output, ``(height, width)``."""
    src_hw: tuple[int, int]
    """Size of the source frame, ``(height, width)``."""


def _as_hw(shape: Shape, what: str) -> tuple[int, int]:
    if isinstance(shape, int | np.integer):
        h = w = int(shape)
    else:
        h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"{what} must be positive, got {shape!r}")
    return h, w


def letterbox_params(
    src_hw: tuple[int, int],
    new_shape: Shape = 640,
    *,
    stride: int | None = None,
    scaleup: bool = True,
) -> LetterboxParams:
    """Geometry that fits a ``src_hw`` frame into ``new_shape`` keeping its aspect ratio.

    The frame is scaled by ``ratio = min(new_h / h, new_w / w)`` (capped at 1 when
    ``scaleup`` is false, so small frames are only padded), then padded. Padding is split
    evenly between the two sides; when it is odd, the extra pixel goes to the right (or
    bottom) side.

    Without ``stride`` the output is exactly ``new_shape``. With ``stride`` (e.g. 32, YOLO's
    "auto" mode) the output is the smallest rectangle whose sides are multiples of ``stride``
    and that holds the resized frame; it is never larger than ``new_shape`` when
    ``new_shape`` is itself a multiple of ``stride``.
    """
    h, w = _as_hw(src_hw, "src_hw")
    new_h, new_w = _as_hw(new_shape, "new_shape")
    ratio = min(new_h / h, new_w / w)
    if not scaleup:
        ratio = min(ratio, 1.0)
    # Clamped because float error in w * ratio must not push the size past the target.
    unpad_w = min(max(round(w * ratio), 1), new_w)
    unpad_h = min(max(round(h * ratio), 1), new_h)
    if stride is None:
        out_h, out_w = new_h, new_w
    else:
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride!r}")
        out_h = math.ceil(unpad_h / stride) * stride
        out_w = math.ceil(unpad_w / stride) * stride
    dw, dh = out_w - unpad_w, out_h - unpad_h
    return LetterboxParams(
        ratio=ratio,
        pad_left=dw // 2,
        pad_top=dh // 2,
        pad_right=dw - dw // 2,
        pad_bottom=dh - dh // 2,
        new_unpad_wh=(unpad_w, unpad_h),
        out_hw=(out_h, out_w),
        src_hw=(h, w),
    )


def fitted_hw(
    src_hw: tuple[int, int], new_shape: Shape = 640, *, scaleup: bool = True
) -> tuple[int, int]:
    """``(height, width)`` a ``src_hw`` frame is resized to when letterboxed into
    ``new_shape`` (before padding): what a reduced-size decode must still cover."""
    unpad_w, unpad_h = letterbox_params(src_hw, new_shape, scaleup=scaleup).new_unpad_wh
    return unpad_h, unpad_w


def _axis_scales(params: LetterboxParams) -> tuple[float, float]:
    # The per-axis scale cv2.resize really applied (it differs from ``ratio`` by the rounding
    # of the resized size); using it makes forward and inverse mappings exact inverses.
    src_h, src_w = params.src_hw
    unpad_w, unpad_h = params.new_unpad_wh
    return unpad_w / src_w, unpad_h / src_h


def _boxes_array(boxes: ArrayLike) -> NDArray[np.floating]:
    arr = np.asarray(boxes)
    if arr.ndim == 0 or arr.shape[-1] < 4:
        raise ValueError(f"boxes must have shape (..., >=4) in xyxy order, got {arr.shape}")
    return arr.astype(np.result_type(arr.dtype, np.float32), copy=True)


def letterbox_boxes(boxes: ArrayLike, params: LetterboxParams) -> NDArray[np.floating]:
    """Map xyxy boxes from the original frame to letterboxed (model) coordinates.

    ``boxes`` has shape ``(..., >=4)``; only the first four columns are mapped, the rest
    (scores, classes) are copied. No clipping. Returns a new floating-point array.
    """
    out = _boxes_array(boxes)
    sx, sy = _axis_scales(params)
    out[..., [0, 2]] = out[..., [0, 2]] * sx + params.pad_left
    out[..., [1, 3]] = out[..., [1, 3]] * sy + params.pad_top
    return out


def scale_boxes(
    boxes: ArrayLike,
    params: LetterboxParams | None = None,
    *,
    src_hw: tuple[int, int] | None = None,
    model_hw: Shape | None = None,
    stride: int | None = None,
    scaleup: bool = True,
) -> NDArray[np.floating]:
    """Map xyxy boxes from letterboxed (model) coordinates back to the original frame.

    Pass the :class:`LetterboxParams` used for the frame, or the shapes (``src_hw``,
    ``model_hw`` and the same ``stride``/``scaleup``) to recompute them. ``boxes`` has shape
    ``(..., >=4)``; only the first four columns are mapped, the rest are copied. Results are
    clipped to ``[0, width]`` x ``[0, height]`` of the original frame. Returns a new
    floating-point array.
    """
    if params is None:
        if src_hw is None or model_hw is None:
            raise TypeError("scale_boxes needs params, or both src_hw and model_hw")
        params = letterbox_params(src_hw, model_hw, stride=stride, scaleup=scaleup)
    out = _boxes_array(boxes)
    sx, sy = _axis_scales(params)
    src_h, src_w = params.src_hw
    xs = (out[..., [0, 2]] - params.pad_left) / sx
    ys = (out[..., [1, 3]] - params.pad_top) / sy
    out[..., [0, 2]] = np.clip(xs, 0, src_w)
    out[..., [1, 3]] = np.clip(ys, 0, src_h)
    return out


@dataclass(frozen=True)
class Letterbox(Processor):
    """Processor: HxW or HxWxC (C <= 4) image -> letterboxed image of the same dtype.

    See :func:`letterbox_params` for the geometry. ``pad_value`` fills every channel. The
    input is returned unchanged (not copied) when it already has the output shape.
    Use :meth:`params` with the source shape to map detections back with :func:`scale_boxes`.
    """

    size: Shape = 640
    pad_value: float = 114
    stride: int | None = None
    scaleup: bool = True
    interpolation: int = cv2.INTER_LINEAR

    def __post_init__(self) -> None:
        _as_hw(self.size, "size")
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"stride must be positive, got {self.stride!r}")

    def params(self, src_hw: tuple[int, int]) -> LetterboxParams:
        """The letterbox geometry this processor uses for a frame of shape ``src_hw``."""
        return letterbox_params(src_hw, self.size, stride=self.stride, scaleup=self.scaleup)

    def process(self, data: NDArray[np.generic]) -> NDArray[np.generic]:
        if not isinstance(data, np.ndarray) or data.ndim not in (2, 3):
            raise ValueError("Letterbox expects an HxW or HxWxC ndarray")
        p = self.params(data.shape[:2])
        img = data
        if p.new_unpad_wh != (data.shape[1], data.shape[0]):
            img = cv2.resize(img, p.new_unpad_wh, interpolation=self.interpolation)
        if p.pad_left or p.pad_top or p.pad_right or p.pad_bottom:
            # A bare number would only fill the first channel: cv2 takes it as (v, 0, 0, 0).
            value = (self.pad_value,) * 4
            img = cv2.copyMakeBorder(
                img,
                p.pad_top,
                p.pad_bottom,
                p.pad_left,
                p.pad_right,
                cv2.BORDER_CONSTANT,
                value=value,
            )
        if img.ndim == 2 and data.ndim == 3:
            # cv2 drops a trailing channel axis of size 1; keep the caller's layout.
            img = img[:, :, np.newaxis]
        return img
