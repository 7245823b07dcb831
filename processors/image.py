"""Image decoding and encoding: compressed bytes <-> BGR uint8 ndarray (OpenCV's layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from fogverse.codec import DEFAULT_MAX_PIXELS, JPEGCodec, PNGCodec
from fogverse.processor import Processor

from .letterbox import Shape, fitted_hw

__all__ = [
    "DecodeImage",
    "EncodeJPEG",
    "EncodePNG",
    "ImageBytes",
    "decode_image",
    "decode_image_sized",
    "encode_jpeg",
    "encode_png",
    "reduced_scale",
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


# libjpeg scales in the DCT domain by these factors; OpenCV exposes them as flags.
_REDUCED_COLOR = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def reduced_scale(src_hw: tuple[int, int], target_hw: tuple[int, int]) -> int:
    """The largest DCT scale factor k in {1, 2, 4, 8} at which a ``src_hw`` JPEG, decoded to
    ``ceil(h / k) x ceil(w / k)``, still covers the size it will be resized to.

    ``target_hw`` is the size the frame is shrunk to afterwards (for a letterbox, its
    resized-but-unpadded size), so the final resize only ever shrinks: no detail the full
    decode would have kept is lost to an upscale.
    """
    h, w = src_hw
    th, tw = target_hw
    for k in (8, 4, 2):
        if -(-h // k) >= th and -(-w // k) >= tw:
            return k
    return 1


def _checked(
    data: ImageBytes, max_pixels: int
) -> tuple[NDArray[np.uint8], tuple[int, int] | None, bool]:
    """The payload as a buffer, its ``(height, width)`` from the header, and whether it is a
    JPEG (the only format with reduced-size decoding). Only JPEG and PNG are accepted: the
    size of any other format (WebP, TIFF, BMP...) is unknown until OpenCV has allocated it,
    so ``max_pixels`` could not hold (a 10 KB WebP decodes to 800 MB)."""
    buf = _as_buffer(data)
    if buf.size == 0:
        raise ValueError("cannot decode an empty image payload")
    head = buf[:8].tobytes()
    is_jpeg = head[:3] == _JPEG_SOI + b"\xff"
    checker = _JPEG if is_jpeg else _PNG if head == _PNG_MAGIC else None
    if checker is None:
        raise ValueError(
            f"cannot decode image payload ({buf.size} bytes, starts with {head!r}): not a "
            "JPEG or PNG, the only formats whose size is checked against max_pixels"
        )
    if max_pixels != checker.max_pixels:
        checker = replace(checker, max_pixels=max_pixels)
    w, h = checker.check(memoryview(buf))  # DecodeError is a ValueError
    return buf, (h, w), is_jpeg


def decode_image(
    data: ImageBytes, flags: int = cv2.IMREAD_COLOR, max_pixels: int = DEFAULT_MAX_PIXELS
) -> NDArray[np.uint8]:
    """Decode a JPEG or PNG into an ndarray, BGR HxWx3 by default.

    The payload first passes the codec's structure check (truncation, corrupt
    segments) and pixel budget, so a decompression bomb is refused before OpenCV allocates
    anything. Raises :class:`ValueError` when the payload is empty, truncated, too large or
    not a JPEG or PNG, and :class:`TypeError` when it is not bytes-like.
    """
    buf, _, _ = _checked(data, max_pixels)
    return _imdecode(buf, flags)


def decode_image_sized(
    data: ImageBytes,
    target_hw: Callable[[tuple[int, int]], tuple[int, int]] | tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Decode a colour image that will be shrunk to ``target_hw`` at the smallest size that
    still covers it; returns ``(image, (height, width) of the original frame)``.

    A JPEG is decoded at 1/2, 1/4 or 1/8 size in the DCT domain (:func:`reduced_scale`),
    which costs a fraction of a full decode; the caller resizes the rest of the way, from
    the returned image, with the geometry of the original size. ``target_hw`` is a size, or a
    function of the original ``(height, width)`` giving it (the header is read before
    decoding, so the scale is chosen without a second decode). PNG decodes at full size.
    BGR HxWx3, checked as :func:`decode_image` does.
    """
    buf, src_hw, is_jpeg = _checked(data, max_pixels)
    k = 1
    if is_jpeg and src_hw is not None:
        k = reduced_scale(src_hw, target_hw(src_hw) if callable(target_hw) else target_hw)
    if k > 1:
        img = _imdecode(buf, _REDUCED_COLOR[k])
        h, w = src_hw  # type: ignore[misc]
        if img.shape[:2] == (-(-h // k), -(-w // k)):
            return img, src_hw  # type: ignore[return-value]
        # An EXIF orientation turned the frame: its header size is not the frame's, so the
        # geometry would be wrong. Rare enough to pay a full decode for.
    img = _imdecode(buf, cv2.IMREAD_COLOR)
    return img, img.shape[:2]


def _imdecode(buf: NDArray[np.uint8], flags: int) -> NDArray[np.uint8]:
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

    ``flags`` are :func:`cv2.imdecode` flags. With ``fit`` (the size a following
    :class:`~processors.letterbox.Letterbox` fits the frame into), a JPEG is decoded at the
    smallest 1/2, 1/4 or 1/8 DCT scale that still covers the letterboxed size
    (:func:`decode_image_sized`): a 720p frame bound for 640x640 decodes at 640x360 in about
    a third of a full decode's time, and the letterbox then has nothing left to resize. The
    frame's shape is then the reduced one, so geometry computed from it describes the reduced
    frame; use :class:`~processors.yolo.YoloPreprocess` when boxes must map back to the
    original. ``fit`` needs colour output (``flags`` is then ignored).
    """

    flags: int = cv2.IMREAD_COLOR
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images whose header claims more pixels are refused before decoding."""
    fit: Shape | None = None
    """Letterbox target ``(height, width)`` or square side; None decodes at full size."""

    def process(self, data: ImageBytes) -> NDArray[np.uint8]:
        if self.fit is None:
            return decode_image(data, self.flags, self.max_pixels)
        fit = self.fit
        return decode_image_sized(data, lambda hw: fitted_hw(hw, fit), self.max_pixels)[0]


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
