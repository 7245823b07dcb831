"""Wire formats: how a node's values become message bytes and back, without pickle.

Every payload is self-describing: an ndarray travels with its dtype and shape, an image is a
standard JPEG or PNG file, and the node puts the codec's content type into the message's
``content-type`` header (:data:`CONTENT_TYPE_HEADER`) so that :class:`AutoCodec` on the other
side knows what it holds. Decoders treat their input as hostile: whatever the bytes, they
either return a value or raise :class:`DecodeError`; they never execute code, never allocate
more than the input (ndarray) or the configured pixel budget (images) demands.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import cv2
import numpy as np

__all__ = [
    "CONTENT_TYPE_HEADER",
    "DEFAULT_MAX_PIXELS",
    "AutoCodec",
    "Buffer",
    "BytesCodec",
    "Codec",
    "CodecName",
    "DecodeError",
    "EncodeError",
    "ImageMode",
    "JPEGCodec",
    "JSONCodec",
    "NDArrayCodec",
    "PNGCodec",
    "TextCodec",
    "codec_for",
    "get_codec",
]

logger = logging.getLogger(__name__)

CONTENT_TYPE_HEADER = "content-type"
"""The message header that carries a payload's content type."""

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest image (width x height) the image codecs decode unless told otherwise."""

Buffer = bytes | bytearray | memoryview
CodecName = Literal["ndarray", "jpeg", "png", "json", "text", "bytes", "auto"]
ImageMode = Literal["color", "grayscale", "unchanged"]


class DecodeError(ValueError):
    """The bytes are not a valid payload for the codec (the message names both)."""


class EncodeError(ValueError):
    """The codec cannot represent the object it was given."""


def _fail(codec: str, reason: str) -> DecodeError:
    return DecodeError(f"{codec} decode: {reason}")


def _snip(value: object, limit: int = 80) -> str:
    """``repr`` for error messages, cut short: headers come from untrusted senders."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_view(data: object, codec: str) -> memoryview:
    """A flat byte view of ``data`` without copying it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(codec, f"expected bytes, bytearray or memoryview, got {type(data).__name__}")
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:  # non-contiguous or released memoryview
        raise _fail(codec, f"unusable buffer ({exc})") from None


class Codec(ABC):
    """Turns objects into message bytes and back.

    Codecs hold only configuration, so one instance can be shared between threads and
    pickled to worker processes.
    """

    name: ClassVar[str]
    """The short name :func:`get_codec` knows this codec by."""
    content_type: ClassVar[str | None]
    """Value of the ``content-type`` header for what :meth:`encode` produces; ``None`` when
    it depends on the object (:class:`AutoCodec`): use :meth:`encode_tagged` then."""

    @abstractmethod
    def encode(self, obj: Any) -> bytes:
        """The payload for ``obj``; raises :class:`EncodeError` if the codec cannot encode it."""

    @abstractmethod
    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> Any:
        """The value in ``data``; raises :class:`DecodeError` and nothing else on bad input.

        ``content_type`` is the message's header; only :class:`AutoCodec` uses it, a
        specific codec trusts its own format check of the bytes. Nodes pass it only to a
        codec without a fixed :attr:`content_type`.
        """

    def encode_tagged(self, obj: Any) -> tuple[bytes, str]:
        """The payload for ``obj`` and the content type to send with it."""
        if self.content_type is None:
            raise TypeError(f"{type(self).__name__} has no fixed content type")
        return self.encode(obj), self.content_type


# --------------------------------------------------------------------------------------------
# ndarray

_FVND_MAGIC = b"FVND"
_FVND_VERSION = 1
_FVND_PREFIX = len(_FVND_MAGIC) + 1 + 4  # magic, version byte, uint32 LE header length
_FVND_MAX_HEADER = 4096
_FVND_MAX_NDIM = 32
# The data starts on a 64-byte boundary of the payload, so a view of a freshly received
# bytes object (whose buffer is 16-aligned) is aligned for every allowed dtype.
_FVND_ALIGN = 64
_INTP_MAX = 2**63 - 1

# Allow-list of plain numeric dtypes. Long double is left out on purpose: its bytes mean
# different things on x86 (80-bit extended) and aarch64 (binary128), i.e. camera vs Jetson.
_NUMERIC_TYPES: tuple[str, ...] = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
_NUMERIC_TYPES += ("f2", "f4", "f8", "c8", "c16")
_ALLOWED_DTYPES: dict[str, np.dtype[Any]] = {}
for _t in _NUMERIC_TYPES:
    for _order in "<>|" if _t.endswith("1") else "<>":
        _ALLOWED_DTYPES[_order + _t] = np.dtype(_order + _t)
del _t, _order


@dataclass(frozen=True)
class NDArrayCodec(Codec):
    """A raw numpy array with its dtype and shape: the fastest format for frames and tensors.

    Layout: ``b"FVND"``, a version byte, the header length (uint32, little-endian), a JSON
    header ``{"dtype": "<f4", "shape": [...]}`` padded with spaces so that the data starts at
    a multiple of 64 bytes, then the array's bytes in C order. Only boolean, integer, float
    and complex dtypes are allowed; byte order travels in the dtype string.

    :meth:`decode` returns a **read-only view** of the message bytes (no copy); call
    ``.copy()`` for an array you may write to.
    """

    name: ClassVar[str] = "ndarray"
    content_type: ClassVar[str] = "application/x-fogverse-ndarray"

    def encode(self, obj: Any) -> bytes:
        if isinstance(obj, np.generic):
            obj = np.asarray(obj)
        if not isinstance(obj, np.ndarray):
            raise EncodeError(f"ndarray codec encodes numpy arrays, not {type(obj).__name__}")
        dtype_str = obj.dtype.str
        if dtype_str not in _ALLOWED_DTYPES:
            raise EncodeError(
                f"ndarray codec cannot encode dtype {obj.dtype!r} ({dtype_str}): only plain "
                "bool, integer, float (up to 64 bits) and complex (up to 128 bits) dtypes"
            )
        if obj.ndim > _FVND_MAX_NDIM:
            raise EncodeError(f"ndarray codec supports at most {_FVND_MAX_NDIM} dimensions")
        header = json.dumps(
            {"dtype": dtype_str, "shape": list(obj.shape)}, separators=(",", ":")
        ).encode("ascii")
        pad = -(_FVND_PREFIX + len(header)) % _FVND_ALIGN
        header += b" " * pad
        prefix = _FVND_MAGIC + bytes((_FVND_VERSION,)) + len(header).to_bytes(4, "little")
        # For a C-contiguous array the join below is the only copy of the data; other
        # layouts (slices, transposes) need one more to become C-ordered first.
        flat = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
        return b"".join((prefix, header, flat.data))

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> np.ndarray:
        name = self.name
        view = _as_view(data, name)
        n = len(view)
        if n < _FVND_PREFIX:
            raise _fail(name, f"{n} bytes is shorter than the {_FVND_PREFIX}-byte prefix")
        if view[:4] != _FVND_MAGIC:
            raise _fail(name, f"bad magic {bytes(view[:4])!r} (expected {_FVND_MAGIC!r})")
        version = view[4]
        if version != _FVND_VERSION:
            raise _fail(name, f"unsupported format version {version} (reads {_FVND_VERSION})")
        header_len = int.from_bytes(view[5:9], "little")
        if header_len > _FVND_MAX_HEADER:
            raise _fail(name, f"header length {header_len} exceeds {_FVND_MAX_HEADER} bytes")
        data_start = _FVND_PREFIX + header_len
        if data_start > n:
            raise _fail(name, f"header length {header_len} runs past the end ({n} bytes)")
        try:
            header = json.loads(bytes(view[_FVND_PREFIX:data_start]).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _fail(name, f"header is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(header, dict):
            raise _fail(name, f"header is a JSON {type(header).__name__}, not an object")
        dtype_str = header.get("dtype")
        dtype = _ALLOWED_DTYPES.get(dtype_str) if isinstance(dtype_str, str) else None
        if dtype is None:
            raise _fail(name, f"dtype {_snip(dtype_str)} is not an allowed numeric dtype")
        shape = header.get("shape")
        if not isinstance(shape, list):
            raise _fail(name, f"shape {_snip(shape)} is not a list")
        if len(shape) > _FVND_MAX_NDIM:
            raise _fail(name, f"{len(shape)} dimensions exceed the limit of {_FVND_MAX_NDIM}")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise _fail(name, f"shape {_snip(shape)} must hold non-negative integers")
        # Python ints do not overflow; numpy's own limit is on the non-zero dimensions.
        if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _INTP_MAX:
            raise _fail(name, f"shape {_snip(shape)} is too large for any array")
        expected = math.prod(shape) * dtype.itemsize
        actual = n - data_start
        if expected != actual:
            need = f"shape {_snip(shape)} of {dtype_str} needs {expected} data bytes"
            raise _fail(name, f"{need}, payload has {actual}")
        array = np.frombuffer(view, dtype=dtype, offset=data_start).reshape(shape)
        array.flags.writeable = False
        return array


# --------------------------------------------------------------------------------------------
# images

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNKS = 65536
# Start-of-frame markers (all coding processes); C4, C8 and CC are other tables.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD))
_JPEG_SOF |= {0xCE, 0xCF}
_JPEG_SOS, _JPEG_EOI, _JPEG_SOI, _JPEG_TEM = 0xDA, 0xD9, 0xD8, 0x01
_JPEG_FILL = re.compile(rb"\xff+")
_JPEG_MAX_SEGMENTS = 4096
_IMREAD: dict[str, int] = {
    "color": cv2.IMREAD_COLOR,
    "grayscale": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
}


def _jpeg_frame(view: memoryview, codec: str) -> tuple[int, int, int]:
    """``(width, height, offset of the first scan's data)`` from the JPEG marker segments."""
    n = len(view)
    pos = 2
    size: tuple[int, int] | None = None
    for _ in range(_JPEG_MAX_SEGMENTS):
        fill = _JPEG_FILL.match(view, pos)
        if fill is None:
            raise _fail(codec, f"expected a marker at offset {pos}")
        pos = fill.end()
        if pos >= n:
            raise _fail(codec, "truncated in the header")
        marker = view[pos]
        pos += 1
        if marker == _JPEG_TEM or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0x00, _JPEG_SOI, _JPEG_EOI):
            raise _fail(codec, f"unexpected marker 0x{marker:02X} before the image data")
        if pos + 2 > n:
            raise _fail(codec, "truncated in the header")
        length = int.from_bytes(view[pos : pos + 2], "big")
        if length < 2 or pos + length > n:
            raise _fail(codec, f"segment 0x{marker:02X} of length {length} is truncated")
        if marker in _JPEG_SOF and size is None:
            components = view[pos + 7] if length >= 8 else 0
            # Grey, colour or CMYK only: libjpeg's buffers grow with the component count.
            if components not in (1, 3, 4) or length != 8 + 3 * components:
                raise _fail(codec, f"frame header with {components} components is not supported")
            height = int.from_bytes(view[pos + 3 : pos + 5], "big")
            width = int.from_bytes(view[pos + 5 : pos + 7], "big")
            size = (width, height)
        elif marker == _JPEG_SOS:
            if size is None:
                raise _fail(codec, "scan before any frame header")
            return size[0], size[1], pos + length
        pos += length
    raise _fail(codec, f"more than {_JPEG_MAX_SEGMENTS} header segments")


