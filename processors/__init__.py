"""Ready-made FogVerse processors for YOLO-style frame preprocessing.

Each is a small, picklable :class:`fogverse.processor.Processor`; combine them with
:class:`Compose`, or use :class:`YoloPreprocess` for the fused fast path.
"""

from .compose import Compose, Step
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
from .tensor import Batch, BGRToRGB, HWCToCHW, Layout, Normalize, ToFloat
from .yolo import YoloPreprocess

__all__ = [
    "BGRToRGB",
    "Batch",
    "Compose",
    "DecodeImage",
    "EncodeJPEG",
    "EncodePNG",
    "HWCToCHW",
    "ImageBytes",
    "Layout",
    "Letterbox",
    "LetterboxParams",
    "Normalize",
    "Shape",
    "Step",
    "ToFloat",
    "YoloPreprocess",
    "decode_image",
    "decode_image_sized",
    "encode_jpeg",
    "encode_png",
    "fitted_hw",
    "letterbox_boxes",
    "letterbox_params",
    "reduced_scale",
    "scale_boxes",
]
