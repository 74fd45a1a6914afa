"""converters: PyTorch → ExecuTorch, TFLite/LiteRT and Core ML, with manifests and parity."""

from .base import Converted, Converter
from .coreml import CoreMLConverter
from .executorch import ExecuTorchConverter
from .tflite import TFLiteConverter

CONVERTERS: dict[str, Converter] = {
    c.format: c for c in (ExecuTorchConverter(), TFLiteConverter(), CoreMLConverter())
}

__all__ = ["CONVERTERS", "Converted", "Converter"]
