"""Tensor preparation: colour order, HWC -> CHW layout, uint8 -> float, normalisation, batching.

Layouts: ``"HWC"`` is OpenCV's (height, width, channels); ``"CHW"`` is the NCHW models'
per-image layout. Every processor returns a C-contiguous array and never modifies its input;
the result is a new array except where no data has to move (:class:`HWCToCHW` of a
single-channel image may return a view).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from fogverse.processor import Processor

__all__ = [
    "BGRToRGB",
    "Batch",
    "HWCToCHW",
    "Layout",
    "Normalize",
    "ToFloat",
]

Layout = Literal["HWC", "CHW"]

# Depths cv2.cvtColor accepts for a channel swap.
_CVT_DTYPES = frozenset({np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)})


def _check_layout(layout: str) -> None:
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"layout must be 'HWC' or 'CHW', got {layout!r}")


def _channel_axis(arr: NDArray[np.generic], layout: Layout) -> int:
    if arr.ndim < 3:
        raise ValueError(f"expected a {layout} array (ndim >= 3), got shape {arr.shape}")
    return -1 if layout == "HWC" else -3


@functools.lru_cache(maxsize=16)
def _float_table(scale: float) -> NDArray[np.float32]:
    """uint8 -> float32 lookup table: ``float32(x * scale)`` rounded once from float64.

    For ``scale = 1/255`` each entry equals the correctly rounded ``x / 255``.
    """
    table = (np.arange(256, dtype=np.float64) * scale).astype(np.float32)
    table.setflags(write=False)
    return table


def _u8_to_float(arr: NDArray[np.uint8], scale: float) -> NDArray[np.float32]:
    """``arr * scale`` as float32 in one pass (a table lookup), same shape as ``arr``."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return cv2.LUT(flat, _float_table(scale)).reshape(arr.shape)


@dataclass(frozen=True)
class BGRToRGB(Processor):
    """Processor: swap the first and third channels (BGR -> RGB; the same swap undoes it).

    ``layout`` says where the 3 channels are: ``"HWC"`` (last axis) or ``"CHW"`` (axis -3).
    """

    layout: Layout = "HWC"

    def __post_init__(self) -> None:
        _check_layout(self.layout)

    def process(self, data: NDArray[np.generic]) -> NDArray[np.generic]:
        axis = _channel_axis(data, self.layout)
        if data.shape[axis] != 3:
            raise ValueError(f"expected 3 channels on axis {axis}, got shape {data.shape}")
        if self.layout == "HWC" and data.ndim == 3 and data.dtype in _CVT_DTYPES:
            return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
        if self.layout == "CHW":
            # Reversing whole planes: contiguous block copies.
            return np.ascontiguousarray(data[..., ::-1, :, :])
        return np.ascontiguousarray(data[..., ::-1])


@dataclass(frozen=True)
class HWCToCHW(Processor):
    """Processor: HxWxC -> CxHxW (also NxHxWxC -> NxCxHxW; HxW -> 1xHxW), C-contiguous."""

    def process(self, data: NDArray[np.generic]) -> NDArray[np.generic]:
        if data.ndim == 2:
            return np.ascontiguousarray(data[np.newaxis])
        if data.ndim == 3:
            h, w, c = data.shape
            if data.dtype == np.uint8 and c <= 4:
                # cv2.split plus plane copies beats NumPy's strided transpose copy ~3x on uint8.
                out = np.empty((c, h, w), dtype=data.dtype)
                for i, plane in enumerate(cv2.split(data)):
                    out[i] = plane
                return out
            return np.ascontiguousarray(data.transpose(2, 0, 1))
        if data.ndim == 4:
            return np.ascontiguousarray(data.transpose(0, 3, 1, 2))
        raise ValueError(f"expected an HxW, HxWxC or NxHxWxC array, got shape {data.shape}")


@dataclass(frozen=True)
class ToFloat(Processor):
    """Processor: array -> float32 ``data * scale`` (default: uint8 -> [0, 1]).

    uint8 input goes through a 256-entry table, so each value is ``x * scale`` rounded once
    (for the default scale, exactly the float32 nearest to ``x / 255``); other dtypes are
    converted to float32 and multiplied.
    """

    scale: float = 1 / 255

    def process(self, data: NDArray[np.generic]) -> NDArray[np.float32]:
        if data.dtype == np.uint8:
            return _u8_to_float(data, self.scale)
        return np.multiply(data, np.float32(self.scale), dtype=np.float32, order="C")


@dataclass(frozen=True)
class Normalize(Processor):
    """Processor: ``(data - mean) / std`` per channel, as float32.

    ``mean`` and ``std`` are one value per channel (or a single value for all channels).
    ``layout`` says where the channels are: ``"CHW"`` (axis -3, also NCHW) or ``"HWC"``
    (last axis, also NHWC). Typical use after :class:`ToFloat`, e.g. ImageNet's
    ``Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))``.
    """

    mean: float | Sequence[float]
    std: float | Sequence[float]
    layout: Layout = "CHW"

    def __post_init__(self) -> None:
        _check_layout(self.layout)
        # Stored as tuples so the processor stays small and hashable when pickled.
        mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        std = tuple(float(v) for v in np.atleast_1d(self.std))
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"mean and std lengths differ: {len(mean)} vs {len(std)}")
        if any(s == 0 for s in std):
            raise ValueError("std must not contain zeros")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def process(self, data: NDArray[np.generic]) -> NDArray[np.float32]:
        axis = _channel_axis(data, self.layout)
        channels = data.shape[axis]
        shape = (-1,) if self.layout == "HWC" else (-1, 1, 1)
        stats = []
        for values in (self.mean, self.std):
            if len(values) not in (1, channels):
                raise ValueError(f"{len(values)} mean/std values for {channels} channels")
            stats.append(np.asarray(values, dtype=np.float32).reshape(shape))
        mean, std = stats
        # order="C": a ufunc lays its result out like its input, e.g. a transposed view.
        out = np.subtract(data, mean, dtype=np.float32, order="C")
        np.divide(out, std, out=out)
        return out


@dataclass(frozen=True)
class Batch(Processor):
    """Processor: a list of same-shaped arrays -> one stacked array with a new leading N axis.

    For a step that receives a list (e.g. several frames gathered into one task): a list of
    CHW arrays becomes NCHW, a list of HWC arrays NHWC.
    """

    def process(self, data: Sequence[NDArray[np.generic]]) -> NDArray[np.generic]:
        if isinstance(data, np.ndarray) or not isinstance(data, Sequence):
            raise TypeError(f"Batch expects a list of arrays, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("Batch got an empty list")
        first = data[0].shape
        for arr in data:
            if arr.shape != first:
                raise ValueError(f"Batch needs equal shapes, got {first} and {arr.shape}")
        return np.stack(data)