def _jpeg_markers(data: np.ndarray, pos: int) -> np.ndarray:
    """Ascending offsets (from ``pos``) of every 0xFF that starts a marker: in entropy-coded
    data 0xFF is always followed by a stuffed 0x00, a restart marker (D0-D7) or more 0xFF
    fill, so anything else after it is a real marker. One vectorised pass over the scans:
    a regular expression took twice as long on a 720p frame's ~2 400 fill and stuffed 0xFF."""
    ff = np.flatnonzero(data[pos:-1] == 0xFF)
    ff += pos
    after = data[ff + 1]
    return ff[(after != 0x00) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]


def _jpeg_require_eoi(view: memoryview, pos: int, codec: str) -> None:
    """Walk the scans from ``pos`` to the end-of-image marker; a cut-off file has none."""
    data = np.frombuffer(view, dtype=np.uint8)
    n = len(data)
    markers = _jpeg_markers(data, pos)
    for _ in range(_JPEG_MAX_SEGMENTS):
        i = int(markers.searchsorted(pos))
        if i == len(markers):
            raise _fail(codec, "truncated: no end-of-image marker")
        at = int(markers[i])
        marker = int(data[at + 1])
        pos = at + 2
        if marker == _JPEG_EOI:
            return  # bytes after EOI (some cameras pad frames) are ignored, as decoders do
        if marker == _JPEG_TEM:
            continue
        if marker == _JPEG_SOI:
            raise _fail(codec, "start-of-image marker inside the image data")
        if pos + 2 > n:
            raise _fail(codec, "truncated: no end-of-image marker")
        length = int.from_bytes(view[pos : pos + 2], "big")
        if length < 2 or pos + length > n:
            raise _fail(codec, f"segment 0x{marker:02X} of length {length} is truncated")
        pos += length
    raise _fail(codec, f"more than {_JPEG_MAX_SEGMENTS} segments")


