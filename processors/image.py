"""Image decoding and encoding: compressed bytes <-> BGR uint8 ndarray (OpenCV's layout)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from fogverse.codec import DEFAULT_MAX_PIXELS, JPEGCodec, PNGCodec
from fogverse.processor import Processor

__all__ = [
    "DecodeImage",
    "EncodeJPEG",
    "EncodePNG",
    "ImageBytes",
    "decode_image",
    "encode_jpeg",
    "encode_png",
]

ImageBytes = bytes | bytearray | memoryview | NDArray[np.uint8]
"""An encoded image: a bytes-like object or a 1-D uint8 ndarray."""

_JPEG_SOI = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The codecs' structure checks and pixel budget guard the decoders here too (one parser).
_JPEG = JPEGCodec()
_PNG = PNGCodec()


def _as_buffer(data: ImageBytes) -> NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(
                f"an encoded image ndarray must be 1-D uint8, got {data.dtype} {data.shape}"
            )
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            return np.frombuffer(data, dtype=np.uint8)
        except ValueError as exc:  # a non-contiguous memoryview
            raise ValueError(f"cannot read the encoded image buffer: {exc}") from exc
    raise TypeError(f"expected bytes-like or a 1-D uint8 ndarray, got {type(data).__name__}")


def decode_image(
    data: ImageBytes, flags: int = cv2.IMREAD_COLOR, max_pixels: int = DEFAULT_MAX_PIXELS
) -> NDArray[np.uint8]:
    """Decode a JPEG/PNG (any format OpenCV reads) into an ndarray, BGR HxWx3 by default.

    JPEG and PNG payloads first pass the codec's structure check (truncation, corrupt
    segments) and pixel budget, so a decompression bomb is refused before OpenCV allocates
    anything. Raises :class:`ValueError` when the payload is empty, truncated, too large or
    not an image, and :class:`TypeError` when it is not bytes-like.
    """
    buf = _as_buffer(data)
    if buf.size == 0:
        raise ValueError("cannot decode an empty image payload")
    head = buf[:8].tobytes()
    checker = _JPEG if head[:3] == _JPEG_SOI + b"\xff" else _PNG if head == _PNG_MAGIC else None
    if checker is not None:
        if max_pixels != checker.max_pixels:
            checker = replace(checker, max_pixels=max_pixels)
        checker.check(memoryview(buf))  # DecodeError is a ValueError
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ValueError(f"cannot decode image payload ({buf.size} bytes): {exc}") from exc
    if img is None:
        raise ValueError(
            f"cannot decode image payload ({buf.size} bytes, starts with "
            f"{buf[:8].tobytes()!r}): corrupt, truncated or not an image"
        )
    return img


def _encode(ext: str, img: NDArray[np.generic], params: list[int]) -> bytes:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected an ndarray image, got {type(img).__name__}")
    try:
        ok, buf = cv2.imencode(ext, img, params)
    except cv2.error as exc:
        raise ValueError(f"cannot encode {img.dtype} {img.shape} image as {ext}: {exc}") from exc
    if not ok:
        raise ValueError(f"cannot encode {img.dtype} {img.shape} image as {ext}")
    return buf.tobytes()


def encode_jpeg(img: NDArray[np.uint8], quality: int = 90) -> bytes:
    """Encode a BGR (or grayscale) uint8 image as JPEG bytes."""
    return _encode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def encode_png(img: NDArray[np.generic], compression: int | None = None) -> bytes:
    """Encode a BGR/BGRA/grayscale image (uint8 or uint16) as lossless PNG bytes.

    ``compression`` is zlib's level 0-9; ``None`` keeps OpenCV's default (fast).
    """
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    return _encode(".png", img, params)


@dataclass(frozen=True)
class DecodeImage(Processor):
    """Processor: encoded image bytes -> BGR uint8 HxWx3 ndarray (see :func:`decode_image`).

    ``flags`` are :func:`cv2.imdecode` flags. ``cv2.IMREAD_REDUCED_COLOR_2`` (or ``_4``,
    ``_8``) decodes a JPEG straight to half (quarter, eighth) size, cheaper than a full decode
    followed by a resize; note that the frame's shape then differs from the original's.
    """

    flags: int = cv2.IMREAD_COLOR
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images whose header claims more pixels are refused before decoding."""

    def process(self, data: ImageBytes) -> NDArray[np.uint8]:
        return decode_image(data, self.flags, self.max_pixels)


@dataclass(frozen=True)
class EncodeJPEG(Processor):
    """Processor: BGR (or grayscale) uint8 image -> JPEG bytes at ``quality`` (0-100)."""

    quality: int = 90

    def __post_init__(self) -> None:
        if not 0 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 0..100, got {self.quality!r}")

    def process(self, data: NDArray[np.uint8]) -> bytes:
        return encode_jpeg(data, self.quality)


@dataclass(frozen=True)
class EncodePNG(Processor):
    """Processor: image -> lossless PNG bytes (``compression``: zlib level 0-9 or None)."""

    compression: int | None = None

    def __post_init__(self) -> None:
        if self.compression is not None and not 0 <= self.compression <= 9:
            raise ValueError(f"PNG compression must be in 0..9, got {self.compression!r}")

    def process(self, data: NDArray[np.generic]) -> bytes:
        return encode_png(data, self.compression)
