"""Reduced-size JPEG decoding: chosen whenever it still covers the target, geometry of the
original frame kept, quality cost bounded."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

import processors.image as image_module
from processors import DecodeImage, FaceCascade, YoloDetect, YoloPreprocess, letterbox_params
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


def _photo_camera():
    path = Path(__file__).resolve().parents[2] / "examples" / "photo_camera.py"
    spec = importlib.util.spec_from_file_location("example_photo_camera", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pytest.importorskip("skimage.data")
    return module.PhotoCamera(frames=60)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_face_boxes_barely_move_with_the_reduced_decode() -> None:
    # The demo's frames (720p views of the packaged photo, JPEG q90): the face cascade finds
    # the same one face, about as close to where the face really is. Measured over 20 frames:
    # IoU reduced vs full 0.78-0.96 (mean 0.88); against the true face 0.76-0.92 (mean 0.85)
    # reduced, 0.71-0.93 (0.83) full: the cascade's own jitter, not a loss.
    camera = _photo_camera()
    face = (180.0, 70.0, 268.0, 162.0)  # in skimage.data.astronaut(), read off the picture
    reduced, full = FaceCascade(), FaceCascade(reduced_decode=False)
    between, to_truth_reduced, to_truth_full = [], [], []
    for i in range(0, 60, 15):
        jpeg = cv2.imencode(".jpg", camera.frame(i), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        a, b = reduced.process(jpeg), full.process(jpeg)
        assert (a["width"], a["height"]) == (b["width"], b["height"]) == (1280, 720)
        assert len(a["boxes"]) == len(b["boxes"]) == 1, (i, a, b)
        truth = camera.to_frame(face, i)
        between.append(_iou(a["boxes"][0], b["boxes"][0]))
        to_truth_reduced.append(_iou(a["boxes"][0], truth))
        to_truth_full.append(_iou(b["boxes"][0], truth))
    assert min(between) >= 0.7 and np.mean(between) >= 0.8, between
    assert np.mean(to_truth_reduced) >= np.mean(to_truth_full) - 0.03, (
        to_truth_reduced,
        to_truth_full,
    )


def test_detector_boxes_barely_move_with_the_reduced_decode() -> None:
    from onnx_models import square_finder

    # A model that really looks (the box around the red pixels) on the demo's frames with a
    # red rectangle drawn in: the same box within a model pixel (2 frame pixels at 720p).
    # Measured: at most 2.0 px apart, IoU >= 0.89 for rectangles 30-270 px wide.
    camera = _photo_camera()
    model = square_finder()
    reduced, full = YoloDetect(model, conf=0.5), YoloDetect(model, conf=0.5, reduced_decode=False)
    rng = np.random.default_rng(0)
    for i in range(0, 60, 6):
        frame = camera.frame(i).copy()
        frame[..., 2] //= 3  # no red over the model's 0.5 threshold but the rectangle's
        x1, y1 = int(rng.integers(0, 1000)), int(rng.integers(0, 500))
        x2, y2 = x1 + int(rng.integers(30, 270)), y1 + int(rng.integers(30, 210))
        cv2.rectangle(frame, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 255), -1)
        jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        a, b = reduced.process(jpeg), full.process(jpeg)
        assert len(a["boxes"]) == len(b["boxes"]) == 1, (i, a, b)
        np.testing.assert_allclose(a["boxes"][0], b["boxes"][0], atol=2.5)
        np.testing.assert_allclose(a["boxes"][0], [x1, y1, x2, y2], atol=3.5)
