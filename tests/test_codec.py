"""Wire formats: round trips, and hostile bytes that must end in DecodeError and nothing else."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import shlex
import struct
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fogverse.codec as codec_mod
from fogverse.codec import (
    CONTENT_TYPE_HEADER,
    DEFAULT_MAX_PIXELS,
    AutoCodec,
    BytesCodec,
    Codec,
    CodecName,
    DecodeError,
    EncodeError,
    JPEGCodec,
    JSONCodec,
    NDArrayCodec,
    PNGCodec,
    TextCodec,
    codec_for,
    get_codec,
)

ALLOWED_TYPES = ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8"]
ALLOWED_TYPES += ["c16"]
ALL_DTYPES = [np.dtype(o + t) for t in ALLOWED_TYPES for o in "<>"]


def _image(h: int = 24, w: int = 32, channels: int | None = 3, dtype: Any = np.uint8) -> Any:
    """A smooth, deterministic image (JPEG keeps smooth images close to the original)."""
    y, x = np.mgrid[0:h, 0:w]
    base = x * 150 // max(w - 1, 1) + y * 50 // max(h - 1, 1)
    img = base if channels is None else np.stack([base + 20 * c for c in range(channels)], -1)
    if dtype == np.uint16:
        return (img * 257).astype(np.uint16)
    return img.astype(dtype)


def _short_id(value: object) -> str | None:
    """Test ids for byte payloads: their length, not their (long, binary) content."""
    return f"{len(value)}B" if isinstance(value, bytes) else None


def _fvnd(
    header: dict[str, Any] | bytes,
    body: bytes = b"",
    *,
    version: int = 1,
    header_len: int | None = None,
    magic: bytes = b"FVND",
) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    return magic + bytes((version,)) + struct.pack("<I", length) + raw + body


JPEG = JPEGCodec().encode(_image())
JPEG_PROGRESSIVE = cv2.imencode(
    ".jpg", _image(40, 48), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 80]
)[1].tobytes()
PNG = PNGCodec().encode(_image())


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment (one IFD entry) right after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation) + bytes(4)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]


JPEG_EXIF = _with_exif_orientation(JPEG, 6)


def _jpeg_sof_offset(data: bytes) -> int:
    """Offset of the SOF0/SOF2 marker in a JPEG that OpenCV wrote."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            return i
    raise AssertionError("no SOF marker")


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    i = _jpeg_sof_offset(data) + 5  # marker (2), length (2), precision (1)
    return data[:i] + struct.pack(">HH", height, width) + data[i + 4 :]


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def _with_chunk_length(data: bytes, kind: bytes, length: int) -> bytes:
    i = data.index(kind) - 4
    return data[:i] + struct.pack(">I", length) + data[i + 4 :]


@pytest.fixture
def no_imdecode(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fails the test if OpenCV is asked to decode; proves a rejection came first."""
    calls: list[int] = []

    def imdecode(buf: Any, flags: int) -> Any:
        calls.append(flags)
        raise AssertionError("cv2.imdecode must not be reached")

    monkeypatch.setattr(codec_mod.cv2, "imdecode", imdecode)
    return calls


@pytest.fixture
def lenient_imdecode(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV builds that turn a cut-off JPEG into a half-grey image instead of failing."""
    real = cv2.imdecode

    def imdecode(buf: Any, flags: int) -> Any:
        image = real(buf, flags)
        return np.full((24, 32, 3), 128, np.uint8) if image is None else image

    monkeypatch.setattr(codec_mod.cv2, "imdecode", imdecode)


# --------------------------------------------------------------------------------------------
# ndarray


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4), (1,) * 32])
def test_ndarray_round_trip(dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    size = int(np.prod(shape))
    array = (np.arange(size) % 7).astype(dtype).reshape(shape)
    payload = NDArrayCodec().encode(array)
    out = NDArrayCodec().decode(payload)
    assert out.dtype.str == dtype.str  # byte order preserved, not normalised
    assert out.shape == shape
    assert out.tobytes() == array.tobytes()
    assert not out.flags.writeable
    assert (len(payload) - out.nbytes) % 64 == 0  # data starts on a 64-byte boundary


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[:, ::2],
        lambda a: a.T,
        lambda a: np.asfortranarray(a),
        lambda a: a[::-1, ::-3],
        lambda a: a[1:3, 2:5, 1],
    ],
    ids=["strided", "transposed", "fortran", "negative-strides", "sliced"],
)
def test_ndarray_non_contiguous_input(make: Any) -> None:
    view = make(np.arange(4 * 6 * 3, dtype=np.int16).reshape(4, 6, 3))
    out = NDArrayCodec().decode(NDArrayCodec().encode(view))
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


def test_ndarray_decode_is_zero_copy_and_read_only() -> None:
    payload = bytearray(NDArrayCodec().encode(np.zeros(4, np.uint8)))
    out = NDArrayCodec().decode(payload)
    payload[-1] = 9  # the array is a view of the message, not a copy
    assert out[-1] == 9
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 1
    assert NDArrayCodec().decode(memoryview(bytes(payload)))[-1] == 9


def test_ndarray_numpy_scalar_becomes_0d_array() -> None:
    out = NDArrayCodec().decode(NDArrayCodec().encode(np.float32(2.5)))
    assert out.shape == () and out.dtype == np.float32 and out[()] == 2.5


