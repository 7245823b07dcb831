"""Detections per second of the fused detector (``processors.YoloDetect``), and where a
frame's time goes.

* ``detect.fused``: 720p JPEG frames -> ``YoloDetect`` (decode, letterbox, ONNX Runtime
  inference, YOLO decoding, class-aware NMS, boxes mapped back), serial in this process vs
  ``WorkerPool`` with ``process_number`` 1 and 2 (``max_running_task`` 2, 4, 8; the document
  has the pool benchmarks' shape, so ``plots.plot_pool`` draws it), through the pool
  benchmark's own machinery
  (interleaved rounds, runs sized from a warm-up, ratios as medians of per-round ratios).
* ``detect.breakdown``: the same steps timed one by one on one process, median per frame;
  plus the two NMS backends (``numpy`` vs OpenCV's ``NMSBoxesBatched``) on synthetic
  candidate sets of several sizes.

No pretrained YOLO model can be downloaded here, so the model is a stand-in built with the
``onnx`` helper API: four convolutions (3->16->32->64 at stride 2, then a 1x1 to 84
channels) on 1x3x640x640, giving a YOLOv8-layout 1x84x6400 output whose class scores are
biased so that a few dozen candidates per frame pass the 0.25 threshold. It costs about
0.6 GFLOP a frame, roughly a fifteenth of YOLOv8n (8.7 GFLOP): inference takes a smaller
share of the frame here than with a real model, so the pool's overheads show more.

    python -m benchmarks.detect [--quick] [--out results/detect.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    interleaved,
    machine_info,
    make_frames,
    now_iso,
    progress,
    result,
    run_async,
    write_json,
)
from benchmarks.pool import FOGVERSE, SERIAL, Variant, _measure, _run_once, _start, _stop, _tabulate

__all__ = ["DetectSettings", "bench_detect", "build_model", "settings_for"]

logger = logging.getLogger(__name__)

MODEL = (
    "stand-in YOLOv8-layout model built with onnx.helper: 4 convolutions (3->16->32->64, "
    "stride 2, ReLU; 1x1 to 84) on 1x3x640x640 -> 1x84x6400, ~0.6 GFLOP/frame "
    "(YOLOv8n: 8.7 GFLOP), random weights, ~tens of candidates over conf 0.25"
)
NMS_SIZES = (10, 100, 1000, 5000)


class DetectSettings:
    """Sizes of one run."""

    def __init__(
        self,
        reps: int,
        run_seconds: float,
        min_inputs: int,
        process_numbers: tuple[int, ...],
        max_running_tasks: tuple[int, ...],
        breakdown_frames: int,
        warmup: int = 8,
    ) -> None:
        self.reps, self.run_seconds, self.min_inputs = reps, run_seconds, min_inputs
        self.process_numbers, self.max_running_tasks = process_numbers, max_running_tasks
        self.breakdown_frames, self.warmup = breakdown_frames, warmup

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def settings_for(quick: bool) -> DetectSettings:
    if quick:
        return DetectSettings(2, 0.2, 4, (1, 2), (4,), 4, warmup=4)
    return DetectSettings(7, 2.0, 16, (1, 2), (2, 4, 8), 30)


# ---- the stand-in model ---------------------------------------------------------------------


def build_model(path: Path, seed: int = 0, class_bias: float = -3.2) -> Path:
    """Write the stand-in detector described in the module docstring to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    channels = [3, 16, 32, 64]
    x = "images"
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        w = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    head = rng.normal(0, np.sqrt(1 / 64), (84, 64, 1, 1)).astype(np.float32)
    bias = np.zeros(84, np.float32)
    bias[4:] = class_bias  # few class scores over the threshold, as in a real scene
    inits += [
        numpy_helper.from_array(head, "wh"),
        numpy_helper.from_array(bias, "bh"),
        numpy_helper.from_array(np.array([1, 84, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([4, 80], np.int64), "split"),
        numpy_helper.from_array(
            np.array([640, 640, 160, 160], np.float32).reshape(1, 4, 1), "box_scale"
        ),
    ]
    nodes += [
        helper.make_node("Conv", [x, "wh", "bh"], ["head"]),
        helper.make_node("Reshape", ["head", "flat"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], ["sig"]),
        helper.make_node("Split", ["sig", "split"], ["box01", "cls"], axis=1),
        helper.make_node("Mul", ["box01", "box_scale"], ["box"]),
        helper.make_node("Concat", ["box", "cls"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "standin_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 6400])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ---- the fused detector through the pool ------------------------------------------------------


async def _fused(
    model: Path, settings: DetectSettings, jpegs: list[bytes], show: bool | None
) -> tuple[dict, dict, dict]:
    from processors import YoloDetect

    fn = YoloDetect(model).process
    variants = [Variant(SERIAL, 1)]
    variants += [
        Variant(FOGVERSE, p, m)
        for p in settings.process_numbers
        for m in settings.max_running_tasks
    ]
    warm = max(settings.warmup, 2 * max(settings.max_running_tasks))
    bar = progress(len(variants) * (settings.reps + 1), "detect fused", show)
    try:
        await _start(variants, fn, jpegs, "forkserver")
        for v in variants:
            seconds = await _run_once(v, fn, jpegs, warm)
            v.inputs_per_run = max(
                settings.min_inputs, round(warm / seconds * settings.run_seconds)
            )
            bar.update()
        for _, v in interleaved(variants, settings.reps):
            await _measure(v, fn, jpegs)
            bar.update()
        stats = {v.label: v.pool.stats for v in variants if v.kind == FOGVERSE}
    finally:
        bar.close()
        await _stop(variants)
    metrics, baselines = _tabulate(variants, per_task=False)
    for entry in metrics["grid"]:
        label = f"fogverse p={entry['process_number']} m={entry['max_running_task']}"
        entry["pool_stats"] = {
            k: stats[label].get(k, 0) for k in ("inband_results", "slot_grows", "restarts")
        }
    sample = fn(jpegs[0])
    return metrics, baselines, {"detections_per_frame": len(sample["boxes"])}


# ---- where a frame's time goes ----------------------------------------------------------------


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def _breakdown(model: Path, jpegs: list[bytes], frames: int) -> dict[str, Any]:
    from processors import OnnxInference, YoloDecode, YoloDetect, YoloPreprocess, decode_image
    from processors.detect import decode_yolo, nms

    infer = OnnxInference(model)
    infer.setup()
    pre = YoloPreprocess(640, batch_dim=True)
    fused = YoloDetect(model)
    post = YoloDecode(640)
    steps: dict[str, list[float]] = {
        k: []
        for k in (
            "decode",
            "letterbox",
            "inference",
            "yolo_decode",
            "nms",
            "post_total",
            "fused_total",
        )
    }
    candidates = []
    for i in range(frames + 2):  # the first two warm the caches and are dropped
        data = jpegs[i % len(jpegs)]
        t0 = time.perf_counter()
        img = decode_image(data)
        t1 = time.perf_counter()
        tensor, params = pre.process_with_params(img)
        t2 = time.perf_counter()
        (output,) = infer.run(tensor)
        t3 = time.perf_counter()
        boxes, scores, ids = decode_yolo(output, conf=post.conf)
        t4 = time.perf_counter()
        keep = nms(boxes, scores, ids, iou=post.iou)
        t5 = time.perf_counter()
        post.decode(output, params)  # all after inference: decode, NMS, map back, record
        t6 = time.perf_counter()
        fused.process(data)
        t7 = time.perf_counter()
        if i < 2:
            continue
        candidates.append(len(boxes))
        for key, value in (
            ("decode", t1 - t0),
            ("letterbox", t2 - t1),
            ("inference", t3 - t2),
            ("yolo_decode", t4 - t3),
            ("nms", t5 - t4),
            ("post_total", t6 - t5),
            ("fused_total", t7 - t6),
        ):
            steps[key].append(value)
        del keep
    ms = {k: _median_ms(v) for k, v in steps.items()}
    shares = ("decode", "letterbox", "inference", "post_total")
    parts = sum(ms[k] for k in shares)
    return {
        "ms_per_frame": ms,
        "share": {k: round(ms[k] / parts, 3) for k in shares},
        "candidates_over_conf_median": int(statistics.median(candidates)),
        "frames": frames,
    }


def _nms_candidates(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    # Clustered like a detector's raw output: several overlapping boxes per object.
    objects = max(1, n // 8)
    centres = rng.uniform(40, 600, (objects, 2))
    sizes = rng.uniform(20, 200, (objects, 2))
    pick = rng.integers(0, objects, n)
    c = centres[pick] + rng.normal(0, 6, (n, 2))
    s = sizes[pick] * rng.uniform(0.85, 1.15, (n, 2))
    boxes = np.hstack([c - s / 2, c + s / 2]).astype(np.float32)
    # Each object is one class: its candidates overlap and suppress each other.
    return boxes, rng.uniform(0.25, 1, n).astype(np.float32), pick % 80


def _nms_race(reps: int) -> dict[str, Any]:
    from processors.detect import nms

    rng = np.random.default_rng(3)
    table: dict[str, Any] = {}
    for n in NMS_SIZES:
        boxes, scores, ids = _nms_candidates(n, rng)
        times: dict[str, list[float]] = {"numpy": [], "opencv": []}
        rounds = max(5, reps * (2000 // n + 1))
        for _, backend in interleaved(["numpy", "opencv"], rounds):
            t0 = time.perf_counter()
            kept = nms(boxes, scores, ids, backend=backend)  # type: ignore[arg-type]
            times[backend].append(time.perf_counter() - t0)
        us = {k: round(statistics.median(v) * 1e6, 1) for k, v in times.items()}
        table[str(n)] = {
            **{f"{k}_us": v for k, v in us.items()},
            "kept": len(kept),
            "numpy_over_opencv": round(us["numpy"] / us["opencv"], 3),
        }
    return table


# ---- the benchmark ----------------------------------------------------------------------------


def bench_detect(
    quick: bool, *, show_progress: bool | None = None, settings: DetectSettings | None = None
) -> list[dict[str, Any]]:
    """``detect.fused`` and ``detect.breakdown`` result documents."""
    import cv2

    settings = settings or settings_for(quick)
    mode = "quick" if quick else "full"
    frames = make_frames(4 if quick else 8)
    cv2.setNumThreads(1)  # the serial run and the breakdown, like each worker
    docs = []
    with tempfile.TemporaryDirectory(prefix="fogverse-bench-") as tmp:
        model = build_model(Path(tmp) / "standin.onnx")
        started, t0 = now_iso(), time.perf_counter()
        load_before = os.getloadavg()
        metrics, baselines, extra = run_async(
            lambda: _fused(model, settings, frames.jpeg, show_progress)
        )
        params = {
            "workload": "detect",
            "description": "720p JPEG bytes -> YoloDetect (stand-in model): decode, letterbox, "
            "inference, YOLO decoding, NMS, boxes back in the frame",
            "input": {
                "type": "jpeg bytes",
                "shape": list(frames.raw[0].shape),
                "distinct": len(frames.jpeg),
                "jpeg_kib_mean": frames.jpeg_kib,
            },
            "model": MODEL,
            "unit": "frames/s",
            "onnxruntime_intra_op_threads": 1,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "opencv_threads_per_process": 1,
            **extra,
            **settings.as_dict(),
        }
        docs.append(
            result(
                "detect.fused",
                mode=mode,
                description="YoloDetect (JPEG -> detections) serial vs WorkerPool p=1,2",
                params=params,
                metrics=metrics,
                baselines=baselines,
                machine=machine_info(),
                started=started,
                duration_s=time.perf_counter() - t0,
            )
        )
        started, t0 = now_iso(), time.perf_counter()
        breakdown = _breakdown(model, frames.jpeg, settings.breakdown_frames)
        nms_table = _nms_race(2 if quick else 10)
        docs.append(
            result(
                "detect.breakdown",
                mode=mode,
                description="where a 720p frame's time goes in YoloDetect (one process), and "
                "numpy vs OpenCV class-aware NMS",
                params={"model": MODEL, "nms_sizes": list(NMS_SIZES), "unit": "ms/frame, us/call"},
                metrics={"steps": breakdown, "nms": nms_table},
                baselines={},
                machine=machine_info(),
                started=started,
                duration_s=time.perf_counter() - t0,
            )
        )
    return docs


def _report(docs: list[dict[str, Any]]) -> str:
    fused, parts = docs
    lines = ["detect.fused (frames/s, median):"]
    serial = fused["baselines"][SERIAL][0]
    lines.append(f"  serial            {serial['rate']['median']:8.1f}")
    for e in fused["metrics"]["grid"]:
        label = f"fogverse p={e['process_number']} m={e['max_running_task']}"
        rate, speedup = e["rate"]["median"], e["speedup_vs_serial"]
        lines.append(f"  {label}  {rate:8.1f}  x{speedup:.2f} vs serial")
    steps = parts["metrics"]["steps"]
    lines.append(
        "detect.breakdown (ms per 720p frame, median): "
        + ", ".join(f"{k} {v}" for k, v in steps["ms_per_frame"].items())
    )
    lines.append(f"  candidates over conf 0.25: {steps['candidates_over_conf_median']}")
    lines.append(
        "NMS (us per call): "
        + "; ".join(
            f"n={n}: numpy {r['numpy_us']}, opencv {r['opencv_us']}"
            for n, r in parts["metrics"]["nms"].items()
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, help="write the result documents to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    docs = bench_detect(args.quick, show_progress=False)
    print(_report(docs))
    if args.out:
        write_json(args.out, {"results": docs})
    else:
        print(json.dumps({d["benchmark"]: d["metrics"] for d in docs}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