def _png_size(view: memoryview, codec: str) -> tuple[int, int]:
    """``(width, height)`` from IHDR, after checking that every chunk lies inside the data.

    OpenCV sizes its chunk buffers from the declared length, so a 100-byte PNG claiming a
    2 GB chunk would make it allocate and zero 2 GB before noticing the data is missing.
    """
    n = len(view)
    if n < 33:
        raise _fail(codec, f"{n} bytes is too short for a PNG header")
    if view[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise _fail(codec, "first chunk is not a 13-byte IHDR")
    if zlib.crc32(view[12:29]) != int.from_bytes(view[29:33], "big"):
        raise _fail(codec, "IHDR checksum mismatch")
    width = int.from_bytes(view[16:20], "big")
    height = int.from_bytes(view[20:24], "big")
    pos = 8
    for _ in range(_PNG_MAX_CHUNKS):
        if pos + 12 > n:
            raise _fail(codec, "truncated: no IEND chunk")
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            raise _fail(codec, f"truncated: chunk {kind!r} of length {length} runs past the end")
        if kind == b"IEND":
            if end != n:
                raise _fail(codec, f"{n - end} bytes after the IEND chunk")
            return width, height
        pos = end
    raise _fail(codec, f"more than {_PNG_MAX_CHUNKS} chunks")


def _check_image_array(obj: Any, codec: str, dtypes: tuple[type, ...]) -> np.ndarray:
    if not isinstance(obj, np.ndarray):
        raise EncodeError(f"{codec} codec encodes numpy image arrays, not {type(obj).__name__}")
    if obj.dtype.type not in dtypes:
        allowed = " or ".join(d.__name__ for d in dtypes)
        raise EncodeError(f"{codec} codec needs {allowed} pixels, got {obj.dtype}")
    if not (obj.ndim == 2 or (obj.ndim == 3 and obj.shape[2] in (1, 3, 4))):
        raise EncodeError(f"{codec} codec needs an HxW or HxWx1/3/4 image, got shape {obj.shape}")
    if obj.shape[0] == 0 or obj.shape[1] == 0:
        raise EncodeError(f"{codec} codec cannot encode an empty image {obj.shape}")
    return obj


@dataclass(frozen=True)
class _ImageCodec(Codec):
    """Shared decode path: magic, header dimensions against the pixel budget, then OpenCV."""

    # Keyword-only, so that the subclass's own setting comes first: JPEGCodec(80).
    mode: ImageMode = field(default="color", kw_only=True)
    """``"color"``: BGR uint8 HxWx3; ``"grayscale"``: uint8 HxW; ``"unchanged"``: as stored
    (alpha kept, 16-bit PNG stays uint16)."""
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, kw_only=True)
    """Images whose header claims more pixels are rejected before any decoding."""

    _magic: ClassVar[bytes]
    _ext: ClassVar[str]

    def __post_init__(self) -> None:
        if self.mode not in _IMREAD:
            raise ValueError(f"mode must be one of {sorted(_IMREAD)}, not {self.mode!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")

    @abstractmethod
    def _validate(self, view: memoryview) -> tuple[int, int]:
        """Check the container structure and return the claimed ``(width, height)``."""

    @abstractmethod
    def _params(self) -> list[int]: ...

    def encode(self, obj: Any) -> bytes:
        image = _check_image_array(obj, self.name, self._pixel_types())
        try:
            ok, buf = cv2.imencode(self._ext, image, self._params())
        except cv2.error as exc:
            raise EncodeError(f"{self.name} codec: OpenCV could not encode ({exc})") from None
        if not ok:
            raise EncodeError(f"{self.name} codec: OpenCV could not encode {image.shape}")
        return buf.tobytes()

    def _pixel_types(self) -> tuple[type, ...]:
        return (np.uint8,)

    def check(self, data: Buffer) -> tuple[int, int]:
        """Validate the container (magic, structure, truncation) and the pixel budget without
        decoding; returns ``(width, height)``. Decoders elsewhere (the image processors) call
        this first, so a decompression bomb is refused before any pixel is allocated."""
        name = self.name
        view = _as_view(data, name)
        if view[: len(self._magic)] != self._magic:
            raise _fail(name, f"bad magic {bytes(view[:8])!r} (expected {self._magic!r})")
        width, height = self._validate(view)
        if width < 1 or height < 1:
            raise _fail(name, f"unsupported dimensions {width}x{height}")
        if width * height > self.max_pixels:
            raise _fail(
                name, f"{width}x{height} image exceeds the limit of {self.max_pixels} pixels"
            )
        return width, height

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> np.ndarray:
        name = self.name
        view = _as_view(data, name)
        self.check(view)
        try:
            image = cv2.imdecode(np.frombuffer(view, dtype=np.uint8), _IMREAD[self.mode])
        except cv2.error as exc:
            raise _fail(name, f"OpenCV rejected the image ({exc})") from None
        if image is None:
            raise _fail(name, "OpenCV could not decode the image (corrupt data)")
        return image