def test_ndarray_bool_and_special_floats_bitwise() -> None:
    array = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-310], dtype=">f8")
    assert NDArrayCodec().decode(NDArrayCodec().encode(array)).tobytes() == array.tobytes()
    flags = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(NDArrayCodec().decode(NDArrayCodec().encode(flags)), flags)


@given(
    hnp.arrays(
        dtype=st.sampled_from(ALL_DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
    )
)
@settings(max_examples=300, deadline=timedelta(seconds=2), database=None)
def test_ndarray_round_trip_property(array: Any) -> None:
    out = NDArrayCodec().decode(NDArrayCodec().encode(array))
    assert (out.dtype.str, out.shape) == (array.dtype.str, array.shape)
    assert out.tobytes() == array.tobytes()


@pytest.mark.parametrize(
    "value",
    [
        np.array([object()], dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(2, dtype="|V8"),
        np.array(["ab"]),
        np.array([b"ab"]),
        np.array(["2024-01-01"], dtype="<M8[ns]"),
        np.array([1], dtype="<m8[s]"),
        np.zeros(2, dtype=np.longdouble),
        np.zeros((1,) * 33),
        [1, 2, 3],
        b"bytes",
    ],
    ids=lambda v: str(getattr(v, "dtype", type(v).__name__)),
)
def test_ndarray_refuses_to_encode(value: Any) -> None:
    with pytest.raises(EncodeError, match="ndarray codec"):
        NDArrayCodec().encode(value)


GOOD_BODY = np.arange(6, dtype="<i4").tobytes()


@pytest.mark.parametrize(
    "dtype",
    ["O", "|O", "<O8", "|V8", "V24", "<M8[ns]", "<m8[s]", "<U4", "|S3", "<f16", "<c32",
     "=i4", "i4", "int32", "float", "[('a','<i4')]", "<i4,<i4", "(2,)<i4", "", "garbage",
     5, None, ["<i4"], {"kind": "i"}],
    ids=repr,
)  # fmt: skip
def test_ndarray_rejects_dtypes(dtype: Any) -> None:
    payload = _fvnd({"dtype": dtype, "shape": [6]}, GOOD_BODY[:24])
    with pytest.raises(DecodeError, match=r"^ndarray decode: dtype .* not an allowed"):
        NDArrayCodec().decode(payload)


def test_ndarray_accepts_one_byte_dtypes_in_any_byte_order() -> None:
    for order in "<>|":
        out = NDArrayCodec().decode(_fvnd({"dtype": order + "u1", "shape": [3]}, b"abc"))
        assert out.tobytes() == b"abc"


@pytest.mark.parametrize(
    ("shape", "body", "match"),
    [
        ([2, 3], GOOD_BODY[:-1], "needs 24 data bytes, payload has 23"),
        ([2, 3], GOOD_BODY + b"\x00", "needs 24 data bytes, payload has 25"),
        ([7], GOOD_BODY, "needs 28"),
        ([], b"", "needs 4"),
        ([0], GOOD_BODY, "payload has 24"),
        ([-1, -6], GOOD_BODY, "non-negative integers"),
        ([2, -3], GOOD_BODY, "non-negative integers"),
        ([2.0, 3], GOOD_BODY, "non-negative integers"),
        ([True, 6], GOOD_BODY, "non-negative integers"),
        (["2", 3], GOOD_BODY, "non-negative integers"),
        ([None], GOOD_BODY, "non-negative integers"),
        ([2**40] * 4, GOOD_BODY, "too large"),
        ([2**64, 0], b"", "too large"),
        ([0, 2**62, 2**62], b"", "too large"),
        ([2**61, 0], b"", "too large"),  # times 4-byte itemsize overflows intp
        ([1] * 33, GOOD_BODY[:4], "33 dimensions"),
        ({"0": 6}, GOOD_BODY, "not a list"),
        ("6", GOOD_BODY, "not a list"),
        (6, GOOD_BODY, "not a list"),
        (None, GOOD_BODY, "not a list"),
    ],
    ids=_short_id,
)
def test_ndarray_rejects_bad_shapes(shape: Any, body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        NDArrayCodec().decode(_fvnd({"dtype": "<i4", "shape": shape}, body))


def test_ndarray_zero_size_with_huge_other_dims_is_fine_when_numpy_can_hold_it() -> None:
    out = NDArrayCodec().decode(_fvnd({"dtype": "|u1", "shape": [0, 2**40]}))
    assert out.shape == (0, 2**40)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "shorter than the 9-byte prefix"),
        (b"FVND\x01\x00\x00", "shorter"),
        (_fvnd({}, magic=b"FVNX"), "bad magic"),
        (b"\x93NUMPY" + b"\x00" * 20, "bad magic"),
        (_fvnd({"dtype": "<i4", "shape": [6]}, GOOD_BODY, version=2), "version 2"),
        (_fvnd({"dtype": "<i4", "shape": [6]}, GOOD_BODY, version=0), "version 0"),
        (_fvnd(b'{"dtype":"<i4","shape":[6]}', header_len=5000), "exceeds 4096"),
        (_fvnd(b'{"dtype":"<i4","shape":[6]}', header_len=2**32 - 1), "exceeds"),
        (_fvnd(b'{"dtype":"<i4","shape":[0]}', header_len=200), "runs past the end"),
        (_fvnd(b'{"dtype":"<i4","shape":[6]}', header_len=10), "not valid UTF-8 JSON"),
        (_fvnd(b'{"dtype":"<i4","shape":[6]', GOOD_BODY), "not valid UTF-8 JSON"),
        (_fvnd(b'{"dtype":"\xff\xfe","shape":[6]}', GOOD_BODY), "not valid UTF-8 JSON"),
        (_fvnd(b"[" * 2048), "not valid UTF-8 JSON"),
        (_fvnd(b"[" * 2000 + b"]" * 2000), "not valid UTF-8 JSON|JSON list"),
        (_fvnd(b'{"dtype":"<i4","shape":[' + b"9" * 4000 + b"]}"), "too large"),
        (_fvnd(b'["<i4", [6]]', GOOD_BODY), "JSON list, not an object"),
        (_fvnd(b"null", GOOD_BODY), "not an object"),
        (_fvnd({"shape": [6]}, GOOD_BODY), "dtype None"),
        (_fvnd({"dtype": "<i4"}, GOOD_BODY), "shape None"),
    ],
    ids=_short_id,
)
def test_ndarray_rejects_malformed_payloads(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        NDArrayCodec().decode(payload)


def test_ndarray_ignores_unknown_header_keys() -> None:
    out = NDArrayCodec().decode(_fvnd({"dtype": "<i4", "shape": [6], "note": "x"}, GOOD_BODY))
    assert out.tolist() == [0, 1, 2, 3, 4, 5]


# --------------------------------------------------------------------------------------------
# pickle and np.save: never executed, never accepted as an array


class _Evil:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


STRUCTURED_CODECS: list[Codec] = [NDArrayCodec(), JPEGCodec(), PNGCodec(), JSONCodec()]
TYPED_CONTENT = ["application/x-fogverse-ndarray", "image/jpeg", "image/png", "application/json"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_payload_is_never_executed(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker), protocol=protocol)
    pickle.loads(payload)  # the payload is live: unpickling it would run the command
    assert marker.exists()
    marker.unlink()

    for codec in STRUCTURED_CODECS:
        with pytest.raises(DecodeError):
            codec.decode(payload)
    for content_type in TYPED_CONTENT:
        with pytest.raises(DecodeError):
            AutoCodec().decode(payload, content_type)
    # Formats with no structure hand the bytes over as inert data.
    assert BytesCodec().decode(payload) == payload
    assert AutoCodec().decode(payload) == payload
    assert AutoCodec().decode(payload, "application/x-python-pickle") == payload
    try:  # protocols 0 and 1 can be valid UTF-8 text; 2+ start with 0x80, which is not
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(DecodeError, match="invalid UTF-8"):
            TextCodec().decode(payload)
    else:
        assert TextCodec().decode(payload) == text
    assert not marker.exists()


def test_np_save_object_array_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    payload = buf.getvalue()
    for codec in [*STRUCTURED_CODECS, AutoCodec()]:
        with pytest.raises(DecodeError):
            codec.decode(payload, "application/x-fogverse-ndarray")
    assert AutoCodec().decode(payload) == payload  # unknown format: inert bytes
    assert not marker.exists()


def test_fvnd_smuggling_a_pickle_as_object_dtype_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps(_Evil(marker))
    for dtype in ("O", "|O", "<O"):
        payload = _fvnd({"dtype": dtype, "shape": [1]}, body)
        for codec in (NDArrayCodec(), AutoCodec()):
            with pytest.raises(DecodeError, match="not an allowed numeric dtype"):
                codec.decode(payload)
    assert not marker.exists()


def test_autocodec_refuses_objects_instead_of_pickling() -> None:
    for value in (object(), {1, 2}, _Evil(Path("x")), complex(1, 2), Path("x")):
        with pytest.raises(EncodeError, match="pickle is never used"):
            AutoCodec().encode(value)


# --------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_jpeg_round_trip_to_bgr(channels: int | None) -> None:
    image = _image(channels=channels)
    out = JPEGCodec(quality=95).decode(JPEGCodec(quality=95).encode(image))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    expected = image[..., :3] if channels in (3, 4) else np.dstack([image.reshape(24, 32)] * 3)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4


def test_jpeg_quality_changes_size_and_modes() -> None:
    image = _image(64, 64)
    assert len(JPEGCodec(quality=20).encode(image)) < len(JPEGCodec(quality=95).encode(image))
    gray = JPEGCodec(mode="grayscale").decode(JPEG)
    assert gray.shape == (24, 32) and gray.dtype == np.uint8
    assert JPEGCodec(mode="unchanged").decode(JPEG).shape == (24, 32, 3)
    assert JPEGCodec().decode(JPEG_PROGRESSIVE).shape == (40, 48, 3)


def test_jpeg_with_exif_segment_decodes() -> None:
    assert JPEGCodec().decode(JPEG_EXIF).shape in ((24, 32, 3), (32, 24, 3))


def test_jpeg_tolerates_padding_after_end_of_image() -> None:
    assert JPEGCodec().decode(JPEG + b"\x00" * 100).shape == (24, 32, 3)


@pytest.mark.parametrize(
    ("image", "mode"),
    [
        (_image(channels=3), "color"),
        (_image(channels=4), "unchanged"),
        (_image(channels=None), "grayscale"),
        (_image(channels=None, dtype=np.uint16), "unchanged"),
        (_image(channels=3, dtype=np.uint16), "unchanged"),
    ],
)
def test_png_round_trip_is_exact(image: Any, mode: Any) -> None:
    codec = PNGCodec(mode=mode, compression=6)
    out = codec.decode(codec.encode(image))
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)


