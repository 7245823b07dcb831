"""Frames shared by the processors tests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest


def camera_like_frame(h: int = 720, w: int = 1280, seed: int = 0) -> np.ndarray:
    """A deterministic BGR uint8 frame with gradients, edges and mild noise (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 60 + 80 * xx / w
    img[..., 1] = 90 + 70 * yy / h
    img[..., 2] = 120 + 50 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    frame = img.astype(np.uint8)
    for _ in range(20):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(frame, centre, int(rng.integers(5, max(6, min(h, w) // 6))), colour, -1)
    noisy = frame.astype(np.int16) + rng.integers(-6, 7, frame.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def random_frame(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 0 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="session")
def make_frame():
    """``make_frame(h, w, c=3, seed=0)``: a random uint8 frame (``c=0``: 2-D grayscale)."""
    return random_frame


@pytest.fixture(scope="session")
def frame_720p() -> np.ndarray:
    frame = camera_like_frame()
    frame.setflags(write=False)  # shared across tests: a processor writing into it must fail
    return frame


@pytest.fixture(scope="session")
def jpeg_720p(frame_720p: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame_720p, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()
