"""Ready-made FogVerse processors: YOLO-style frame preprocessing, inference and detection.

Each is a small, picklable :class:`fogverse.processor.Processor`; combine them with
:class:`Compose`, or use :class:`YoloPreprocess` (the fused input path) and
:class:`YoloDetect` (JPEG frame to detections in one step). Inference needs the ``onnx`` extra
and :class:`FaceCascade` the ``demo`` extra; both are imported only when a worker sets up.
"""

from .cascade import FaceCascade
from .compose import Compose, Step
from .detect import (
    COCO_NAMES,
    Detections,
    NmsBackend,
    YoloDecode,
    YoloDetect,
    YoloLayout,
    decode_yolo,
    detections_record,
    nms,
)
from .image import (
    DecodeImage,
    EncodeJPEG,
    EncodePNG,
    ImageBytes,
    decode_image,
    decode_image_sized,
    encode_jpeg,
    encode_png,
    reduced_scale,
)
from .letterbox import (
    Letterbox,
    LetterboxParams,
    Shape,
    fitted_hw,
    letterbox_boxes,
    letterbox_params,
    scale_boxes,
)
from .onnx import ModelError, OnnxInference, TensorSpec
from .tensor import Batch, BGRToRGB, HWCToCHW, Layout, Normalize, ToFloat
from .yolo import YoloPreprocess

__all__ = [
    "COCO_NAMES",
    "BGRToRGB",
    "Batch",
    "Compose",
    "DecodeImage",
    "Detections",
    "EncodeJPEG",
    "EncodePNG",
    "FaceCascade",
    "HWCToCHW",
    "ImageBytes",
    "Layout",
    "Letterbox",
    "LetterboxParams",
    "ModelError",
    "NmsBackend",
    "Normalize",
    "OnnxInference",
    "Shape",
    "Step",
    "TensorSpec",
    "ToFloat",
    "YoloDecode",
    "YoloDetect",
    "YoloLayout",
    "YoloPreprocess",
    "decode_image",
    "decode_image_sized",
    "decode_yolo",
    "detections_record",
    "encode_jpeg",
    "encode_png",
    "fitted_hw",
    "letterbox_boxes",
    "letterbox_params",
    "nms",
    "reduced_scale",
    "scale_boxes",
]