def test_png_color_mode_gives_bgr_uint8() -> None:
    out = PNGCodec().decode(PNGCodec().encode(_image(channels=None, dtype=np.uint16)))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)


def test_image_codecs_encode_non_contiguous_input() -> None:
    image = _image(48, 64)[::2, ::2]
    np.testing.assert_array_equal(PNGCodec().decode(PNGCodec().encode(image)), image)
    assert JPEGCodec().decode(JPEGCodec().encode(image)).shape == (24, 32, 3)


def test_image_codecs_encode_a_read_only_decoded_frame() -> None:
    frame = NDArrayCodec().decode(NDArrayCodec().encode(_image()))  # as a node receives it
    np.testing.assert_array_equal(PNGCodec().decode(PNGCodec().encode(frame)), frame)
    assert JPEGCodec().decode(JPEGCodec().encode(frame)).shape == frame.shape


@pytest.mark.parametrize("codec", [JPEGCodec(), PNGCodec()], ids=lambda c: c.name)
@pytest.mark.parametrize(
    "value",
    [
        _image(dtype=np.float32),
        _image(dtype=np.int16),
        _image(channels=2),
        _image(channels=5),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 0), np.uint8),
        np.zeros((2, 2, 2, 3), np.uint8),
        np.zeros(16, np.uint8),
        [[1, 2], [3, 4]],
    ],
    ids=lambda v: f"{getattr(v, 'dtype', type(v).__name__)}{getattr(v, 'shape', '')}",
)
def test_image_codecs_refuse_to_encode(codec: Codec, value: Any) -> None:
    with pytest.raises(EncodeError, match=codec.name):
        codec.encode(value)


