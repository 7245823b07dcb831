"""Stand-alone study: JPEG decoders and reduced-size decoding, on the same frames, in one run.

``python -m benchmarks.decoders [--reps 5] [--frames 8]``

For two kinds of 720p frames (the suite's noisy camera-like frames, ~240 KiB at quality 90,
and a smoother scene with flat regions and edges, ~110 KiB), it times, interleaved round by
round (every variant once per round, one OpenCV thread):

* OpenCV ``cv2.imdecode`` at full size and at 1/2 size (``IMREAD_REDUCED_COLOR_2``);
* ``simplejpeg.decode_jpeg`` at full and 1/2 size (``min_width``/``min_height``), when installed;
* ``turbojpeg.TurboJPEG().decode`` at full and 1/2 size (``scaling_factor``), when installed
  and the system's libturbojpeg is found (PyTurboJPEG does not bundle it);
* ``YoloPreprocess(640, decode=True)`` with the reduced decode and with it forced off.

and the quality cost of the reduced decode: PSNR and the largest per-pixel difference
between ``YoloPreprocess``'s output with the reduced decode and with a full decode + resize
(the letterboxed 640x640 content, 0-255 scale). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from benchmarks.common import interleaved, make_frames, median_ratio

__all__ = ["decoders", "psnr", "smooth_frames", "study"]


def smooth_frames(count: int = 8, quality: int = 90, seed: int = 3) -> list[bytes]:
    """720p scenes of flat areas, gradients and sharp-edged shapes with mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:720, 0:1280].astype(np.float32)
    out = []
    for i in range(count):
        img = np.empty((720, 1280, 3), np.float32)
        img[..., 0] = 60 + 80 * xx / 1280
        img[..., 1] = 90 + 70 * yy / 720
        img[..., 2] = 120 + 50 * np.sin(xx / (37.0 + i)) * np.cos(yy / 53.0)
        frame = img.astype(np.uint8)
        for _ in range(25):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, 1280)), int(rng.integers(0, 720)))
            cv2.circle(frame, centre, int(rng.integers(5, 120)), colour, -1)
        noisy = frame.astype(np.int16) + rng.integers(-3, 4, frame.shape, dtype=np.int16)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return out


def decoders() -> dict[str, Callable[[bytes], Any]]:
    """Every decoder variant available here, by name."""
    out: dict[str, Callable[[bytes], Any]] = {
        "opencv full": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
        "opencv 1/2": lambda b: cv2.imdecode(
            np.frombuffer(b, np.uint8), cv2.IMREAD_REDUCED_COLOR_2
        ),
    }
    try:
        import simplejpeg
    except ImportError:
        pass
    else:
        out["simplejpeg full"] = lambda b: simplejpeg.decode_jpeg(b, "BGR")
        out["simplejpeg 1/2"] = lambda b: simplejpeg.decode_jpeg(
            b, "BGR", min_width=640, min_height=360
        )
    try:
        from turbojpeg import TJPF_BGR, TurboJPEG

        tj = TurboJPEG()
    except (ImportError, RuntimeError, OSError):
        pass
    else:
        out["turbojpeg full"] = lambda b: tj.decode(b, pixel_format=TJPF_BGR)
        out["turbojpeg 1/2"] = lambda b: tj.decode(b, pixel_format=TJPF_BGR, scaling_factor=(1, 2))
    from processors import YoloPreprocess

    out["YoloPreprocess reduced"] = YoloPreprocess(640, decode=True).process
    out["YoloPreprocess full-size"] = YoloPreprocess(640, decode=True, reduced_decode=False).process
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _quality(jpegs: list[bytes]) -> dict[str, float]:
    from processors import YoloPreprocess

    reduced = YoloPreprocess(640, decode=True)
    full = YoloPreprocess(640, decode=True, reduced_decode=False)
    values, worst = [], 0.0
    for b in jpegs:
        (r, pr), (f, pf) = reduced.process_with_params(b), full.process_with_params(b)
        assert pr == pf  # the same geometry: boxes map back identically
        top, bottom = pr.pad_top, pr.pad_top + pr.new_unpad_wh[1]
        r255, f255 = r[:, top:bottom] * 255, f[:, top:bottom] * 255
        values.append(psnr(r255, f255))
        worst = max(worst, float(np.abs(r255 - f255).max()))
    return {
        "psnr_db_min": round(min(values), 2),
        "psnr_db_mean": round(statistics.mean(values), 2),
        "max_abs_diff": round(worst, 1),
    }


def study(reps: int = 5, count: int = 8, per_run: int = 40) -> dict[str, Any]:
    cv2.setNumThreads(1)
    kinds = {"noisy (suite frames)": make_frames(count).jpeg, "smooth": smooth_frames(count)}
    fns = decoders()
    out: dict[str, Any] = {"reps": reps, "frames_per_run": per_run, "kinds": {}}
    for kind, jpegs in kinds.items():
        for fn in fns.values():  # warm-up
            for b in jpegs:
                fn(b)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _, name in interleaved(list(fns), reps):
            fn = fns[name]
            t0 = time.perf_counter()
            for i in range(per_run):
                fn(jpegs[i % len(jpegs)])
            times[name].append((time.perf_counter() - t0) / per_run * 1e3)
        base = times["opencv full"]
        out["kinds"][kind] = {
            "jpeg_kib_mean": round(statistics.mean(len(b) for b in jpegs) / 1024, 1),
            "ms": {n: round(statistics.median(t), 3) for n, t in times.items()},
            "speedup_vs_opencv_full": {
                n: round(median_ratio(base, t), 2) for n, t in times.items()
            },
            "reduced_vs_full_preprocess": round(
                median_ratio(times["YoloPreprocess full-size"], times["YoloPreprocess reduced"]), 2
            ),
            "quality": _quality(jpegs),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decoders", description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args(argv)
    print(json.dumps(study(args.reps, args.frames), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
