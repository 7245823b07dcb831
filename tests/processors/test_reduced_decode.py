"""Reduced-size JPEG decoding: chosen whenever it still covers the target, geometry of the
original frame kept, quality cost bounded."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

import processors.image as image_module
from processors import DecodeImage, YoloPreprocess, letterbox_params
from processors.image import decode_image_sized, reduced_scale


def _jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _spy_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = image_module._imdecode

    def spy(buf: np.ndarray, flags: int) -> np.ndarray:
        seen.append(flags)
        return real(buf, flags)

    monkeypatch.setattr(image_module, "_imdecode", spy)
    return seen


@pytest.mark.parametrize(
    ("src_hw", "target_hw", "k"),
    [
        ((720, 1280), (360, 640), 2),
        ((721, 1281), (361, 641), 2),  # ceil(721 / 2) = 361 still covers
        ((720, 1280), (361, 640), 1),  # one row short at 1/2: full size
        ((1080, 1920), (180, 320), 4),  # 1/8 would be 135x240
        ((2160, 3840), (360, 640), 4),
        ((4320, 7680), (360, 640), 8),
        ((480, 640), (480, 640), 1),
        ((100, 100), (200, 200), 1),  # an upscale: never reduce
    ],
)
def test_reduced_scale_is_the_largest_that_covers(src_hw, target_hw, k) -> None:
    assert reduced_scale(src_hw, target_hw) == k


@pytest.mark.parametrize(
    ("src_hw", "size", "k"),
    [
        ((720, 1280), 640, 2),  # 640x360 exactly: nothing left to resize
        ((1080, 1920), 320, 4),
        ((481, 641), 160, 4),  # ceil sizes 121x161 still cover 120x160
    ],
)
def test_yolo_decode_uses_the_reduced_decode(
    monkeypatch: pytest.MonkeyPatch, make_frame, src_hw, size, k
) -> None:
    frame = cv2.GaussianBlur(make_frame(*src_hw, 3, seed=1), (7, 7), 0)
    jpeg = _jpeg(frame)
    params = letterbox_params(src_hw, size)
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[k]
    seen = _spy_flags(monkeypatch)
    out, got = YoloPreprocess(size, decode=True).process_with_params(jpeg)
    assert seen == [flag], "YoloPreprocess(decode=True) no longer decodes at reduced size"
    # The geometry is the ORIGINAL frame's: boxes map back to its pixels.
    assert got == params and got.src_hw == src_hw
    # Exactly the reduced decode, resized the rest of the way.
    reduced = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)
    resized = cv2.resize(reduced, params.new_unpad_wh, interpolation=cv2.INTER_LINEAR)
    top, left = params.pad_top, params.pad_left
    h, w = resized.shape[:2]
    expected = resized[..., ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    np.testing.assert_allclose(out[:, top : top + h, left : left + w], expected, atol=1e-6)


def test_switch_forces_full_size(monkeypatch: pytest.MonkeyPatch, jpeg_720p: bytes) -> None:
    seen = _spy_flags(monkeypatch)
    YoloPreprocess(640, decode=True, reduced_decode=False).process(jpeg_720p)
    DecodeImage().process(jpeg_720p)
    assert seen == [cv2.IMREAD_COLOR, cv2.IMREAD_COLOR]


def test_quality_cost_is_bounded(jpeg_720p: bytes) -> None:
    reduced, p1 = YoloPreprocess(640, decode=True).process_with_params(jpeg_720p)
    full, p2 = YoloPreprocess(640, decode=True, reduced_decode=False).process_with_params(jpeg_720p)
    assert p1 == p2
    top, bottom = p1.pad_top, p1.pad_top + p1.new_unpad_wh[1]
    diff = (reduced[:, top:bottom].astype(np.float64) - full[:, top:bottom]) * 255
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    # This frame measures 48.7 dB (the noisier benchmark frames 41-44 dB: python -m
    # benchmarks.decoders); content shifted by one pixel measures 32 dB, a 1/4 decode
    # scaled back up 37.6 dB.
    assert psnr >= 44, psnr
    np.testing.assert_array_equal(reduced[:, :top], full[:, :top])  # padding untouched


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    # APP1 "Exif" with one IFD0 entry: Orientation (0x0112, SHORT) = orientation.
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_exif_rotated_frame_keeps_the_right_geometry(frame_720p: np.ndarray) -> None:
    jpeg = _with_exif_orientation(_jpeg(frame_720p), 6)  # rotated 90 degrees on decode
    full = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert full.shape[:2] == (1280, 720)  # OpenCV applies the orientation
    _, src_hw = decode_image_sized(jpeg, (320, 180))
    assert src_hw == full.shape[:2]
    _, params = YoloPreprocess(640, decode=True).process_with_params(jpeg)
    assert params.src_hw == full.shape[:2]


def test_decode_image_fit(jpeg_720p: bytes) -> None:
    assert DecodeImage(fit=640).process(jpeg_720p).shape == (360, 640, 3)
    assert DecodeImage(fit=(720, 1280)).process(jpeg_720p).shape == (720, 1280, 3)
    png = cv2.imencode(".png", np.zeros((720, 1280, 3), np.uint8))[1].tobytes()
    assert DecodeImage(fit=640).process(png).shape == (720, 1280, 3)  # no DCT scaling in PNG