def test_jpeg_refuses_16_bit() -> None:
    with pytest.raises(EncodeError, match="uint8"):
        JPEGCodec().encode(_image(dtype=np.uint16))


def test_image_codec_settings() -> None:
    assert JPEGCodec(80).quality == 80  # the format's own setting is the positional one
    assert PNGCodec(6).compression == 6
    assert JPEGCodec().quality == 90
    with pytest.raises(TypeError):
        JPEGCodec(80, "color")  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"quality": 101}, {"quality": -1}, {"mode": "rgb"}])
def test_jpeg_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JPEGCodec(**kwargs)


@pytest.mark.parametrize("kwargs", [{"compression": 10}, {"max_pixels": 0}])
def test_png_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PNGCodec(**kwargs)


@pytest.mark.usefixtures("lenient_imdecode")
@pytest.mark.parametrize("source", [JPEG, JPEG_PROGRESSIVE], ids=["baseline", "progressive"])
def test_truncated_jpeg_is_an_error_even_if_opencv_would_accept_it(source: bytes) -> None:
    for cut in [*range(0, len(source) - 1, 7), len(source) - 2, len(source) - 1]:
        with pytest.raises(DecodeError, match="jpeg decode"):
            JPEGCodec().decode(source[:cut])


@pytest.mark.usefixtures("lenient_imdecode")
def test_truncated_png_is_an_error() -> None:
    for cut in [*range(0, len(PNG) - 1, 11), len(PNG) - 12, len(PNG) - 1]:
        with pytest.raises(DecodeError, match="png decode"):
            PNGCodec().decode(PNG[:cut])


def test_corrupted_png_data_is_an_error() -> None:
    start = PNG.find(b"IDAT") + 4
    for i in range(start, start + 40, 3):
        corrupt = bytearray(PNG)
        corrupt[i] ^= 0x5A
        with pytest.raises(DecodeError, match="png decode"):
            PNGCodec().decode(bytes(corrupt))


