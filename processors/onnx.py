"""Model inference on ONNX Runtime: a tensor in, the model's outputs out.

Needs the ``onnx`` extra (``pip install fogverse[onnx]``, i.e. ``onnxruntime``). The model file
is opened in :meth:`OnnxInference.setup`, once per worker process: a session is never pickled,
only the path travels to the workers.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fogverse.processor import Processor

__all__ = ["ModelError", "OnnxInference", "TensorSpec"]

# ONNX Runtime names tensor element types like this; the ones a vision model takes as input.
_ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
}


class ModelError(ValueError):
    """The model file is missing or unreadable, or an input does not fit the model."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input: its name, element type and shape (``None`` for a free dimension)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]

    def check(self, tensor: Any) -> NDArray[Any]:
        """``tensor`` shaped for this input (a missing leading batch axis of 1 is added),
        or a :class:`ModelError` that names what differs."""
        if not isinstance(tensor, np.ndarray):
            raise ModelError(f"model input {self.name!r} needs an ndarray, got {type(tensor)}")
        if tensor.dtype != self.dtype:
            raise ModelError(
                f"model input {self.name!r} takes {self.dtype}, got {tensor.dtype} "
                f"(shape {tensor.shape}); convert it before inference"
            )
        if tensor.ndim == len(self.shape) - 1 and self.shape[0] in (1, None):
            tensor = tensor[np.newaxis]  # YoloPreprocess's CHW for an NCHW model: a view
        fits = tensor.ndim == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, tensor.shape, strict=True)
        )
        if not fits:
            want = "x".join("?" if d is None else str(d) for d in self.shape)
            raise ModelError(
                f"model input {self.name!r} has shape {want}, got {tensor.shape}; check the "
                "preprocessing size (and batch_dim) against the model"
            )
        return tensor


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxInference(Processor):
    """Processor: input tensor -> the model's output (one ndarray, or a tuple for several).

    ``model`` is the path of a ``.onnx`` file; it must exist when the processor is made (a
    clear error in the parent), and a worker that cannot load it fails its ``setup()``, which
    stops the node at start with :class:`~fogverse.parallel.WorkerSetupError`. ``threads`` is
    ONNX Runtime's intra-op thread count per worker: the default 1 lets ``process_number``
    workers share the cores without oversubscribing them. An input whose dtype or shape does
    not fit the model raises :class:`ModelError` for that input only (it is dead-lettered).
    ``outputs`` selects output names (default: all). Takes the model's single input; a
    tensor missing a leading batch axis of 1 gets one (``YoloPreprocess``'s CHW output).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        threads: int = 1,
        outputs: Sequence[str] | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"ONNX model {str(path)!r} does not exist or is not a file")
        if not os.access(path, os.R_OK):
            raise ModelError(f"ONNX model {str(path)!r} is not readable")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.model = str(path.resolve())
        self.threads = threads
        self.outputs = tuple(outputs) if outputs is not None else None
        self.providers = tuple(providers)
        self._session: Any = None
        self.input: TensorSpec | None = None
        self.metadata: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # A session holds native state: only the configuration travels.
        state = self.__dict__.copy()
        state.update(_session=None, input=None, metadata={})
        return state

    def __repr__(self) -> str:
        return f"OnnxInference({self.model!r}, threads={self.threads})"

    def setup(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError("OnnxInference needs onnxruntime: pip install fogverse[onnx]") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads would burn the core another worker needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(self.model, opts, providers=list(self.providers))
        except Exception as exc:
            raise ModelError(f"cannot load ONNX model {self.model!r}: {exc}") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ModelError(f"OnnxInference runs single-input models; {self.model} has {names}")
        (spec,) = inputs
        dtype = _ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise ModelError(f"model input {spec.name!r} has unsupported type {spec.type}")
        known = {o.name for o in session.get_outputs()}
        missing = set(self.outputs or ()) - known
        if missing:
            raise ModelError(f"model has no output(s) {sorted(missing)}; it has {sorted(known)}")
        self.input = TensorSpec(spec.name, dtype, tuple(_dim(d) for d in spec.shape))
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._session = session

    def run(self, tensor: NDArray[Any]) -> list[NDArray[Any]]:
        """All selected outputs for ``tensor``, in the model's (or ``outputs``') order."""
        if self._session is None or self.input is None:
            self.setup()
        assert self.input is not None
        feed = {self.input.name: self.input.check(tensor)}
        return self._session.run(list(self.outputs) if self.outputs else None, feed)

    def process(self, data: NDArray[Any]) -> NDArray[Any] | tuple[NDArray[Any], ...]:
        out = self.run(data)
        return out[0] if len(out) == 1 else tuple(out)

    def teardown(self) -> None:
        self._session = None

    def class_names(self) -> tuple[str, ...] | None:
        """Class names stored in the model's metadata (``names``, as Ultralytics exports
        write it: a dict literal ``{0: 'person', ...}``), or None when there are none or
        their ids are not exactly ``0..n-1``."""
        text = self.metadata.get("names")
        if not text:
            return None
        try:
            names = ast.literal_eval(text)  # literals only: never executes code
        except (ValueError, SyntaxError):
            return None
        if isinstance(names, dict):
            # The keys are class ids, also when written as JSON strings ("10" sorts before
            # "2"): ordered as numbers, and only a complete 0..n-1 map gives names by index.
            try:
                by_id = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                return None
            if sorted(by_id) != list(range(len(names))):
                return None
            return tuple(by_id[i] for i in range(len(by_id)))
        if isinstance(names, list | tuple):
            return tuple(str(n) for n in names)
        return None
