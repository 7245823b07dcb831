"""A virtual camera panning and zooming over a photograph that ships inside a package.

The default photograph is scikit-image's ``astronaut`` (``skimage.data.astronaut()``, a NASA
portrait; ``pip install fogverse[demo]``), so the demo's detector has a real face to find
with nothing downloaded. The object has the part of ``cv2.VideoCapture``'s interface the
video pipeline's camera uses (``isOpened``, ``read``, ``set``, ``get``, ``release``).

    python examples/photo_camera.py --out /tmp/pan.mp4     # write the stream to a file
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["PhotoCamera", "astronaut"]


def astronaut() -> np.ndarray:
    """scikit-image's packaged astronaut photograph as a BGR uint8 512x512 frame."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


class PhotoCamera:
    """``frames`` views of ``photo`` at ``size`` (width, height): the view window drifts
    around the photo and zooms in and out, as a handheld camera would."""

    def __init__(
        self,
        photo: np.ndarray | None = None,
        *,
        frames: int = 60,
        fps: float = 10.0,
        size: tuple[int, int] = (1280, 720),
    ) -> None:
        self.photo = astronaut() if photo is None else photo
        self.frames, self.fps, self.size = frames, fps, size
        self.position = 0

    def isOpened(self) -> bool:
        return True

    def view(self, index: int) -> tuple[float, float, float]:
        """Centre ``(x, y)`` and width, in photo pixels, of frame ``index``'s window."""
        ph, pw = self.photo.shape[:2]
        t = 2 * math.pi * index / max(self.frames, 1)
        width = pw * (0.72 + 0.1 * math.sin(2 * t))
        height = width * self.size[1] / self.size[0]
        cx = pw / 2 + 0.12 * pw * math.sin(t)
        cy = ph * 0.24 + 0.04 * ph * math.cos(t)
        # Keep the window inside the photo.
        cx = min(max(cx, width / 2), pw - width / 2)
        cy = min(max(cy, height / 2), ph - height / 2)
        return cx, cy, width

    def _matrix(self, index: int) -> np.ndarray:
        cx, cy, width = self.view(index)
        out_w, out_h = self.size
        scale = out_w / width
        return np.float32([[scale, 0, out_w / 2 - cx * scale], [0, scale, out_h / 2 - cy * scale]])

    def frame(self, index: int) -> np.ndarray:
        # An affine warp of the window: sub-pixel camera motion, no jitter.
        return cv2.warpAffine(self.photo, self._matrix(index), self.size, flags=cv2.INTER_LINEAR)

    def to_frame(self, box: tuple[float, float, float, float], index: int) -> np.ndarray:
        """Where an xyxy ``box`` of the photo appears in frame ``index`` (unclipped)."""
        m = self._matrix(index)
        x1, y1, x2, y2 = box
        return np.array(
            [
                m[0, 0] * x1 + m[0, 2],
                m[1, 1] * y1 + m[1, 2],
                m[0, 0] * x2 + m[0, 2],
                m[1, 1] * y2 + m[1, 2],
            ]
        )

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.position >= self.frames:
            return False, None
        self.position += 1
        return True, self.frame(self.position - 1)

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.position = int(value)
            return True
        return False

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="video file to write (mp4v)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--fps", type=float, default=10.0)
    args = p.parse_args(argv)
    camera = PhotoCamera(frames=args.frames, fps=args.fps)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, camera.size)
    try:
        while (frame := camera.read()[1]) is not None:
            writer.write(frame)
    finally:
        writer.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