def test_corrupted_jpeg_decodes_or_fails_cleanly() -> None:
    # Flipped bits in JPEG scan data often still decode (to a damaged picture); that is
    # fine, but the outcome must be an image of the declared size or a DecodeError.
    for i in range(len(JPEG) // 4, len(JPEG), max(1, len(JPEG) // 60)):
        corrupt = bytearray(JPEG)
        corrupt[i] ^= 0xFF
        try:
            out = JPEGCodec().decode(bytes(corrupt))
        except DecodeError:
            continue
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xd8\xff", "truncated|expected a marker"),
        (b"\xff\xd8\xff\xd9", "unexpected marker 0xD9"),
        (b"\xff\xd8\xff\xda\x00\x02\xff\xd9", "scan before any frame header"),
        (b"\xff\xd8\xff\xe0\x00\x01", "length 1"),
        (b"\xff\xd8\xff\xe0\xff\xff", "length 65535 is truncated"),
        (b"\xff\xd8\xff\xc0\x00\x06\x08\x00\x10\x00", "with 0 components"),
        (b"\xff\xd8\xff\xc0\x00\x0e\x08\x00\x10\x00\x10\x02" + bytes(6), "with 2 components"),
        (b"\xff\xd8\xff\xc0\x00\x0e\x08\x00\x10\x00\x10\x01" + bytes(6), "with 1 components"),
        (b"\xff\xd8\xff\xc0\x00\x26\x08\x00\x10\x00\x10\x0a" + bytes(30), "with 10 comp"),
        (b"\xff\xd8\xff\xe0\x00\x04abXYZ", "expected a marker at offset 8"),
        (_with_jpeg_size(JPEG, 32, 0), "dimensions 32x0"),
        (_with_jpeg_size(JPEG, 0, 24), "dimensions 0x24"),
        (JPEG[:-2] + b"\xff\xd8" + JPEG[-2:], "start-of-image marker inside"),
        (PNG, "bad magic"),
        (b"GIF89a" + b"\x00" * 40, "bad magic"),
    ],
    ids=_short_id,
)
def test_jpeg_rejects_malformed_structure(payload: bytes, match: str, no_imdecode: Any) -> None:
    with pytest.raises(DecodeError, match=match):
        JPEGCodec().decode(payload)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (PNG[:20], "too short"),
        (PNG[:8] + b"\x00\x00\x00\x0dIDAT" + PNG[16:], "not a 13-byte IHDR"),
        (PNG[:16] + b"\x00\x00\x01\x00" + PNG[20:], "IHDR checksum mismatch"),
        (_with_png_size(PNG, 0, 24), "dimensions 0x24"),
        (_with_png_size(PNG, 2**31, 24), "dimensions|exceeds"),
        (PNG + b"\x00", "1 bytes after the IEND chunk"),
        (PNG[:-12], "truncated: no IEND chunk"),
        (PNG[:33] + b"\x00\x00\x00\x00IEND", "truncated: no IEND chunk"),
        (_with_chunk_length(PNG, b"IDAT", 2**31 - 1), "IDAT.* runs past the end"),
        (_with_chunk_length(PNG, b"IDAT", 2**32 - 1), "IDAT.* runs past the end"),
        (_with_chunk_length(PNG, b"IEND", 1), "IEND.* runs past the end"),
        (PNG[:33] + b"\x00\x00\x00\x00tEXt\x00\x00\x00\x00" * 65536 + PNG[33:], "more than"),
        (JPEG, "bad magic"),
    ],
    ids=_short_id,
)
def test_png_rejects_malformed_structure(payload: bytes, match: str, no_imdecode: Any) -> None:
    with pytest.raises(DecodeError, match=match):
        PNGCodec().decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        _with_jpeg_size(JPEG, 65535, 65535),
        _with_jpeg_size(JPEG_PROGRESSIVE, 65535, 1025),
        _with_png_size(PNG, 100_000, 100_000),
        _with_png_size(PNG, 2**31 - 1, 2**31 - 1),
    ],
    ids=["jpeg", "jpeg-progressive", "png", "png-max"],
)
def test_decompression_bomb_is_rejected_before_decoding(payload: bytes, no_imdecode: Any) -> None:
    for codec in (JPEGCodec(), PNGCodec(), AutoCodec()):
        with pytest.raises(DecodeError, match=r"exceeds the limit of|bad magic"):
            codec.decode(payload)
    assert no_imdecode == []


def test_pixel_limit_is_configurable() -> None:
    assert JPEGCodec(max_pixels=24 * 32).decode(JPEG).shape == (24, 32, 3)
    assert PNGCodec(max_pixels=24 * 32).decode(PNG).shape == (24, 32, 3)
    for codec in (JPEGCodec(max_pixels=24 * 32 - 1), PNGCodec(max_pixels=24 * 32 - 1)):
        with pytest.raises(DecodeError, match=r"24x32|32x24"):
            codec.decode(JPEG if codec.name == "jpeg" else PNG)
    with pytest.raises(DecodeError, match="exceeds the limit of 100 pixels"):
        AutoCodec(max_pixels=100).decode(PNG)
    assert DEFAULT_MAX_PIXELS == 64 * 1024 * 1024


def test_huge_image_past_the_limit_is_left_to_opencv_limits() -> None:
    # With our own limit lifted, OpenCV's (about 2**30 pixels) still refuses cleanly.
    bomb = _with_jpeg_size(JPEG, 65535, 65535)
    with pytest.raises(DecodeError, match="jpeg decode"):
        JPEGCodec(max_pixels=2**40).decode(bomb)


# --------------------------------------------------------------------------------------------
# JSON, text, bytes


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**70), 1.5, "héllo ✓ 🎥", [], {}, {"a": [1, {"b": None}], "ü": "x"}],
)
def test_json_round_trip(value: Any) -> None:
    assert JSONCodec().decode(JSONCodec().encode(value)) == value


def test_json_encodes_numpy_values_and_tuples() -> None:
    value = {"score": np.float32(0.5), "n": np.int64(3), "box": np.array([1, 2]), "t": (1, 2)}
    assert JSONCodec().decode(JSONCodec().encode(value)) == {
        "score": 0.5,
        "n": 3,
        "box": [1, 2],
        "t": [1, 2],
    }


def test_json_output_is_compact_utf8() -> None:
    assert JSONCodec().encode({"a": "é"}) == '{"a":"é"}'.encode()


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"x": float("inf")}, {1, 2}, object(), b"bytes", np.array(["s"]), "\ud800"],
    ids=repr,
)
def test_json_refuses_to_encode(value: Any) -> None:
    with pytest.raises(EncodeError, match="json codec"):
        JSONCodec().encode(value)


