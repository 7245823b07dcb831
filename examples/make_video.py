"""Generate a short synthetic test video with OpenCV: no camera or download needed.

A walking figure and bouncing shapes move over a textured background, so motion detectors
and JPEG encoders see camera-like content. The examples use this video (and the same scene
rendered live for their synthetic cameras).

    python examples/make_video.py                      # examples/output/synthetic.mp4
    python examples/make_video.py --seconds 10 --size 1920x1080 --out /tmp/test.mp4
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["DEFAULT_VIDEO", "OUTPUT_DIR", "SyntheticScene", "make_video", "probe_video"]

logger = logging.getLogger(__name__)

OUTPUT_DIR = Path(__file__).resolve().parent / "output"
DEFAULT_VIDEO = OUTPUT_DIR / "synthetic.mp4"
MIN_SIDE = 64  # the scene's figure and shapes need this much room

# (fourcc, file suffix) in order of preference; the first one this OpenCV build can both
# write and read back is used. mp4v ships with the FFmpeg inside opencv-python wheels.
_FORMATS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


class SyntheticScene:
    """Renders frame ``i`` of a deterministic scene: same ``seed``, same pixels.

    The background is smooth colour noise with a little grain (a real camera's JPEG is
    100-300 KB at 720p; pure noise would be several times that). Over it a dark figure with
    swinging arms and legs walks across the frame, and a few shapes bounce off the edges.
    """

    def __init__(self, width: int = 1280, height: int = 720, seed: int = 0) -> None:
        if width < MIN_SIDE or height < MIN_SIDE:
            raise ValueError(
                f"frame size must be at least {MIN_SIDE}x{MIN_SIDE}, got {width}x{height}"
            )
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), 3), np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        shade = np.linspace(0.75, 1.1, height, dtype=np.float32)[:, None, None]
        grain = rng.normal(0.0, 4.0, (height, width, 1)).astype(np.float32)
        bg = (smooth.astype(np.float32) * 0.45 + 120.0) * shade + grain
        self.background = np.clip(bg, 0, 255).astype(np.uint8)
        # Bouncing shapes: position, velocity (pixels per frame at 30 fps), size, colour.
        self.shapes = [
            (
                rng.uniform(0.1, 0.9, 2) * (width, height),
                rng.uniform(-1.0, 1.0, 2) * (width / 120, height / 90),
                int(rng.uniform(0.04, 0.08) * height),
                tuple(int(c) for c in rng.integers(0, 256, 3)),
                kind,
            )
            for kind in ("circle", "rect", "circle")
        ]
        self.figure_speed = width / 150  # crosses the frame in about five seconds
        self.figure_color = tuple(int(c) for c in rng.integers(25, 70, 3))

    def frame(self, index: int, fps: float = 30.0) -> np.ndarray:
        """The BGR uint8 ``height x width x 3`` frame number ``index``."""
        img = self.background.copy()
        steps = index * 30.0 / fps  # motion is defined per 1/30 s, whatever the frame rate
        for pos, vel, size, color, kind in self.shapes:
            x = _bounce(pos[0] + vel[0] * steps, size, self.width - size)
            y = _bounce(pos[1] + vel[1] * steps, size, self.height - size)
            if kind == "circle":
                cv2.circle(img, (int(x), int(y)), size, color, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(
                    img, (int(x - size), int(y - size)), (int(x + size), int(y + size)), color, -1
                )
        # Starts in view, walks out at the right and comes back in from the left.
        span = self.width + self.height
        cx = (0.2 * self.width + self.height / 2 + steps * self.figure_speed) % span
        cx -= self.height / 2
        self._figure(img, cx, steps)
        cv2.putText(
            img,
            f"frame {index}",
            (16, 40),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.0,
            (255, 255, 255),
            2,
            cv2.LINE_AA,
        )
        return img

    def _figure(self, img: np.ndarray, cx: float, steps: float) -> None:
        height = 0.6 * self.height
        foot_y = 0.93 * self.height
        u = height / 8  # one head height
        color = self.figure_color
        phase = steps * 0.25
        head_r = int(u / 2)
        head_y = int(foot_y - height + head_r)
        shoulder_y = int(head_y + head_r + u / 4)
        hip_y = int(foot_y - height * 0.47)
        half = u  # half the shoulder width
        cv2.circle(img, (int(cx), head_y), head_r, color, -1, cv2.LINE_AA)
        torso = np.array(
            [
                [cx - half, shoulder_y],
                [cx + half, shoulder_y],
                [cx + 0.75 * half, hip_y],
                [cx - 0.75 * half, hip_y],
            ],
            np.int32,
        )
        cv2.fillPoly(img, [torso], color, cv2.LINE_AA)
        cv2.rectangle(img, (int(cx - u / 5), head_y), (int(cx + u / 5), shoulder_y + 2), color, -1)
        for side in (-1, 1):
            swing = side * math.sin(phase) * 0.35
            arm_x = cx + side * half * 1.05
            hand = (
                arm_x + math.sin(-swing) * height * 0.38,
                shoulder_y + math.cos(swing) * height * 0.38,
            )
            cv2.line(
                img,
                (int(arm_x), int(shoulder_y + u / 5)),
                (int(hand[0]), int(hand[1])),
                color,
                max(int(u * 0.45), 1),
                cv2.LINE_AA,
            )
            hip_x = cx + side * half * 0.4
            foot = (
                hip_x + math.sin(swing) * height * 0.47,
                hip_y + math.cos(swing) * height * 0.47,
            )
            cv2.line(
                img,
                (int(hip_x), hip_y),
                (int(foot[0]), int(foot[1])),
                color,
                max(int(u * 0.6), 1),
                cv2.LINE_AA,
            )


def _bounce(x: float, lo: float, hi: float) -> float:
    """Reflect ``x`` into ``[lo, hi]``, as a ball bouncing between two walls."""
    width = hi - lo
    if width <= 0:
        return lo
    t = (x - lo) % (2 * width)
    return lo + (t if t <= width else 2 * width - t)


def probe_video(path: str | Path) -> tuple[int, float, int, int]:
    """``(frames, fps, width, height)`` of a video, counting frames by reading them all.

    Container frame counts can be estimates; decoding every frame is the honest check.
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise OSError(f"OpenCV cannot open {path}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = 0
        while cap.grab():
            frames += 1
        return frames, fps, width, height
    finally:
        cap.release()


def make_video(
    path: str | Path = DEFAULT_VIDEO,
    *,
    seconds: float = 4.0,
    fps: float = 30.0,
    size: tuple[int, int] = (1280, 720),
    seed: int = 0,
) -> Path:
    """Write the synthetic scene to ``path`` and check that OpenCV reads it back whole.

    The suffix may change when this OpenCV build cannot write ``path``'s format (mp4v in
    .mp4 is tried first, then MJPG in .avi); the path actually written is returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds * fps))
    scene = SyntheticScene(*size, seed=seed)
    for fourcc, suffix in _FORMATS:
        target = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not writer.isOpened():
            logger.debug("this OpenCV cannot write %s video", fourcc)
            continue
        try:
            for i in range(count):
                writer.write(scene.frame(i, fps))
        finally:
            writer.release()
        frames, read_fps, width, height = probe_video(target)
        if (frames, width, height) == (count, *size):
            logger.info(
                "wrote %s: %d frames, %dx%d, %.0f fps (%s)",
                target,
                frames,
                width,
                height,
                read_fps,
                fourcc,
            )
            return target
        logger.debug("%s video read back as %d frames %dx%d", fourcc, frames, width, height)
        target.unlink(missing_ok=True)
    raise RuntimeError(f"this OpenCV build can neither write nor read back any of {_FORMATS}")


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"at least {MIN_SIDE}x{MIN_SIDE}, got {text!r}")
    return width, height


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above 0 (a rate, a duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_VIDEO, help="output file")
    parser.add_argument("--seconds", type=positive_float, default=4.0)
    parser.add_argument("--fps", type=positive_float, default=30.0)
    parser.add_argument("--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_video(args.out, seconds=args.seconds, fps=args.fps, size=args.size, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
