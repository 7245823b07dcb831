"""Every processor ships to a worker: pickle and cloudpickle round trips, small payloads."""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
from onnx_models import square_finder

import processors
from fogverse.processor import Processor

FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
PNG = processors.EncodePNG().process(FRAME)
MODEL = square_finder()
TENSOR = processors.YoloPreprocess(640).process(FRAME)
V8_OUTPUT = np.zeros((1, 5, 3), np.float32)

# (processor, input); one entry per public Processor class, checked below.
CASES = [
    (processors.DecodeImage(), PNG),
    (processors.EncodeJPEG(quality=80), FRAME),
    (processors.EncodePNG(compression=3), FRAME),
    (processors.Letterbox(32, stride=16), FRAME),
    (processors.BGRToRGB(), FRAME),
    (processors.HWCToCHW(), FRAME),
    (processors.ToFloat(), FRAME),
    (processors.Normalize((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), layout="HWC"), FRAME),
    (processors.Batch(), [FRAME, FRAME]),
    (processors.YoloPreprocess(32, decode=True, batch_dim=True), PNG),
    (processors.Compose(processors.DecodeImage(), processors.YoloPreprocess(32)), PNG),
    (processors.OnnxInference(MODEL), TENSOR),
    (processors.YoloDecode(frame_hw=(48, 64)), V8_OUTPUT),
    (processors.YoloDetect(MODEL), PNG),
    (processors.FaceCascade(), PNG),
]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_cases_cover_every_public_processor() -> None:
    public = {
        obj
        for name in processors.__all__
        if inspect.isclass(obj := getattr(processors, name)) and issubclass(obj, Processor)
    }
    assert public == {type(p) for p, _ in CASES}


@pytest.mark.parametrize(("proc", "data"), CASES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("module", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
def test_round_trip(proc: Processor, data, module) -> None:
    payload = module.dumps(proc)
    # Small: shipping a processor costs nothing next to a frame (no tables, no buffers).
    assert len(payload) < 1024
    clone = module.loads(payload)
    assert type(clone) is type(proc)
    clone.setup()
    try:
        assert _same(clone.process(data), proc.process(data))
    finally:
        clone.teardown()


def test_unpickles_in_a_fresh_process_and_leaves_cv2_threads_alone() -> None:
    # A fresh interpreter: the processors import must not touch cv2's thread count (the
    # worker pool decides it), and a processor pickled here must run there.
    payload = cloudpickle.dumps((processors.YoloPreprocess(32, decode=True), PNG))
    code = (
        "import sys, pickle, cv2\n"
        "before = cv2.getNumThreads()\n"
        "import processors\n"
        "assert cv2.getNumThreads() == before, (before, cv2.getNumThreads())\n"
        "proc, data = pickle.loads(sys.stdin.buffer.read())\n"
        "sys.stdout.buffer.write(proc.process(data).tobytes())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    expected = processors.YoloPreprocess(32, decode=True).process(PNG)
    assert done.stdout == expected.tobytes()


def test_compose_with_a_lambda_survives_cloudpickle() -> None:
    chain = processors.Compose(processors.ToFloat(), lambda x: x * 2)
    clone = cloudpickle.loads(cloudpickle.dumps(chain))
    np.testing.assert_array_equal(clone.process(FRAME), chain.process(FRAME))