def test_json_refuses_circular_structures() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        JSONCodec().encode(loop)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xfe{}", "invalid UTF-8"),
        (b'{"a": "\xc3"}', "invalid UTF-8"),
        (b'"\xed\xa0\x80"', "invalid UTF-8"),  # an encoded surrogate
        ('{"a": 1}'.encode("utf-16"), "invalid UTF-8"),
        ('{"a": 1}'.encode("utf-32-le"), "invalid JSON"),  # valid UTF-8, NULs everywhere
        (b"\xef\xbb\xbf{}", "invalid JSON"),  # byte-order mark
        (b"", "invalid JSON"),
        (b"{'a': 1}", "invalid JSON"),
        (b"[1, 2", "invalid JSON"),
        (b"[" * 100_000, "invalid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, "invalid JSON"),
        (b"9" * 5000, "invalid JSON"),
    ],
    ids=_short_id,
)
def test_json_rejects(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=f"^json decode: {match}"):
        JSONCodec().decode(payload)


def test_text_round_trip_and_rejects() -> None:
    for text in ("", "plain", "héllo ✓ 🎥\n\x00"):
        assert TextCodec().decode(TextCodec().encode(text)) == text
    assert TextCodec().decode(bytearray(b"abc")) == "abc"
    for bad in (b"\xff", b"abc\xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
        with pytest.raises(DecodeError, match=r"^text decode: invalid UTF-8"):
            TextCodec().decode(bad)
    for value in (b"abc", 3, None, "\udc80"):
        with pytest.raises(EncodeError, match="text codec"):
            TextCodec().encode(value)


def test_bytes_is_identity() -> None:
    payload = b"\x00\x01binary"
    assert BytesCodec().encode(payload) is payload
    assert BytesCodec().decode(payload) is payload
    assert BytesCodec().encode(bytearray(b"ab")) == b"ab"
    assert type(BytesCodec().decode(bytearray(b"ab"))) is bytes
    assert BytesCodec().decode(memoryview(b"xabcx")[1:4]) == b"abc"
    for value in ("str", 1, None, [1]):
        with pytest.raises(EncodeError, match="bytes codec"):
            BytesCodec().encode(value)


ALL_CODECS: list[Codec] = [
    NDArrayCodec(),
    JPEGCodec(),
    PNGCodec(),
    JSONCodec(),
    TextCodec(),
    BytesCodec(),
    AutoCodec(),
]


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(
    "data",
    [None, "a string", 3, [1, 2], memoryview(np.arange(8, dtype=np.uint8))[::2]],
    ids=["None", "str", "int", "list", "strided-memoryview"],
)
def test_decode_rejects_non_buffers(codec: Codec, data: Any) -> None:
    with pytest.raises(DecodeError, match=f"^{codec.name} decode: "):
        codec.decode(data)


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_decode_rejects_released_memoryview(codec: Codec) -> None:
    view = memoryview(b"FVND\x01 some bytes")
    view.release()
    with pytest.raises(DecodeError, match="unusable buffer"):
        codec.decode(view)


def test_decode_accepts_multidimensional_buffers() -> None:
    pixels = memoryview(np.frombuffer(PNG, np.uint8).reshape(-1, 1))  # 2-D, format "B"
    np.testing.assert_array_equal(PNGCodec().decode(pixels), _image())
    assert BytesCodec().decode(memoryview(np.arange(3, dtype="<u2"))) == b"\x00\x00\x01\x00\x02\x00"


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_codecs_are_picklable_values(codec: Codec) -> None:
    # Codecs travel to worker processes with the node configuration.
    assert pickle.loads(pickle.dumps(codec)) == codec


# --------------------------------------------------------------------------------------------
# selection: AutoCodec, codec_for, get_codec


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        (np.arange(6, dtype=">u2").reshape(2, 3), "application/x-fogverse-ndarray"),
        (b"raw", "application/octet-stream"),
        (bytearray(b"raw"), "application/octet-stream"),
        ("text ✓", "text/plain; charset=utf-8"),
        ({"a": [1, 2]}, "application/json"),
        ([1, "x"], "application/json"),
        (7, "application/json"),
        (2.5, "application/json"),
        (False, "application/json"),
        (None, "application/json"),
        (np.float32(1.5), "application/json"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_autocodec_round_trip_by_type(value: Any, content_type: str) -> None:
    auto = AutoCodec()
    payload, ctype = auto.encode_tagged(value)
    assert ctype == content_type
    assert payload == auto.encode(value)
    for header in (ctype, ctype.encode()):
        out = auto.decode(payload, header)
        if isinstance(value, np.ndarray):
            assert out.dtype == value.dtype
            np.testing.assert_array_equal(out, value)
        elif isinstance(value, bytearray):
            assert out == bytes(value)
        else:
            assert out == value


def test_autocodec_sniffs_without_a_header() -> None:
    auto = AutoCodec()
    array = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(auto.decode(auto.encode(array)), array)
    assert auto.decode(JPEG).shape == (24, 32, 3)
    np.testing.assert_array_equal(auto.decode(PNG), _image())
    assert auto.decode(b'{"a": 1}') == b'{"a": 1}'  # JSON needs its header
    assert auto.decode(bytearray(b"xy")) == b"xy"
    assert auto.decode(JPEG, "application/x-unknown").shape == (24, 32, 3)
    assert auto.decode(b"abc", b"\xff\xfe") == b"abc"  # unreadable header: sniff
    assert auto.decode(b"caf\xe9", "text/plain; charset=latin-1") == b"caf\xe9"
    assert auto.decode(b"x", 5) == b"x"  # type: ignore[arg-type]


def test_autocodec_header_selects_the_codec_and_its_errors() -> None:
    auto = AutoCodec()
    with pytest.raises(DecodeError, match=r"^ndarray decode: bad magic"):
        auto.decode(b'{"a": 1, "b": 2}', "application/x-fogverse-ndarray")
    with pytest.raises(DecodeError, match=r"^png decode: bad magic"):
        auto.decode(JPEG, "image/png")
    with pytest.raises(DecodeError, match=r"^json decode"):
        auto.decode(b"\x80", "application/json")
    # A corrupt payload with a known magic is an error, not silently bytes.
    with pytest.raises(DecodeError, match=r"^jpeg decode"):
        auto.decode(JPEG[: len(JPEG) // 2])
    with pytest.raises(DecodeError, match=r"^ndarray decode"):
        auto.decode(b"FVND\x01\x00\x00\x00")
    assert auto.content_type is None


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/x-fogverse-ndarray", NDArrayCodec),
        ("image/jpeg", JPEGCodec),
        ("IMAGE/JPEG", JPEGCodec),
        ("image/jpg", JPEGCodec),
        (b"image/png", PNGCodec),
        ("application/json", JSONCodec),
        ("application/json; charset=UTF-8", JSONCodec),
        ("text/plain", TextCodec),
        ("text/plain; charset=utf-8", TextCodec),
        ('text/plain;charset="us-ascii"', TextCodec),
        (" text/plain ; format=flowed", TextCodec),
        ("application/octet-stream", BytesCodec),
        ("text/plain; charset=iso-8859-1", None),
        ("application/json; charset=utf-16", None),
        ("image/gif", None),
        ("application/x-python-pickle", None),
        ("", None),
        (b"\xff\xd8", None),
    ],
)
def test_codec_for(content_type: str | bytes, expected: type[Codec] | None) -> None:
    codec = codec_for(content_type)
    if expected is None:
        assert codec is None
    else:
        assert type(codec) is expected


def test_content_types_match_codec_for() -> None:
    assert CONTENT_TYPE_HEADER == "content-type"
    for codec in ALL_CODECS:
        if codec.content_type is not None:
            assert type(codec_for(codec.content_type)) is type(codec)
    assert NDArrayCodec.content_type == "application/x-fogverse-ndarray"
    assert JPEGCodec.content_type == "image/jpeg"
    assert PNGCodec.content_type == "image/png"
    assert JSONCodec.content_type == "application/json"
    assert TextCodec.content_type == "text/plain; charset=utf-8"
    assert BytesCodec.content_type == "application/octet-stream"


def test_encode_tagged_uses_the_fixed_content_type() -> None:
    assert JSONCodec().encode_tagged([1]) == (b"[1]", "application/json")
    assert PNGCodec().encode_tagged(_image())[1] == "image/png"

    class Untyped(BytesCodec):
        content_type = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="no fixed content type"):
        Untyped().encode_tagged(b"x")


@pytest.mark.parametrize("name", get_args(CodecName))
def test_get_codec_by_name(name: str) -> None:
    codec = get_codec(name)  # type: ignore[arg-type]
    assert isinstance(codec, Codec) and codec.name == name
    assert type(get_codec(name.upper())) is type(codec)  # type: ignore[arg-type]


def test_get_codec_passes_instances_through_and_rejects_unknowns() -> None:
    jpeg = JPEGCodec(quality=50)
    assert get_codec(jpeg) is jpeg
    with pytest.raises(ValueError, match=r"unknown codec 'pickle'; choose one of ndarray, jpeg"):
        get_codec("pickle")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_codec(JPEGCodec)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_codec(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# hostile input, generated: every decoder returns a value or raises DecodeError


SMALL = 64 * 64  # keeps OpenCV from allocating big images for mutated headers
FUZZ_CODECS: list[Codec] = [
    NDArrayCodec(),
    JPEGCodec(max_pixels=SMALL),
    JPEGCodec(max_pixels=SMALL, mode="unchanged"),
    PNGCodec(max_pixels=SMALL),
    PNGCodec(max_pixels=SMALL, mode="unchanged"),
    JSONCodec(),
    TextCodec(),
    BytesCodec(),
    AutoCodec(max_pixels=SMALL),
]


def _fuzz(max_examples: int) -> settings:
    # A generous deadline: an example over it means a hang, not a slow shared machine.
    return settings(
        max_examples=max_examples,
        deadline=timedelta(seconds=2),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _decode_or_decode_error(codec: Codec, data: bytes, content_type: Any = None) -> Any:
    try:
        out = codec.decode(data, content_type)
    except DecodeError as exc:
        assert str(exc).startswith(
            ("ndarray decode", "jpeg decode", "png decode", "json decode", "text decode")
        )
        reason = re.sub(r"b'.*'|b\".*\"|\[.*\]|\(.*\)|0x\w+|\d+", "#", str(exc))
        event(" ".join(reason.split()[:6]))
        return exc
    event(f"{codec.name}: decoded {type(out).__name__}")
    return out


def _check_all(data: bytes) -> None:
    for codec in FUZZ_CODECS:
        out = _decode_or_decode_error(codec, data)
        if isinstance(out, np.ndarray) and codec.name in ("jpeg", "png"):
            assert out.size <= SMALL * 4
    for content_type in (*TYPED_CONTENT, "text/plain", "application/octet-stream"):
        _decode_or_decode_error(FUZZ_CODECS[-1], data, content_type)


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        # Positions near the start hit the headers, where the parsers live.
        where = st.one_of(st.integers(0, min(n, 80)), st.integers(0, n))
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "uint"]))
        if op == "cut":
            data = data[: draw(where)]
            continue
        i = min(draw(where), max(n - 1, 0))
        if op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=24))
        elif n == 0:
            continue
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xC0, 0xD8, 0xD9, 0xDA, 0xFF]))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 24))]
        elif op == "uint" and n >= 4:
            i = min(i, n - 4)
            value = draw(st.sampled_from([0, 1, 13, 4096, 4097, 0xFFFF, 2**31 - 1, 2**32 - 1]))
            data[i : i + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
    return bytes(data)


FVND_SEEDS = [
    NDArrayCodec().encode(a)
    for a in (
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.zeros((2, 0, 3), ">f4"),
        np.ones((), "<c16"),
        np.arange(5, dtype="<i8"),
    )
]
IMAGE_SEEDS = [
    JPEG,
    JPEG_EXIF,
    JPEG_PROGRESSIVE,
    JPEGCodec().encode(_image(8, 8, channels=None)),
    PNG,
    PNGCodec().encode(_image(6, 5, channels=4)),
    PNGCodec().encode(_image(6, 5, channels=None, dtype=np.uint16)),
]


@_fuzz(2000)
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_all(data)


@_fuzz(1000)
@given(st.sampled_from([b"FVND\x01", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]), st.binary())
def test_fuzz_random_bytes_after_magic(magic: bytes, rest: bytes) -> None:
    _check_all(magic + rest)


@_fuzz(2000)
@given(_mutated(FVND_SEEDS))
def test_fuzz_mutated_ndarray(data: bytes) -> None:
    for codec in (NDArrayCodec(), AutoCodec()):
        out = _decode_or_decode_error(codec, data)
        if isinstance(out, np.ndarray):
            assert out.nbytes <= len(data) and not out.flags.writeable


@_fuzz(3000)
@given(_mutated(IMAGE_SEEDS))
def test_fuzz_mutated_images(data: bytes) -> None:
    _check_all(data)


_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=8)
)
_GOOD_DTYPES = sorted({d.str for d in ALL_DTYPES} | {"<u1", ">i1", "|b1"})
_BAD_DTYPES = ["O", "|V4", "<M8[s]", "<f16", "<U2", "|S2", "=i4", "i4", "<i3", "", "<i4 "]


