"""OnnxInference: one session per worker, thread settings, and clear errors for bad models
and bad inputs, alone and inside the worker pool (the pool is no Kafka part: no broker)."""

from __future__ import annotations

import asyncio
import json
import pickle

import cloudpickle
import numpy as np
import pytest
from onnx import TensorProto
from onnx_models import constant_model, model_dir

from fogverse.parallel import TaskFailed, WorkerPool, WorkerSetupError
from processors import ModelError, OnnxInference, YoloDetect

OUT = np.arange(6 * 3, dtype=np.float32).reshape(1, 6, 3)
NAMES = "{0: 'person', 1: 'bicycle'}"


@pytest.fixture(scope="module")
def model():
    return constant_model(OUT, "inference", metadata={"names": NAMES})


def test_runs_the_model_and_adds_the_missing_batch_axis(model) -> None:
    inference = OnnxInference(model)
    inference.setup()
    try:
        np.testing.assert_array_equal(inference.process(np.zeros((3, 640, 640), np.float32)), OUT)
        np.testing.assert_array_equal(inference.process(np.ones((1, 3, 640, 640), np.float32)), OUT)
        assert inference.input is not None and inference.input.shape == (1, 3, 640, 640)
        options = inference._session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert inference.class_names() == ("person", "bicycle")
    finally:
        inference.teardown()


def test_threads_are_configurable_and_the_session_is_never_pickled(model) -> None:
    inference = OnnxInference(model, threads=2)
    inference.setup()
    options = inference._session.get_session_options()
    assert options.intra_op_num_threads == 2
    clone = pickle.loads(pickle.dumps(inference))
    assert clone._session is None and clone.threads == 2 and clone.model == inference.model
    assert len(cloudpickle.dumps(inference)) < 1024
    with pytest.raises(ValueError, match="threads"):
        OnnxInference(model, threads=0)


def test_missing_model_is_refused_when_the_processor_is_made(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        OnnxInference(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        YoloDetect(tmp_path / "nope.onnx")


def test_input_that_does_not_fit_names_what_differs(model) -> None:
    inference = OnnxInference(model)
    with pytest.raises(ModelError, match="takes float32, got uint8"):
        inference.process(np.zeros((3, 640, 640), np.uint8))
    with pytest.raises(ModelError, match=r"shape 1x3x640x640, got \(1, 3, 320, 320\)"):
        inference.process(np.zeros((1, 3, 320, 320), np.float32))
    with pytest.raises(ModelError, match="needs an ndarray"):
        inference.process(b"\xff\xd8 not a tensor")


def test_free_dimensions_take_any_size() -> None:
    path = constant_model(OUT, "dynamic", input_shape=("batch", 3, "height", "width"))
    inference = OnnxInference(path)
    np.testing.assert_array_equal(inference.process(np.zeros((3, 96, 128), np.float32)), OUT)
    assert inference.input is not None and inference.input.shape == (None, 3, None, None)


def test_unreadable_model_fails_the_pool_at_start_with_the_reason() -> None:
    garbage = model_dir() / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")

    async def main() -> None:
        pool = WorkerPool(OnnxInference(garbage), process_number=1, max_running_task=2)
        with pytest.raises(WorkerSetupError, match="cannot load ONNX model") as info:
            await pool.start()
        assert "garbage.onnx" in str(info.value)
        await pool.close()

    asyncio.run(main())


def test_bad_input_fails_that_task_only_and_the_worker_carries_on(model) -> None:
    async def main() -> None:
        async with WorkerPool(OnnxInference(model), process_number=1, max_running_task=2) as pool:
            pids = pool.worker_pids
            bad = await pool.submit(np.zeros((3, 320, 320), np.float32))
            with pytest.raises(TaskFailed, match="ModelError") as info:
                await bad
            assert "1x3x640x640" in str(info.value)
            good = await pool.submit(np.zeros((3, 640, 640), np.float32))
            np.testing.assert_array_equal(await good, OUT)
            good.release()
            assert pool.worker_pids == pids  # the same worker: nothing crashed
            assert pool.stats.get("restarts", 0) == 0

    asyncio.run(main())


def test_uint8_model_input_type_is_read_from_the_model() -> None:
    path = constant_model(OUT, "u8", input_type=TensorProto.UINT8)
    inference = OnnxInference(path)
    np.testing.assert_array_equal(inference.process(np.zeros((1, 3, 640, 640), np.uint8)), OUT)
    with pytest.raises(ModelError, match="takes uint8, got float32"):
        inference.process(np.zeros((1, 3, 640, 640), np.float32))


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        # JSON writes the ids as strings: "10" must not sort before "2".
        (json.dumps({str(i): f"n{i}" for i in range(12)}), tuple(f"n{i}" for i in range(12))),
        ("{0: 'a', '1': 'b'}", ("a", "b")),
        ("{0: 'a', 2: 'c'}", None),  # id 1 missing: names by index would shift
        ("{0: 'a', 'x': 'b'}", None),
    ],
)
def test_class_names_are_ordered_by_class_id(names: str, expected) -> None:
    inference = OnnxInference(constant_model(OUT, "named", metadata={"names": names}))
    inference.setup()
    try:
        assert inference.class_names() == expected
    finally:
        inference.teardown()
