"""Decoding and encoding, including the errors a broken payload must raise."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from processors import DecodeImage, EncodeJPEG, EncodePNG


def test_decode_jpeg(frame_720p: np.ndarray, jpeg_720p: bytes) -> None:
    img = DecodeImage().process(jpeg_720p)
    assert img.shape == (720, 1280, 3) and img.dtype == np.uint8
    # Lossy, but close to the source frame on average.
    assert np.abs(img.astype(np.int16) - frame_720p).mean() < 4


def test_decode_accepts_every_buffer_type(jpeg_720p: bytes) -> None:
    ref = DecodeImage().process(jpeg_720p)
    for payload in (
        bytearray(jpeg_720p),
        memoryview(jpeg_720p),
        np.frombuffer(jpeg_720p, np.uint8),
    ):
        np.testing.assert_array_equal(DecodeImage().process(payload), ref)


def test_decode_keeps_bgr_order() -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30
    ok, png = cv2.imencode(".png", frame)
    assert ok
    img = DecodeImage().process(png.tobytes())
    assert img[0, 0].tolist() == [10, 20, 30]


def test_png_round_trip_is_exact(make_frame) -> None:
    frame = make_frame(123, 77, 3, seed=5)
    data = EncodePNG().process(frame)
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(DecodeImage().process(data), frame)
    small = EncodePNG(compression=9).process(frame)
    np.testing.assert_array_equal(DecodeImage().process(small), frame)


def test_png_of_grayscale_decodes_to_three_equal_channels(make_frame) -> None:
    gray = make_frame(20, 30, 0)
    img = DecodeImage().process(EncodePNG().process(gray))
    assert img.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)
    same = DecodeImage(cv2.IMREAD_GRAYSCALE).process(EncodePNG().process(gray))
    np.testing.assert_array_equal(same, gray)


def test_encode_jpeg(frame_720p: np.ndarray) -> None:
    data = EncodeJPEG().process(frame_720p)
    assert isinstance(data, bytes)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    low = EncodeJPEG(quality=20).process(frame_720p)
    high = EncodeJPEG(quality=95).process(frame_720p)
    assert len(low) < len(data) < len(high)
    err_low = np.abs(DecodeImage().process(low).astype(np.int16) - frame_720p).mean()
    err_high = np.abs(DecodeImage().process(high).astype(np.int16) - frame_720p).mean()
    assert err_high < err_low


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.1])
def test_truncated_jpeg_raises_value_error(jpeg_720p: bytes, keep: float) -> None:
    with pytest.raises(ValueError, match=r"JPEG|decode"):
        DecodeImage().process(jpeg_720p[: int(len(jpeg_720p) * keep)])


def test_jpeg_missing_only_its_end_marker_raises(jpeg_720p: bytes) -> None:
    with pytest.raises(ValueError):
        DecodeImage().process(jpeg_720p[:-2])


def test_jpeg_with_trailing_bytes_decodes(jpeg_720p: bytes) -> None:
    ref = DecodeImage().process(jpeg_720p)
    np.testing.assert_array_equal(DecodeImage().process(jpeg_720p + b"\x00" * 64), ref)


def test_truncated_png_raises_value_error(make_frame) -> None:
    data = EncodePNG().process(make_frame(64, 64, 3))
    with pytest.raises(ValueError):
        DecodeImage().process(data[: len(data) // 2])


@pytest.mark.parametrize("payload", [b"", b"\xff", b"not an image at all", bytes(1000)])
def test_non_image_raises_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        DecodeImage().process(payload)


def test_random_bytes_raise_value_error() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        with pytest.raises(ValueError):
            DecodeImage().process(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())


def test_wrong_types_raise_type_error(frame_720p: np.ndarray) -> None:
    with pytest.raises(TypeError):
        DecodeImage().process("a string")
    with pytest.raises(TypeError):
        DecodeImage().process(frame_720p)  # an already decoded frame
    with pytest.raises(TypeError):
        EncodeJPEG().process(b"bytes")


def test_invalid_encoder_settings() -> None:
    with pytest.raises(ValueError):
        EncodeJPEG(quality=101)
    with pytest.raises(ValueError):
        EncodePNG(compression=10)


def test_truncated_jpeg_caught_even_if_the_decoder_is_lenient(
    jpeg_720p: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some libjpeg builds grey-fill a cut-off JPEG instead of failing: simulate one.
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((720, 1280, 3), np.uint8))
    assert DecodeImage().process(jpeg_720p).shape == (720, 1280, 3)
    with pytest.raises(ValueError, match="truncated"):
        DecodeImage().process(jpeg_720p[: len(jpeg_720p) // 2])


def test_an_image_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny JPEG whose header claims 9000x9000: refused by the pixel budget, never decoded.
    ok = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = ok.index(b"\xff\xc0")
    bomb = ok[: sof + 5] + (9000).to_bytes(2, "big") * 2 + ok[sof + 9 :]

    def refuse(*_a: object) -> None:
        raise AssertionError("cv2.imdecode was called on a bomb")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    with pytest.raises(ValueError, match="exceeds"):
        DecodeImage(max_pixels=1_000_000).process(bomb)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ext", [".webp", ".tiff", ".bmp"])
def test_formats_without_a_pixel_check_are_refused_not_decoded_past_max_pixels(ext: str) -> None:
    # Only JPEG and PNG headers are checked against max_pixels; any other format went
    # straight to OpenCV, so a 10 KB lossless WebP of 16383x16383 decoded to 800 MB.
    ok, buf = cv2.imencode(ext, np.zeros((100, 100, 3), np.uint8))
    assert ok
    with pytest.raises(ValueError, match="JPEG or PNG"):
        DecodeImage(max_pixels=1000).process(buf.tobytes())
    with pytest.raises(ValueError, match="JPEG or PNG"):
        DecodeImage(max_pixels=1000, fit=64).process(buf.tobytes())