@st.composite
def _fvnd_payloads(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """Headers that are mostly plausible, with bodies of exactly or nearly the right size."""
    small = st.lists(st.integers(0, 5), max_size=6)
    header: dict[str, Any] = {
        "dtype": draw(st.sampled_from(_GOOD_DTYPES * 3 + _BAD_DTYPES)),
        "shape": draw(
            st.one_of(
                small,
                small,
                st.lists(st.one_of(st.integers(-3, 2**66), st.integers(0, 5)), max_size=34),
                st.lists(st.one_of(st.integers(0, 5), _JSON_SCALARS), max_size=5),
            )
        ),
    }
    if draw(st.booleans()):
        header[draw(st.sampled_from(["x", "order", "dtype", "shape"]))] = draw(_JSON_SCALARS)
    shape = header["shape"]
    itemsize = np.dtype(header["dtype"]).itemsize if header["dtype"] in _GOOD_DTYPES else 4
    expected = -1
    if isinstance(shape, list) and all(type(d) is int for d in shape):
        expected = math.prod(shape) * itemsize
    if 0 <= expected <= 2048:
        size = max(0, expected + draw(st.sampled_from([0, 0, 0, -1, 1, -itemsize, itemsize])))
    else:
        size = draw(st.integers(0, 256))
    return header, draw(st.binary(min_size=size, max_size=size))


@_fuzz(1000)
@given(_fvnd_payloads())
def test_fuzz_ndarray_headers(case: tuple[dict[str, Any], bytes]) -> None:
    header, body = case
    out = _decode_or_decode_error(NDArrayCodec(), _fvnd(header, body))
    if isinstance(out, np.ndarray):
        assert header["dtype"] in _GOOD_DTYPES
        assert out.dtype == np.dtype(header["dtype"])
        assert list(out.shape) == header["shape"]
        assert out.tobytes() == body


@_fuzz(300)
@given(
    st.dictionaries(
        st.sampled_from(["dtype", "shape", "x"]),
        st.one_of(st.lists(_JSON_SCALARS, max_size=4), _JSON_SCALARS),
    ),
    st.binary(max_size=64),
)
def test_fuzz_ndarray_junk_headers(header: dict[str, Any], body: bytes) -> None:
    _decode_or_decode_error(NDArrayCodec(), _fvnd(header, body))


@_fuzz(300)
@given(st.binary(max_size=64), st.one_of(st.text(max_size=40), st.binary(max_size=40)))
def test_fuzz_content_type_headers(data: bytes, content_type: str | bytes) -> None:
    _decode_or_decode_error(AutoCodec(max_pixels=SMALL), data, content_type)


def test_auto_codec_can_leave_images_encoded_for_workers():
    import cv2

    frame = np.zeros((16, 16, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    lazy = AutoCodec(images=False)
    assert lazy.decode(jpeg) == jpeg
    assert lazy.decode(jpeg, "image/jpeg") == jpeg
    assert isinstance(AutoCodec().decode(jpeg), np.ndarray)
    # Arrays are still decoded (zero-copy) by a lazy codec.
    assert lazy.decode(NDArrayCodec().encode(frame)).shape == (16, 16, 3)