@dataclass(frozen=True)
class JPEGCodec(_ImageCodec):
    """JPEG images via OpenCV: small on the wire, lossy. Decodes to BGR uint8 by default.

    Decoding first walks the marker segments (bounds-checked), so a cut-off frame is an
    error rather than a half-grey image and an oversized one is refused before decoding.
    """

    name: ClassVar[str] = "jpeg"
    content_type: ClassVar[str] = "image/jpeg"
    _magic: ClassVar[bytes] = _JPEG_MAGIC
    _ext: ClassVar[str] = ".jpg"

    quality: int = 90

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be within 0..100, not {self.quality}")

    def _params(self) -> list[int]:
        return [cv2.IMWRITE_JPEG_QUALITY, self.quality]

    def _validate(self, view: memoryview) -> tuple[int, int]:
        width, height, scan = _jpeg_frame(view, self.name)
        if width and height and width * height <= self.max_pixels:
            # Only walk the scans of an image we would decode anyway.
            _jpeg_require_eoi(view, scan, self.name)
        return width, height


@dataclass(frozen=True)
class PNGCodec(_ImageCodec):
    """Lossless PNG images via OpenCV (uint8, or uint16 for depth maps and the like)."""

    name: ClassVar[str] = "png"
    content_type: ClassVar[str] = "image/png"
    _magic: ClassVar[bytes] = _PNG_MAGIC
    _ext: ClassVar[str] = ".png"

    compression: int = 1
    """zlib level 0..9; 1 is OpenCV's fast default, higher trades CPU for size."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.compression <= 9:
            raise ValueError(f"PNG compression must be within 0..9, not {self.compression}")

    def _params(self) -> list[int]:
        return [cv2.IMWRITE_PNG_COMPRESSION, self.compression]

    def _pixel_types(self) -> tuple[type, ...]:
        return (np.uint8, np.uint16)

    def _validate(self, view: memoryview) -> tuple[int, int]:
        return _png_size(view, self.name)


# --------------------------------------------------------------------------------------------
# text, JSON, bytes


def _json_default(obj: Any) -> Any:
    # Results computed with numpy (scores, boxes) are the common case of non-JSON values.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _utf8(view: memoryview, codec: str) -> str:
    try:
        return str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(codec, f"invalid UTF-8 ({exc.reason} at byte {exc.start})") from None


@dataclass(frozen=True)
class JSONCodec(Codec):
    """UTF-8 JSON. Numpy scalars and numeric arrays encode as numbers and lists.

    Encoding is strict (no NaN or infinity, which JSON lacks); decoding accepts what
    Python's own ``json`` writes, NaN included.
    """

    name: ClassVar[str] = "json"
    content_type: ClassVar[str] = "application/json"

    def encode(self, obj: Any) -> bytes:
        try:
            text = json.dumps(
                obj,
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
                default=_json_default,
            )
            return text.encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(f"json codec cannot encode {type(obj).__name__}: {exc}") from None

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> Any:
        text = _utf8(_as_view(data, self.name), self.name)
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _fail(self.name, f"invalid JSON ({exc})") from None


@dataclass(frozen=True)
class TextCodec(Codec):
    """A ``str`` as UTF-8."""

    name: ClassVar[str] = "text"
    content_type: ClassVar[str] = "text/plain; charset=utf-8"

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, str):
            raise EncodeError(f"text codec encodes str, not {type(obj).__name__}")
        try:
            return obj.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise EncodeError(f"text codec: {exc}") from None

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> str:
        return _utf8(_as_view(data, self.name), self.name)


@dataclass(frozen=True)
class BytesCodec(Codec):
    """Bytes as they are (a ``bytes`` payload is passed through without a copy)."""

    name: ClassVar[str] = "bytes"
    content_type: ClassVar[str] = "application/octet-stream"

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise EncodeError(f"bytes codec encodes bytes-like objects, not {type(obj).__name__}")
        return bytes(obj)

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> bytes:
        if isinstance(data, bytes):
            return data
        return bytes(_as_view(data, self.name))


# --------------------------------------------------------------------------------------------
# content types and selection

_MEDIA_TYPES: dict[str, CodecName] = {
    "application/x-fogverse-ndarray": "ndarray",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "application/json": "json",
    "text/plain": "text",
    "application/octet-stream": "bytes",
}
_UTF8_CHARSETS = frozenset(("utf-8", "utf8", "us-ascii", "ascii"))


def _name_for(content_type: str | bytes) -> CodecName | None:
    if isinstance(content_type, bytes | bytearray):
        try:
            content_type = content_type.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(content_type, str):
        return None
    media, *params = content_type.split(";")
    name = _MEDIA_TYPES.get(media.strip().lower())
    if name in ("text", "json"):
        for param in params:
            key, _, value = param.partition("=")
            charset = value.strip().strip('"').lower()
            if key.strip().lower() == "charset" and charset not in _UTF8_CHARSETS:
                return None
    return name


@dataclass(frozen=True)
class AutoCodec(Codec):
    """Picks the format per message: by the object's type when encoding, by the
    ``content-type`` header (or, without one, the payload's magic bytes) when decoding.

    Encoding: ndarray -> ndarray codec, bytes-like -> bytes, str -> text, dict, list, tuple,
    int, float, bool, None and numpy scalars -> JSON; anything else is an :class:`EncodeError`
    (there is no pickle fallback). Use :meth:`encode_tagged` to get the content type.

    Decoding: a known content type selects its codec (and its errors); a missing or unknown
    one falls back to sniffing: FVND -> ndarray, JPEG/PNG -> BGR image, else raw ``bytes``.
    """

    name: ClassVar[str] = "auto"
    content_type: ClassVar[None] = None

    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, kw_only=True)
    images: bool = field(default=True, kw_only=True)
    """Decode JPEG/PNG payloads into arrays. Parallel nodes set ``False``: the image bytes go
    to a worker, which decodes them there (decoding is the expensive part)."""
    _codecs: dict[str, Codec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codecs: dict[str, Codec] = {
            "ndarray": NDArrayCodec(),
            "jpeg": JPEGCodec(max_pixels=self.max_pixels),
            "png": PNGCodec(max_pixels=self.max_pixels),
            "json": JSONCodec(),
            "text": TextCodec(),
            "bytes": BytesCodec(),
        }
        object.__setattr__(self, "_codecs", codecs)

    def _codec_for_object(self, obj: Any) -> Codec:
        if isinstance(obj, np.ndarray):
            return self._codecs["ndarray"]
        if isinstance(obj, bytes | bytearray | memoryview):
            return self._codecs["bytes"]
        if isinstance(obj, str):
            return self._codecs["text"]
        if obj is None or isinstance(obj, dict | list | tuple | int | float | np.generic):
            return self._codecs["json"]
        raise EncodeError(
            f"auto codec has no format for {type(obj).__name__} (pickle is never used): "
            "return an ndarray, bytes, str or JSON-compatible value, or pick a codec"
        )

    def encode(self, obj: Any) -> bytes:
        return self._codec_for_object(obj).encode(obj)

    def encode_tagged(self, obj: Any) -> tuple[bytes, str]:
        return self._codec_for_object(obj).encode_tagged(obj)

    def decode(self, data: Buffer, content_type: str | bytes | None = None) -> Any:
        if content_type is not None:
            name = _name_for(content_type)
            if name is not None:
                if not self.images and name in ("jpeg", "png"):
                    return self._codecs["bytes"].decode(data)
                return self._codecs[name].decode(data)
            logger.debug("unknown content type %r: sniffing the payload", content_type)
        # Sniff on bytes directly when we can: a pass-through node decodes every message here.
        view = data if type(data) is bytes else _as_view(data, self.name)
        head = bytes(view[:8])
        if head[:4] == _FVND_MAGIC:
            return self._codecs["ndarray"].decode(view)
        if self.images and head[:3] == _JPEG_MAGIC:
            return self._codecs["jpeg"].decode(view)
        if self.images and head == _PNG_MAGIC:
            return self._codecs["png"].decode(view)
        return data if type(data) is bytes else self._codecs["bytes"].decode(data)


_FACTORIES: dict[str, type[Codec]] = {
    "ndarray": NDArrayCodec,
    "jpeg": JPEGCodec,
    "png": PNGCodec,
    "json": JSONCodec,
    "text": TextCodec,
    "bytes": BytesCodec,
    "auto": AutoCodec,
}


def get_codec(name_or_codec: CodecName | Codec) -> Codec:
    """A codec instance (default settings) for a name, or the given codec itself."""
    if isinstance(name_or_codec, Codec):
        return name_or_codec
    if isinstance(name_or_codec, str):
        factory = _FACTORIES.get(name_or_codec.strip().lower())
        if factory is not None:
            return factory()
        raise ValueError(
            f"unknown codec {name_or_codec!r}; choose one of {', '.join(_FACTORIES)} "
            "or pass a Codec instance"
        )
    raise TypeError(f"expected a codec name or a Codec instance, got {type(name_or_codec)!r}")


def codec_for(content_type: str | bytes) -> Codec | None:
    """The codec (default settings) for a ``content-type`` header value, or ``None``.

    Parameters are ignored except ``charset`` on text and JSON, which must be UTF-8
    (or ASCII).
    """
    name = _name_for(content_type)
    return None if name is None else _FACTORIES[name]()
