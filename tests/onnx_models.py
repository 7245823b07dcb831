"""Tiny ONNX models built with the ``onnx`` helper API, whose outputs the tests know.

* :func:`constant_model`: emits a fixed tensor (e.g. a YOLOv5- or v8-layout output) whatever
  its input, so the decoding can be checked against hand-computed boxes.
* :func:`square_finder`: a one-class "detector" in the YOLOv8 layout that really looks at its
  input: it returns the box around the pixels whose red channel exceeds 0.5, with score 1
  (0 when there are none). Draw a red rectangle in a frame and the box must come back around
  it, through letterbox, inference, decoding and the mapping back to the frame.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["constant_model", "model_dir", "square_finder"]

_OPSET = [helper.make_opsetid("", 17)]
_DIR: Path | None = None


def model_dir() -> Path:
    """A directory for this test session's model files, removed at exit."""
    global _DIR
    if _DIR is None:
        _DIR = Path(tempfile.mkdtemp(prefix="fogverse-onnx-"))
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def _save(graph: onnx.GraphProto, name: str, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=_OPSET, producer_name="fogverse-tests")
    if metadata:
        helper.set_model_props(model, metadata)
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    path = model_dir() / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def constant_model(
    output: np.ndarray,
    name: str = "constant",
    input_shape: tuple[int | str, ...] = (1, 3, 640, 640),
    input_type: int = TensorProto.FLOAT,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A model whose output is ``output`` (float32) for any input of ``input_shape``.

    The input still flows into the graph (times zero), so the runtime checks it like any
    real model's input."""
    const = numpy_helper.from_array(np.asarray(output, np.float32), "const")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["as_float"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[const, zero],
    )
    return _save(graph, name, metadata)


def square_finder(size: int = 640, name: str = "square_finder") -> Path:
    """Input ``1x3xSIZExSIZE`` RGB in [0, 1]; output ``1x5x1`` (v8 layout, one class):
    ``cx, cy, w, h`` of the red pixels' bounding box and a score (1 if any, else 0)."""

    def const(n: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype), n)

    inits = [
        const("zero_idx", 0),
        const("half", 0.5, np.float32),
        const("one", 1.0, np.float32),
        const("two", 2.0, np.float32),
        const("shape_out", [1, 5, 1]),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["images", "zero_idx"], ["red"], axis=1),  # 1 x H x W
        n("Greater", ["red", "half"], ["hot"]),
        n("Cast", ["hot"], ["mask"], to=TensorProto.FLOAT),
        n("ReduceMax", ["mask"], ["cols"], axes=[1], keepdims=0),  # 1 x W
        n("ReduceMax", ["mask"], ["rows"], axes=[2], keepdims=0),  # 1 x H
        n("ReduceMax", ["cols"], ["score"], axes=[1], keepdims=1),  # 1 x 1
        n("ArgMax", ["cols"], ["x1i"], axis=1, keepdims=1),
        n("ArgMax", ["cols"], ["x2i"], axis=1, keepdims=1, select_last_index=1),
        n("ArgMax", ["rows"], ["y1i"], axis=1, keepdims=1),
        n("ArgMax", ["rows"], ["y2i"], axis=1, keepdims=1, select_last_index=1),
        *(n("Cast", [f"{v}i"], [f"{v}f"], to=TensorProto.FLOAT) for v in ("x1", "x2", "y1", "y2")),
        # The last hot pixel's index + 1 is the box's right (bottom) edge.
        n("Add", ["x2f", "one"], ["x2"]),
        n("Add", ["y2f", "one"], ["y2"]),
        n("Sub", ["x2", "x1f"], ["w"]),
        n("Sub", ["y2", "y1f"], ["h"]),
        n("Add", ["x1f", "x2"], ["xsum"]),
        n("Add", ["y1f", "y2"], ["ysum"]),
        n("Div", ["xsum", "two"], ["cx"]),
        n("Div", ["ysum", "two"], ["cy"]),
        n("Concat", ["cx", "cy", "w", "h", "score"], ["flat"], axis=1),  # 1 x 5
        n("Reshape", ["flat", "shape_out"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1])],
        initializer=inits,
    )
    return _save(graph, name)
